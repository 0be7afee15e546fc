"""ShardGroup: the shards of one engine, called one by one or all at once.

A group is a sequence of shard handles (each with the shard API's methods, engine/shard/api.py),
so ``for shard in engine.shards`` works for every backend; ``call_each``/``call_all`` fan a
shard API method out to every shard and return the answers in shard order; ``respawns`` tells
how many times each shard was restarted (and so lost what it held in memory). Backends override
``call_each`` to run the shards in parallel (process workers: send every request, then read
every reply; Ray: submit every call, then get every result).

>>> from engine.schema import Schema, CONTRACT_SCHEMA
>>> from engine.shard.local import LocalShard
>>> group = ShardGroup([LocalShard(Schema.from_dict(CONTRACT_SCHEMA), i) for i in range(2)])
>>> [s["shard"] for s in group.call_all("stats")], group.respawns()
([0, 1], [0, 0])
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, Sequence

from ..concurrency import PublishLock, view_call
from ..priority import background_calls
from ..errors import ShardError
from ..schema import Schema
from . import api

log = logging.getLogger("segengine")


class ShardGroup(Sequence):
    """In-process shards, called sequentially (from any number of threads at once: reads run
    alongside each other; the engine's publish lock keeps writes apart from them)."""

    backend = "local"

    def __init__(self, shards: Sequence[Any]):
        self.shards = list(shards)

    def __getitem__(self, index):  # type: ignore[override]
        return self.shards[index]

    def __len__(self) -> int:
        return len(self.shards)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.shards)

    def call_each(self, method: str, args_per_shard: Sequence[tuple | None]) -> list[Any]:
        """``shard_i.method(*args_per_shard[i])`` for every shard; None args skip a shard (answer None)."""
        api.check(method)
        return [None if args is None else getattr(shard, method)(*args)
                for shard, args in zip(self.shards, args_per_shard)]

    def call_all(self, method: str, *args: Any) -> list[Any]:
        """``shard.method(*args)`` on every shard, in shard order."""
        return self.call_each(method, [args] * len(self.shards))

    def send_write(self, calls: Sequence[tuple | None], view: bool, publish: PublishLock,
                   send: Callable[[], list[Any]]) -> list[Any]:
        """``send()``: the shard calls of a write under ``publish`` (``calls``: those it makes, None for a
        shard it skips). A ``view`` write's are view calls, then come its sync step (``publish`` admits
        store reads and every shard it reached syncs its saved segments) and its publish step (no more
        view reads are admitted, then those shards switch membership to the state after it): see
        engine.concurrency."""
        try:
            with view_call(view):
                results = send()
            if view:
                publish.open_store()
                with background_calls():  # no reader waits for it: short calls go first
                    self._each_reached("sync_view", calls)
            return results
        finally:
            if view:
                publish.end_views()
                with view_call():
                    self._each_reached("publish_view", calls)

    def _each_reached(self, method: str, calls: Sequence[tuple | None]) -> None:
        """``method()`` on every shard a view write reached."""
        try:
            self.call_each(method, [None if call is None else () for call in calls])
        except ShardError:  # a respawned worker recovers the state after the write from the log
            log.warning("a shard could not finish a write's membership (%s)", method, exc_info=True)

    def respawns(self) -> list[int]:
        """How many times each shard was restarted after it died (in-process shards: never)."""
        return [0] * len(self.shards)

    def adopt_schema(self, spec: dict[str, Any]) -> None:
        """The schema a restarted worker starts with (in process: nothing to do, shards keep their own)."""

    def __enter__(self) -> "ShardGroup":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the shards (idempotent)."""
        for shard in self.shards:
            closer = getattr(type(shard), "close", None)
            if closer is not None:
                closer(shard)


def make_shards(schema: Schema, shards: int, backend: str, address: str | None,
                data_dir: str | None = None) -> ShardGroup:
    """Start ``shards`` shards on ``backend`` ("local", "process" or "ray"; "auto": local for 1, else process)."""
    if backend == "local" or (backend == "auto" and shards == 1):
        from .local import LocalShard

        return ShardGroup([LocalShard(schema, i) for i in range(shards)])
    if backend in ("process", "auto"):
        from .process import start_process_shards

        return start_process_shards(schema, shards, data_dir)
    if backend == "ray":
        from .ray_backend import start_ray_shards

        return start_ray_shards(schema, shards, address, data_dir)
    raise ValueError(f"unknown backend {backend!r} (expected 'local', 'process' or 'ray')")
