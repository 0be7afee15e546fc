"""The Ray backend: shard actors give the same answers as in-process shards (local Ray instance;
marked slow: two Ray nodes started with ``ray start`` on this machine)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

ray = pytest.importorskip("ray")

from engine import Engine, Schema  # noqa: E402
from engine.errors import SegmentNotFound, ShardError  # noqa: E402
from engine.shard.worker import FACTORY_ENV  # noqa: E402
from loaders.generator import generate  # noqa: E402
from shard_hooks import FACTORY, Delays  # noqa: E402
from test_shards import NOW, QUERIES, fill  # noqa: E402

pytestmark = pytest.mark.ray
SCHEMA = Schema.from_dict(generate(profiles=0, events=0, now_ms=NOW).schema)


@pytest.fixture(scope="module")
def reference() -> Iterator[Engine]:
    """The answers to compare with: one in-process shard."""
    with Engine(SCHEMA, shards=1) as engine:
        fill(engine)
        yield engine


@pytest.fixture(scope="module")
def delay_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests set the delays of actors built by tests/shard_hooks.py."""
    return tmp_path_factory.mktemp("delays")


@pytest.fixture(scope="module")
def local_ray(delay_dir: Path) -> Iterator[None]:
    """A local Ray instance for this module (its workers can import tests/shard_hooks.py)."""
    if ray.is_initialized():
        ray.shutdown()
    env = Delays.environment(delay_dir)
    del env[FACTORY_ENV]  # the driver names the factory per engine (see delays below)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": env})
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture()
def delays(local_ray: None, delay_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Delays:
    """Actors started in the test can be slowed down."""
    monkeypatch.setenv(FACTORY_ENV, FACTORY)
    for path in delay_dir.iterdir():
        path.unlink()
    return Delays(delay_dir)


def check_same_answers(engine: Engine, reference: Engine) -> None:
    fill(engine)
    assert engine.stats()["profiles"] == reference.stats()["profiles"]
    for text in QUERIES:
        expected = reference.ids(text, now=NOW)
        assert engine.ids(text, now=NOW) == expected, text
        assert engine.count(text, now=NOW) == len(expected), text


def test_same_answers_on_ray_actors(local_ray: None, reference: Engine) -> None:
    with Engine(SCHEMA, shards=3, backend="ray") as engine:
        assert engine.shards.backend == "ray"
        check_same_answers(engine, reference)
        with pytest.raises(SegmentNotFound, match="unknown segment 'x'"):
            engine.count("SEGMENT('x')")
        modules = engine.shards[0].call("_worker_modules", ["engine.shard"])
        assert "engine.shard.local" in modules and "engine.shard.process" not in modules


def test_a_killed_actor_fails_the_query_by_name_and_comes_back(delays: Delays) -> None:
    with Engine(SCHEMA, shards=2, backend="ray") as engine:
        engine.upsert_profiles({"id": f"p{i}"} for i in range(200))
        victim = engine.shards[1]
        pid = victim.call("_worker_pid")
        delays.set(1, 5)

        def kill() -> None:
            os.kill(pid, signal.SIGKILL)
            delays.set(1, 0)

        timer = threading.Timer(0.3, kill)
        timer.start()
        started = time.monotonic()
        with pytest.raises(ShardError, match=r"^shard 1 died while serving count; Ray restarts it"):
            engine.count("ALL")
        assert time.monotonic() - started < 3
        timer.join()
        wait_restarted(victim, pid)
        owned = engine.shards[0].stats()["profiles"]
        assert engine.count("ALL") == owned  # the restarted in-memory shard is empty
        assert engine.shards.respawns() == [0, 1]


def wait_restarted(shard, pid: int) -> None:
    """Wait until Ray has restarted the actor of ``shard`` (calls fail with ShardError until then)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if shard.call("_worker_pid") != pid:
                return
        except ShardError:
            pass
        assert time.monotonic() < deadline, "the actor did not come back"
        time.sleep(0.1)


def test_a_restarted_durable_actor_reloads_its_data(local_ray: None, tmp_path: Path) -> None:
    with Engine(SCHEMA, shards=2, backend="ray", data_dir=str(tmp_path)) as engine:
        engine.upsert_profiles({"id": f"p{i}", "age": i % 80} for i in range(300))
        engine.snapshot()
        engine.upsert_profiles({"id": f"q{i}", "age": 90} for i in range(50))  # in the log only
        before = [engine.count("ALL"), engine.count("age < 40"), engine.count("age = 90")]
        owned = [s["profiles"] for s in engine.stats()["shards"]]
        pid = engine.shards[1].call("_worker_pid")
        ray.kill(engine.shards[1].actor, no_restart=False)
        wait_restarted(engine.shards[1], pid)
        assert [engine.count("ALL"), engine.count("age < 40"), engine.count("age = 90")] == before == [350, 160, 50]
        assert [s["profiles"] for s in engine.stats()["shards"]] == owned
        assert engine.shards.respawns() == [0, 1]


# -- two Ray nodes on this machine ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``ray start ... --block`` (ended by SIGTERM, which stops every process it started); waits until up."""
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    handle = open(log, "w")
    process = subprocess.Popen([ray_cli, "start", "--block", "--disable-usage-stats", "--num-cpus=1",
                                "--node-ip-address=127.0.0.1",
                                f"--dashboard-agent-listen-port={free_port()}", *args],
                               stdout=handle, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 90
    while "block forever" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.terminate()
            raise RuntimeError(f"ray start failed:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return process


@pytest.fixture()
def two_nodes(tmp_path: Path) -> Iterator[str]:
    """A head node and a second node joining it, on the loopback interface; the head's address.

    Token authentication is off for this throwaway loopback cluster (the driver here is this
    test process); docs/shards.md shows a real cluster with tokens.
    """
    if ray.is_initialized():
        ray.shutdown()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = [ray_start(["--head", f"--port={port}", "--include-dashboard=false",
                        f"--ray-client-server-port={free_port()}"], env, tmp_path / "head.log")]
    try:
        nodes.append(ray_start([f"--address={address}"], env, tmp_path / "node.log"))
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for node in reversed(nodes):
            node.terminate()
            node.wait(60)
        _forget_cluster(address)


def _forget_cluster(address: str) -> None:
    """Remove Ray's pointer to the latest cluster if it is ours (so ray.init() does not try it)."""
    pointer = Path("/tmp/ray/ray_current_cluster")
    try:
        if pointer.read_text().strip().endswith(f":{address.rsplit(':', 1)[1]}"):
            pointer.unlink()
    except OSError:
        pass


@pytest.mark.slow
def test_same_answers_on_two_ray_nodes(two_nodes: str, reference: Engine) -> None:
    with Engine(SCHEMA, shards=3, backend="ray", address=two_nodes) as engine:
        assert len({node["NodeID"] for node in ray.nodes() if node["Alive"]}) == 2
        placed = [shard.node_id() for shard in engine.shards]
        assert placed[0] == placed[2] != placed[1]
        check_same_answers(engine, reference)


OWN_INSTANCE = """
import ray
from engine import Engine, Schema
from engine.schema import CONTRACT_SCHEMA
with Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=2, backend="ray") as engine:
    engine.upsert_profiles([{"id": "a"}, {"id": "b"}, {"id": "c"}])
    print(engine.ids("ALL"), ray.is_initialized())
print(ray.is_initialized())
"""


@pytest.mark.slow
def test_an_engine_starts_and_stops_its_own_local_ray() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", OWN_INSTANCE], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.splitlines() == ["['a', 'b', 'c'] True", "False"], done.stderr[-2000:]
