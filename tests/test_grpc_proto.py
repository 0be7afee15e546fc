"""The committed gRPC stubs are what scripts/gen_proto.py generates from proto/."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUBS = ROOT / "server" / "proto_gen"


def test_committed_stubs_are_current(tmp_path):
    """Same text as freshly generated ones (the test extra pins the grpcio-tools that wrote them);
    with another grpcio-tools, the same descriptors and RPC paths."""
    pytest.importorskip("grpc_tools")
    from importlib.metadata import version

    committed = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", (STUBS / "segmentation_pb2_grpc.py").read_text())
    if committed and committed.group(1) != version("grpcio-tools"):
        assert_same_descriptors(tmp_path)
        return
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert fresh == sorted(p.name for p in STUBS.iterdir() if p.is_file() and p.suffix in (".py", ".pyi"))
    for name in fresh:
        assert (tmp_path / name).read_text() == (STUBS / name).read_text(), f"{name} is stale: run scripts/gen_proto.py"


def assert_same_descriptors(tmp_path):
    """The committed stubs describe exactly what proto/ says (messages, fields, services, RPC paths)."""
    import grpc_tools
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    from server.proto_gen import segmentation_pb2 as pb

    name = "segengine/v1/segmentation.proto"
    out = tmp_path / "descriptors.pb"
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    assert protoc.main(["grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"-I{well_known}",
                        f"--descriptor_set_out={out}", name]) == 0
    fresh = next(f for f in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file if f.name == name)
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    pending = [*fresh.message_type, *committed.message_type]
    while pending:  # json_name is derived from the field name; only protoc's descriptor sets carry it
        message = pending.pop()
        pending.extend(message.nested_type)
        for field in message.field:
            field.ClearField("json_name")
    assert committed == fresh, "the stubs are stale: run scripts/gen_proto.py"
    grpc_text = (STUBS / "segmentation_pb2_grpc.py").read_text()
    paths = sorted(set(re.findall(r"'(/segengine\.v1\.Segmentation/\w+)'", grpc_text)))
    assert paths == sorted(f"/segengine.v1.Segmentation/{m.name}" for m in fresh.service[0].method)


def test_descriptors_match_the_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    assert_same_descriptors(tmp_path)


def test_stubs_import_from_the_installed_package_layout():
    code = "import server.proto_gen.segmentation_pb2_grpc as g; print(g.SegmentationStub.__name__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    assert result.stdout.strip() == "SegmentationStub"
