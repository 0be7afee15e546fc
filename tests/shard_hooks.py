"""Test hooks for shard workers and actors: a shard factory whose calls the test can slow down.

``Delays.install`` points new workers (through ``SEGENGINE_SHARD_FACTORY``) at
``open_delayed_shard``, which wraps the real shard: before each shard API call it sleeps for
the delay the test has set for that shard and method (``Delays.set``), read from a file in a
directory the test owns. Production code has no delay of its own.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from engine.shard import api
from engine.shard.worker import FACTORY_ENV, open_shard

#: The factory's ``module:function`` (this directory is put on the workers' PYTHONPATH).
FACTORY = "shard_hooks:open_delayed_shard"
#: The environment variable naming the directory of the delay files.
DELAYS_ENV = "SEGENGINE_TEST_DELAYS"
HERE = str(Path(__file__).resolve().parent)


class Delays:
    """The delays of the shards started after ``install``, set from the test."""

    def __init__(self, directory: Path):
        self.directory = directory

    @classmethod
    def install(cls, monkeypatch: Any, directory: Path) -> "Delays":
        """Make shards started from now on use the delayed factory (undone by ``monkeypatch``)."""
        for name, value in cls.environment(directory).items():
            monkeypatch.setenv(name, value)
        return cls(directory)

    @staticmethod
    def environment(directory: Path) -> dict[str, str]:
        """The environment variables that give new workers the delayed factory."""
        path = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p)
        return {FACTORY_ENV: FACTORY, DELAYS_ENV: str(directory), "PYTHONPATH": path}

    def set(self, shard_id: int, seconds: float, method: str = "*") -> None:
        """Sleep ``seconds`` before every later call of ``method`` ("*": every method) on shard ``shard_id``."""
        path = _path(self.directory, shard_id)
        delays = json.loads(path.read_text()) if path.exists() else {}
        delays[method] = seconds
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(delays))
        scratch.replace(path)


def _path(directory: Path, shard_id: int) -> Path:
    return directory / f"shard-{shard_id}.json"


class DelayedShard:
    """A shard whose API calls first sleep for the delay set in its file."""

    def __init__(self, shard: api.ShardAPI, path: Path):
        self.shard = shard
        self.path = path

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.shard, name)
        if name not in api.METHODS:
            return target

        def delayed(*args: Any) -> Any:
            time.sleep(self.delay(name))
            return target(*args)

        return delayed

    def delay(self, method: str) -> float:
        try:
            delays = json.loads(self.path.read_text())
        except FileNotFoundError:
            return 0.0
        return float(delays.get(method, delays.get("*", 0.0)))


def open_delayed_shard(schema: Any, shard_id: int, data_dir: str | None = None, respawn: bool = False) -> DelayedShard:
    """``open_shard``, wrapped in a DelayedShard reading the directory of ``SEGENGINE_TEST_DELAYS``."""
    shard = open_shard(schema, shard_id, data_dir, respawn)
    return DelayedShard(shard, _path(Path(os.environ[DELAYS_ENV]), shard_id))
