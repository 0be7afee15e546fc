"""Webhook delivery throughput: changes/s a destination delivers to a local receiver.

    python benchmarks/bench_webhooks.py                          # 200k members backfilled, 200k live changes
    python benchmarks/bench_webhooks.py --profiles 1000000 --batch-size 5000

A durable engine (a temporary data directory) holds ``--profiles`` profiles; the saved segment
``age >= 50`` holds about half. The receiver is a separate process (``http.server`` on 127.0.0.1,
HTTP/1.1 keep-alive) that checks every request's HMAC-SHA256 signature, parses the JSON and
counts the changes. Two phases, each timed until every change is acknowledged:

- **backfill**: ``add_destination`` on the populated segment (every member sent as entered);
- **live**: ``--rounds`` upserts of ``--write-batch`` profiles each with fresh ages (about half of
  them enter or exit the segment), written as fast as the engine takes them while the
  destination delivers; the time runs from the first write to the last acknowledgement.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import multiprocessing
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SECRET = "bench-secret"


def serve_receiver(port_out, counter, bad) -> None:
    """The receiver process: verify, parse, count; answer 204."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    key = SECRET.encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, self.headers.get("X-Segengine-Signature", "")):
                with bad.get_lock():
                    bad.value += 1
                self.send_response(401)
            else:
                changes = len(json.loads(body)["changes"])
                with counter.get_lock():
                    counter.value += changes
                self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_out.value = server.server_address[1]
    server.serve_forever()


def wait_delivered(engine, counter, target: int, timeout_s: float = 600.0) -> float:
    """Seconds until the receiver counted ``target`` changes and nothing is pending."""
    began = time.perf_counter()
    while counter.value < target or engine.list_destinations()[0]["pending"]:
        if time.perf_counter() - began > timeout_s:
            raise SystemExit(f"timed out: {counter.value} of {target} delivered")
        time.sleep(0.005)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--write-batch", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=1000, help="changes per request")
    parser.add_argument("--shards", type=int, default=1)
    args = parser.parse_args()

    from engine import Engine, Schema
    from engine.schema import CONTRACT_SCHEMA

    ctx = multiprocessing.get_context("spawn")
    port, counter, bad = ctx.Value("i", 0), ctx.Value("q", 0), ctx.Value("q", 0)
    receiver = ctx.Process(target=serve_receiver, args=(port, counter, bad), daemon=True)
    receiver.start()
    while not port.value:
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port.value}/hook"
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as data_dir, \
            Engine(Schema.from_dict(CONTRACT_SCHEMA), shards=args.shards, data_dir=data_dir) as engine:
        for start in range(0, args.profiles, 100_000):
            engine.upsert_profiles([{"id": f"u{i}", "age": rng.randrange(100)}
                                    for i in range(start, min(args.profiles, start + 100_000))])
        engine.create_segment("older", "age >= 50")
        members = engine.count("SEGMENT('older')")
        began = time.perf_counter()
        engine.add_destination("older", url, SECRET, batch_size=args.batch_size)
        wait_delivered(engine, counter, members)
        backfill_s = time.perf_counter() - began
        print(f"backfill: {members} changes in {backfill_s:.2f} s = {members / backfill_s:,.0f} changes/s")

        before = counter.value
        began = time.perf_counter()
        for _ in range(args.rounds):
            ids = rng.sample(range(args.profiles), args.write_batch)
            engine.upsert_profiles([{"id": f"u{i}", "age": rng.randrange(100)} for i in ids])
        written_s = time.perf_counter() - began
        wait_delivered(engine, counter, before)
        live_s = time.perf_counter() - began
        changes = engine.list_destinations()[0]["acked_change_id"] - members  # change ids are consecutive
        assert counter.value - before == changes, (counter.value - before, changes)
        print(f"live: {args.rounds} writes of {args.write_batch} profiles in {written_s:.2f} s; {changes} changes "
              f"delivered {live_s:.2f} s after the first write = {changes / live_s:,.0f} changes/s")
        stats = engine.list_destinations()[0]
        print(f"requests: {stats['batches']}, failures: {stats['failures']}, bad signatures: {bad.value}")
    receiver.terminate()


if __name__ == "__main__":
    main()
