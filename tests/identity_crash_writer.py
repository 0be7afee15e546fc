"""Crash writer for identity: merges and erasures acknowledged on stdout, snapshots meanwhile.

``python tests/identity_crash_writer.py DATA_DIR CYCLE`` opens a 2-shard engine on DATA_DIR and
loops, per step ``i`` (ids ``c<cycle>-<i>-...``): upsert a source and a target (one event each,
with event ids) and a profile to erase, merge the source into the target (``M <i>`` once
acknowledged), send the two events again (a producer's retry: ignored, their ids are held), erase
the third (``X <i>``). A thread snapshots every 0.1 s, so kills also land in snapshots and compactions.
"""
from __future__ import annotations

import sys
import threading
import time

from engine import Engine, Schema
from engine.schema import CONTRACT_SCHEMA

TS = 1_700_000_000_000


def main() -> None:
    data_dir, cycle = sys.argv[1], int(sys.argv[2])
    engine = Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=2, data_dir=data_dir, backend="local",
                    durability={"snapshot_every_s": None, "snapshot_log_bytes": None})

    def snapshots() -> None:
        while True:
            time.sleep(0.1)
            engine.snapshot()

    threading.Thread(target=snapshots, daemon=True).start()
    print("ready", flush=True)
    i = 0
    while True:
        base = f"c{cycle}-{i}"
        engine.upsert_profiles([{"id": f"{base}-src", "age": i}, {"id": f"{base}-dst"}, {"id": f"{base}-gone"}])
        events = [{"id": f"{base}-src", "event": "page_view", "ts": TS, "event_id": f"{base}-e-src"},
                  {"id": f"{base}-dst", "event": "page_view", "ts": TS + 1, "event_id": f"{base}-e-dst"}]
        engine.track_events(events)
        print(f"W {i}", flush=True)
        engine.merge(f"{base}-src", f"{base}-dst")
        print(f"M {i}", flush=True)
        assert engine.track_events(events) == 0
        engine.delete_profiles([f"{base}-gone"])
        print(f"X {i}", flush=True)
        i += 1


if __name__ == "__main__":
    main()
