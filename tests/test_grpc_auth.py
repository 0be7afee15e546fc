"""Bearer-token auth and TLS of the gRPC server."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from server.app import ServerConfig
from server.client import RpcError, SegengineClient

from test_grpc import Served


@pytest.fixture
def secured():
    s = Served(ServerConfig(token="s3cret"), profiles=50, token="s3cret")
    yield s
    s.close()


def test_calls_need_the_bearer_token(secured):
    assert secured.client.count("ALL") == 50
    for token in (None, "wrong", "s3cret "):
        with SegengineClient(secured.server.address, token=token) as other:
            with pytest.raises(RpcError, match="UNAUTHENTICATED: missing or invalid bearer token"):
                other.count("ALL")
            with pytest.raises(RpcError, match="UNAUTHENTICATED"):
                other.ids("ALL")  # streams too
            with pytest.raises(RpcError, match="UNAUTHENTICATED"):
                other.write([("profiles", [{"id": "x"}])])
            with pytest.raises(RpcError, match="UNAUTHENTICATED"):
                other.watch()
            assert other.health() == "SERVING"  # probes need no token


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    s = Served(ServerConfig(tls_cert=str(cert), tls_key=str(key), token="t"), profiles=20,
               root_certificates=cert.read_bytes(), token="t")
    try:
        assert s.client.count("ALL") == 20
        with SegengineClient(s.server.address, token="t", timeout=2) as plain:  # no TLS: refused
            with pytest.raises(RpcError, match="UNAVAILABLE"):
                plain.count("ALL")
    finally:
        s.close()
