"""kill -9 during merges and erasures: no acknowledged merge is lost, no erased profile comes back,
an unacknowledged merge is whole or absent (never the source's events on both or on neither), and
the event ids of acknowledged events are held after recovery (a retry is ignored)."""
from __future__ import annotations

import random
import re
from pathlib import Path

from engine import Engine, Schema
from engine.schema import CONTRACT_SCHEMA

from test_crash import kill_at_random, start_writer

SCHEMA = Schema.from_dict(CONTRACT_SCHEMA)
WRITER = str(Path(__file__).with_name("identity_crash_writer.py"))
NOW = 2_000_000_000_000


def test_kill_9_during_merges_and_erasures(tmp_path: Path, monkeypatch) -> None:
    import test_crash

    monkeypatch.setattr(test_crash, "HARNESS", WRITER)
    rng = random.Random(7)
    data_dir = tmp_path / "data"
    acked: dict[int, dict[str, set[int]]] = {}
    for cycle in range(6):
        out = kill_at_random(start_writer(data_dir, cycle), rng, 1.5)
        acks = {"W": set(), "M": set(), "X": set()}
        for line in out.splitlines(keepends=True):
            match = re.fullmatch(r"([WMX]) (\d+)\n", line)
            if match:
                acks[match[1]].add(int(match[2]))
        acked[cycle] = acks
        with Engine(SCHEMA, shards=2, data_dir=str(data_dir), backend="local",
                    durability={"snapshot_every_s": None, "snapshot_log_bytes": None}) as engine:
            live = set(engine.ids("ALL", now=NOW))
            both = set(engine.ids("DID(page_view, COUNT = 2)", now=NOW))
            for c, seen in acked.items():
                for i in seen["W"]:
                    base = f"c{c}-{i}"
                    src, dst, gone = f"{base}-src", f"{base}-dst", f"{base}-gone"
                    merged = src not in live
                    if i in seen["M"]:
                        assert merged, src
                    assert dst in live
                    assert (dst in both) == merged, base  # the source's event on exactly one profile
                    if merged:
                        assert engine.export_profile(src)["id"] == dst
                    if i in seen["X"]:
                        assert gone not in live and engine.export_profile(gone) is None, gone
                    retry = [{"id": p, "event": "page_view", "ts": NOW, "event_id": f"{base}-e-{p[-3:]}"}
                             for p in (src, dst)]
                    assert engine.track_events(retry) == 0, base  # the acknowledged events' ids are held
    assert sum(len(a["M"]) for a in acked.values()) > 0 and sum(len(a["X"]) for a in acked.values()) > 0
