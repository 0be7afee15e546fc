"""Crash harness: a writer process that acknowledges batches, and a checker of what survived.

The writer (``python tests/durability_harness.py DATA_DIR CYCLE [--threads N] [--shards N]
[--backend B] [--snapshot-every S]``) opens an engine on DATA_DIR and, in N threads, writes
numbered batches forever, printing one line per acknowledged write, flushed:

- ``P <batch>``: upserted PROFILES profiles ``b<batch>-<k>`` (signup_at = batch) and this
  thread's counter profile (country ``c<cycle>t<thread>``, cart_value = the thread's batch count);
- ``E <batch>``: tracked one page_view per profile of the batch (category ``b<batch>``).

A batch id is ``cycle * 1_000_000 + thread * 100_000 + i`` (i = 0, 1, ... per thread). Another
thread takes a snapshot every S seconds, so kills also land during snapshots.

``check(reader, acks)`` verifies, through nothing but ``count``/``ids`` (so it works against the
gRPC server too), that every acknowledged write is present and that every batch is either
wholly present or wholly absent, applied once.
"""
from __future__ import annotations

import argparse
import re
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol

PROFILES = 8
EVENT_TS = 1_700_000_000_000
QUERY_NOW = 2_000_000_000_000
BATCH_RE = re.compile(r"^b(\d+)-(\d+)$")


class Reader(Protocol):
    def count(self, query: str, now: int | None = None) -> int: ...
    def ids(self, query: str, now: int | None = None) -> list[str]: ...


def batch_id(cycle: int, thread: int, i: int) -> int:
    return cycle * 1_000_000 + thread * 100_000 + i


def profile_batch(cycle: int, thread: int, i: int) -> list[dict]:
    batch = batch_id(cycle, thread, i)
    records = [{"id": f"b{batch}-{k}", "signup_at": batch, "age": k} for k in range(PROFILES)]
    records.append({"id": f"counter-{cycle}-{thread}", "country": f"c{cycle}t{thread}", "cart_value": float(i)})
    return records


def event_batch(cycle: int, thread: int, i: int) -> list[dict]:
    batch = batch_id(cycle, thread, i)
    return [{"id": f"b{batch}-{k}", "event": "page_view", "ts": EVENT_TS + batch, "category": f"b{batch}"}
            for k in range(PROFILES)]


@dataclass
class Acks:
    """Acknowledged writes seen on writers' stdout, over every cycle."""

    profiles: set[int] = field(default_factory=set)
    events: set[int] = field(default_factory=set)

    def read(self, text: str) -> int:
        """Record the acknowledgements in ``text`` (complete lines only); returns how many."""
        seen = 0
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                continue  # a line cut by the kill was never flushed as a whole
            kind, _, number = line.strip().partition(" ")
            if kind == "P":
                self.profiles.add(int(number))
                seen += 1
            elif kind == "E":
                self.events.add(int(number))
                seen += 1
        return seen


def check(reader: Reader, acks: Acks) -> dict[str, int]:
    """Assert every acknowledged write is present and nothing is half-applied or applied twice."""
    members: dict[int, int] = defaultdict(int)
    for profile_id in reader.ids("ALL"):
        match = BATCH_RE.match(profile_id)
        if match:
            members[int(match.group(1))] += 1
    with_event: dict[int, int] = defaultdict(int)
    for profile_id in reader.ids("DID(page_view)", now=QUERY_NOW):
        match = BATCH_RE.match(profile_id)
        assert match, f"unexpected profile with an event: {profile_id}"
        with_event[int(match.group(1))] += 1
    assert reader.ids("DID(page_view, COUNT >= 2)", now=QUERY_NOW) == [], "an event batch was applied twice"
    for batch, count in members.items():
        assert count == PROFILES, f"profile batch {batch} is half-applied: {count} of {PROFILES} profiles"
    for batch, count in with_event.items():
        assert count == PROFILES, f"event batch {batch} is half-applied: {count} of {PROFILES} events"
        assert batch in members, f"event batch {batch} is present without its profiles"
    lost_profiles = sorted(acks.profiles - set(members))
    lost_events = sorted(acks.events - set(with_event))
    assert not lost_profiles, f"acknowledged profile batches lost: {lost_profiles[:10]}"
    assert not lost_events, f"acknowledged event batches lost: {lost_events[:10]}"
    # each thread's counter holds the number of its last present batch (writes applied in order)
    last: dict[tuple[int, int], int] = {}
    for batch in members:
        cycle, rest = divmod(batch, 1_000_000)
        thread, i = divmod(rest, 100_000)
        last[(cycle, thread)] = max(last.get((cycle, thread), -1), i)
    for (cycle, thread), i in last.items():
        found = reader.count(f"country = 'c{cycle}t{thread}' AND cart_value = {i}")
        assert found == 1, f"counter of cycle {cycle} thread {thread} is not at its last batch {i}"
    return {"batches": len(members), "event_batches": len(with_event), "acked": len(acks.profiles | acks.events)}


def write_forever(data_dir: str, cycle: int, threads: int, shards: int, backend: str,
                  snapshot_every: float) -> None:
    """The writer process's main loop (never returns; the test kills it)."""
    sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
    from engine import Engine, Schema
    from engine.schema import CONTRACT_SCHEMA

    engine = Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=shards, data_dir=data_dir, backend=backend,
                    durability={"snapshot_every_s": None, "snapshot_log_bytes": None})
    out = threading.Lock()

    def say(line: str) -> None:
        with out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def writer(thread: int) -> None:
        for i in range(100_000):
            engine.upsert_profiles(profile_batch(cycle, thread, i))
            say(f"P {batch_id(cycle, thread, i)}")
            engine.track_events(event_batch(cycle, thread, i))
            say(f"E {batch_id(cycle, thread, i)}")

    def snapshots() -> None:
        while True:
            time.sleep(snapshot_every)
            engine.snapshot()
            say("S")

    say("ready")
    for thread in range(threads):
        threading.Thread(target=writer, args=(thread,), daemon=True).start()
    if snapshot_every > 0:
        threading.Thread(target=snapshots, daemon=True).start()
    while True:
        time.sleep(3600)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir")
    parser.add_argument("cycle", type=int)
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--backend", default="local")
    parser.add_argument("--snapshot-every", type=float, default=0.15)
    args = parser.parse_args(argv)
    write_forever(args.data_dir, args.cycle, args.threads, args.shards, args.backend, args.snapshot_every)


if __name__ == "__main__":
    main(sys.argv[1:])
