"""Shards as Ray actors: the same ShardServer as the process workers, on one machine or many.

Each shard is a ``ShardActor`` holding one shard (built by ``open_shard``) that answers the
same msgpack request frames as a worker process. Shard i is pinned to the i-th live node
(round robin; a durable shard's data is on that node's disk), and actors reserve no CPU (a
shard is mostly idle memory). A dead actor is restarted by Ray (``max_restarts=-1``, running
``open_shard`` again, with ``respawn=True``: a durable shard reloads itself from its data
directory); the call in flight fails with ShardError. ``RayShard.respawns`` is the actor's
restart count, as Ray's control store (GCS) has it.

``ray`` is an optional extra (``pip install segengine[ray]``) imported only by this backend.
With ``address=None`` the backend uses the Ray instance already initialised in this process,
else the cluster named by ``RAY_ADDRESS``, else starts a local instance (shut down when its
last engine closes); ``address="host:port"`` (or ``"auto"``) joins that cluster.
"""
from __future__ import annotations

import itertools
import os
import threading
import warnings
from typing import Any, Sequence

from ..concurrency import in_view_call
from ..errors import ShardError
from ..schema import Schema
from . import api, messages
from .group import ShardGroup
from .remote import RemoteShard
from .worker import FACTORY_ENV


class ShardActor:
    """The body of a shard actor: one shard behind a ShardServer."""

    def __init__(self, schema_spec: dict, shard_id: int, data_dir: str | None, factory: str = ""):
        import ray

        from .worker import ShardServer, load_factory

        with warnings.catch_warnings():  # Ray's property reads its own deprecated ``actor_id``
            warnings.simplefilter("ignore", DeprecationWarning)
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        shard = load_factory(factory)(Schema.from_dict(schema_spec), shard_id, data_dir, restarted)
        self.server = ShardServer(shard)

    def call(self, frame: bytes) -> bytes:
        """The reply frame to a request frame."""
        return self.server.handle(frame)

    def node_id(self) -> str:
        """The id of the Ray node this actor runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()


class RayShard(RemoteShard):
    """A handle on one shard actor; it has the shard API's methods, like ProcessShard."""

    def __init__(self, actor: Any, shard_id: int):
        self.actor = actor
        self.shard_id = shard_id
        self.ids = itertools.count(1)

    def submit(self, body: bytes) -> Any:
        """Send a request body; the Ray object reference of the reply frame."""
        return self.actor.call.remote(messages.request_header(next(self.ids), False, in_view_call()) + body)

    def result(self, frame: bytes) -> Any:
        """The answer in a reply frame (a shard's error is re-raised)."""
        _, ok, result = messages.decode_reply(frame)
        if ok:
            return result
        raise messages.rebuild_error(result, self.shard_id)

    def call(self, method: str, *args: Any) -> Any:
        """Run shard API method (or worker diagnostic) ``method(*args)`` and return its answer."""
        body = messages.encode_body(api.check(method, diagnostics=True), args)
        return _get_all([self], [self.submit(body)], method)[0]

    @property
    def respawns(self) -> int:
        """How many times Ray has restarted this shard's actor."""
        from ray._private.state import actors  # the actor table of the GCS; ray.util.state needs the dashboard

        return int(actors(self.actor._actor_id.hex()).get("NumRestarts", 0))

    def node_id(self) -> str:
        """The Ray node this shard runs on."""
        import ray

        return ray.get(self.actor.node_id.remote())

    def close(self) -> None:
        """Stop the actor."""
        import ray

        ray.kill(self.actor, no_restart=True)

    def __repr__(self) -> str:
        return f"RayShard({self.shard_id})"


def _get_all(shards: Sequence[RayShard], refs: list, method: str) -> list[Any]:
    """The answers of ``refs`` (one per shard); a dead actor raises ShardError naming its shard."""
    import ray
    from ray.exceptions import RayActorError

    try:
        frames = ray.get(refs)
    except RayActorError:
        frames = []
        for shard, ref in zip(shards, refs):
            try:
                frames.append(ray.get(ref))
            except RayActorError as error:
                raise ShardError(f"shard {shard.shard_id} died while serving {method}; Ray restarts it "
                                 f"({type(error).__name__})") from None
    return [shard.result(frame) for shard, frame in zip(shards, frames)]


class RayShardGroup(ShardGroup):
    """Shard actors, called in parallel."""

    backend = "ray"

    def call_each(self, method: str, args_per_shard: Sequence[tuple | None]) -> list[Any]:
        api.check(method, diagnostics=True)
        bodies: dict[int, bytes] = {}
        picked, refs = [], []
        for index, (shard, args) in enumerate(zip(self.shards, args_per_shard)):
            if args is None:
                continue
            body = bodies.get(id(args))
            if body is None:
                body = bodies[id(args)] = messages.encode_body(method, args)
            picked.append(index)
            refs.append(shard.submit(body))
        answers = _get_all([self.shards[i] for i in picked], refs, method)
        results: list[Any] = [None] * len(self.shards)
        for index, answer in zip(picked, answers):
            results[index] = answer
        return results

    def respawns(self) -> list[int]:
        return [shard.respawns for shard in self.shards]

    def close(self) -> None:
        if not self.shards:
            return
        shards, self.shards = self.shards, []
        for shard in shards:
            shard.close()
        _release_ray()


_lock = threading.Lock()
_owned = False  # whether this module started the Ray instance
_owned_users = 0  # open groups on that instance


def _acquire_ray(address: str | None) -> None:
    """Connect to Ray (or start a local instance) once per process."""
    global _owned, _owned_users
    import ray

    with _lock:
        if not ray.is_initialized():
            starting = address is None and not os.environ.get("RAY_ADDRESS")
            ray.init(address="local" if starting else address, include_dashboard=False, logging_level="WARNING")
            _owned = starting
        if _owned:
            _owned_users += 1


def _release_ray() -> None:
    """Shut down the local Ray instance this module started once its last group closes."""
    global _owned, _owned_users
    import ray

    with _lock:
        if _owned:
            _owned_users -= 1
            if _owned_users == 0:
                ray.shutdown()
                _owned = False


def start_ray_shards(schema: Schema, n: int, address: str | None = None,
                     data_dir: str | None = None) -> RayShardGroup:
    """Start ``n`` shard actors (spread over the cluster's nodes) and wait until they are ready."""
    try:
        import ray
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("backend='ray' needs the ray extra: pip install 'segengine[ray]'") from None
    _acquire_ray(address)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor = ray.remote(ShardActor)
    nodes = sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])
    spec = schema.to_dict()
    factory = os.environ.get(FACTORY_ENV, "")
    group = RayShardGroup([
        RayShard(actor.options(num_cpus=0, max_restarts=-1, max_task_retries=0,
                               scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[i % len(nodes)], soft=False))
                 .remote(spec, i, data_dir, factory), i)
        for i in range(n)])
    try:
        group.call_all("stats")
    except BaseException:
        group.close()
        raise
    return group
