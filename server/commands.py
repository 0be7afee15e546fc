"""``segengine`` subcommands that serve or talk to a server: serve, query, segments, snapshot.

They are registered in ``server.cli.COMMANDS``; the client commands share ``CLIENT_ARGS``
(``--server``, ``--token``, ``--tls-ca``, ``--timeout``; the first two default to the
environment variables SEGENGINE_SERVER and SEGENGINE_TOKEN).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from engine.errors import SegengineError

from .cli_support import (check_port_free, clock, count, megabytes, port, positive, read_schema, say_line,
                          seconds)

DEFAULT_SERVER = "127.0.0.1:50051"
#: Saved segments created by ``serve --demo`` so the quick start has something to watch.
DEMO_SEGMENTS = {
    "cart_abandoners_7d": "DID(cart_abandoned, WITHIN 7d) AND NOT DID(purchase, AFTER LAST cart_abandoned)",
    "fr_be_email": "country IN ('FR', 'BE') AND CONSENTED(email)",
    "vip_recent_buyers": "vip = TRUE AND DID(purchase, WITHIN 30d)",
    "winback_fr_be": "SEGMENT('fr_be_email') AND SEGMENT('cart_abandoners_7d')",
}


def client_args(server_default: str | None = DEFAULT_SERVER) -> tuple:
    """The connection arguments of every client command (``--server`` defaults to $SEGENGINE_SERVER)."""
    from .cli import arg

    default = os.environ.get("SEGENGINE_SERVER", server_default) if server_default else None
    return (
        arg("--server", default=default,
            help=f"server host:port (default $SEGENGINE_SERVER or {server_default})" if server_default
            else "load into the server at host:port instead of an in-process engine"),
        arg("--token", default=os.environ.get("SEGENGINE_TOKEN"), help="bearer token (default $SEGENGINE_TOKEN)"),
        arg("--tls-ca", default=None, help="PEM file of the CA to trust: connect with TLS"),
        arg("--timeout", type=seconds, default=30.0, help="deadline of each call in seconds (default 30)"),
    )


def connect(args: argparse.Namespace):
    """A SegengineClient from the connection arguments."""
    from .client import SegengineClient

    roots = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    return SegengineClient(args.server, token=args.token, timeout=args.timeout, tls=roots is not None,
                           root_certificates=roots)


def _fail(error: Exception | str) -> int:
    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    return 1


# -- serve ------------------------------------------------------------------------------------
def open_engine(args: argparse.Namespace):
    """The engine ``serve`` runs: schema from --schema, the demo, the data dir, or the contract's."""
    from engine import Engine, Schema
    from engine.schema import CONTRACT_SCHEMA

    dataset = None
    if args.demo:
        from loaders.generator import generate

        dataset = generate(args.demo, args.demo_events if args.demo_events is not None else args.demo * 10,
                           seed=args.seed)
    if args.schema:
        schema = read_schema(args.schema)
    elif dataset is not None:
        schema = Schema.from_dict(dataset.schema)
    elif args.data_dir and (Path(args.data_dir) / "schema.json").exists():
        schema = read_schema(str(Path(args.data_dir) / "schema.json"))
    else:
        schema = Schema.from_dict(CONTRACT_SCHEMA)
    engine = Engine(schema, shards=args.shards, data_dir=args.data_dir)
    if dataset is not None:
        started = time.perf_counter()
        engine.load_profiles(dataset.profiles)
        for batch in dataset.events:
            engine.load_events(batch)
        for name, query in DEMO_SEGMENTS.items():
            if name not in engine.catalog:
                engine.create_segment(name, query)
        say_line(f"demo: loaded {len(dataset.profiles)} profiles and {sum(len(b) for b in dataset.events)} events, "
                 f"{len(DEMO_SEGMENTS)} saved segments in {time.perf_counter() - started:.1f} s")
    return engine


def run_serve(args: argparse.Namespace) -> int:
    """Serve the gRPC API until SIGTERM/SIGINT (graceful: in-flight calls finish)."""
    from .app import SegengineServer, ServerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServerConfig(
        host=args.host, port=args.port, max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        max_concurrent_rpcs=args.max_concurrent_rpcs, workers=args.workers, heavy_workers=args.heavy_workers,
        token=args.token or os.environ.get("SEGENGINE_TOKEN") or None, tls_cert=args.tls_cert, tls_key=args.tls_key,
        admin_token=args.admin_token or os.environ.get("SEGENGINE_ADMIN_TOKEN") or None, audit_log=args.audit_log,
        refresh_ms=args.refresh_ms, drain_s=args.drain_s, grace_s=args.grace_s, http_port=args.http_port,
    )
    check_port_free(args.host, args.port)  # before the demo is built or the data dir recovered
    if args.http_port:
        check_port_free(args.host, args.http_port)
    engine = open_engine(args)
    try:
        server = SegengineServer(engine, config, owns_engine=True)
    except BaseException:
        engine.close()
        raise
    server.install_signal_handlers()
    server.start()
    say_line(f"segengine serving on {server.address}")
    if server.http_url is not None:
        say_line(f"segengine HTTP (metrics, JSON API, console) on {server.http_url}")
    server.wait()
    return 0


def serve_args() -> tuple:
    """Arguments of ``segengine serve``."""
    from .cli import arg

    return (
        arg("--data-dir", default=None, help="durable data directory (default: in memory only)"),
        arg("--shards", type=positive, default=1, help="shards (worker processes when > 1; default 1)"),
        arg("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)"),
        arg("--port", type=port, default=50051, help="port (default 50051; 0 = any free port, printed)"),
        arg("--http-port", type=port, default=None,
            help="also serve /metrics, /healthz, /readyz, the JSON API and the web console on this port "
                 "(0 = any free port, printed; needs the 'http' extra)"),
        arg("--schema", default=None, help="schema JSON file (default: the demo's, data dir's or the built-in one)"),
        arg("--demo", type=count, default=0, metavar="N", help="generate and load N demo profiles"),
        arg("--demo-events", type=count, default=None, help="demo events (default 10 per profile)"),
        arg("--seed", type=int, default=0, help="demo random seed"),
        arg("--token", default=None, help="require this bearer token (default $SEGENGINE_TOKEN; none = no auth)"),
        arg("--admin-token", default=None,
            help="the token of merge, erase and export (default $SEGENGINE_ADMIN_TOKEN; with --token and none: refused)"),
        arg("--audit-log", default=None, help="append every erasure (time, caller, number of profiles) to this file"),
        arg("--tls-cert", default=None, help="PEM certificate: serve TLS (with --tls-key)"),
        arg("--tls-key", default=None, help="PEM private key of --tls-cert"),
        arg("--refresh-ms", type=count, default=1000, help="refresh period of time-relative segments (default 1000)"),
        arg("--max-concurrent-rpcs", type=positive, default=128, help="calls in flight before RESOURCE_EXHAUSTED"),
        arg("--workers", type=positive, default=32, help="RPC worker threads (default 32)"),
        arg("--heavy-workers", type=positive, default=2,
            help="threads (at a lower OS priority) for queries whose last run took >= 20 ms (default 2)"),
        arg("--max-message-mb", type=megabytes, default=16, help="largest request or response (default 16 MB)"),
        arg("--drain-s", type=seconds, default=0.0, help="on SIGTERM, seconds NOT_SERVING before refusing calls"),
        arg("--grace-s", type=seconds, default=10.0, help="on SIGTERM, seconds in-flight calls may take to finish"),
    )


# -- query ------------------------------------------------------------------------------------
def run_query(args: argparse.Namespace) -> int:
    """Run a segment query on a server: ids (one per line), --count, or --explain."""
    try:
        with connect(args) as client:
            if args.count:
                print(client.count(args.query, now=args.now))
            elif args.explain:
                result = client.explain(args.query, now=args.now)
                print(f"{result.query}\n{result.count} profiles in {result.ms:.2f} ms")
                _print_plan(result.plan, 0)
            else:
                for chunk in client.iter_ids(args.query, now=args.now):
                    sys.stdout.write("".join(f"{i}\n" for i in chunk))
    except SegengineError as error:
        return _fail(error)
    return 0


def _print_plan(node: dict[str, Any], depth: int) -> None:
    label = node["step"] + (f" {node['text']}" if node["text"] and node["text"] != node["step"] else "")
    given = "all" if node["input_rows"] < 0 else str(node["input_rows"])
    estimate = f"estimated {node['estimate']:.0f}, "
    stats = f"{estimate}{node['rows']} of {given} rows, {node['ms']:.3f} ms" if node["visited"] else f"{estimate}skipped"
    print(f"{'  ' * depth}{label}  [{stats}]")
    for child in node["children"]:
        _print_plan(child, depth + 1)


def query_args() -> tuple:
    """Arguments of ``segengine query``."""
    from .cli import arg

    return (
        arg("query", help="segment query text"),
        arg("--count", action="store_true", help="print the number of profiles only"),
        arg("--explain", action="store_true", help="print the plan with rows and times per step"),
        arg("--now", type=clock, default=None,
            help="query clock: epoch ms or ISO 8601, e.g. 2026-11-20T10:00:00Z (default: the server's wall clock)"),
        *client_args(),
    )


# -- segments ---------------------------------------------------------------------------------
SEGMENT_ACTIONS = ("list", "get", "create", "delete", "membership", "watch")


def run_segments(args: argparse.Namespace) -> int:
    """Manage saved segments: list | get NAME | create NAME QUERY | delete NAME | membership ID | watch [NAME...]."""
    needed = {"get": 1, "create": 2, "delete": 1, "membership": 1}
    if args.action in needed and len(args.params) != needed[args.action]:
        print(f"segments {args.action}: expected {needed[args.action]} argument(s), got {len(args.params)}",
              file=sys.stderr)
        return 2
    try:
        with connect(args) as client:
            if args.action == "list":
                for info in client.list_segments():
                    print(f"{info.name}\t{info.count}\t{info.query}")
            elif args.action == "get":
                print(json.dumps(_info_dict(client.get_segment(args.params[0])), indent=2))
            elif args.action == "create":
                info = client.create_segment(args.params[0], args.params[1], replace=args.replace)
                print(json.dumps(_info_dict(info), indent=2))
            elif args.action == "delete":
                client.delete_segment(args.params[0])
                print(f"deleted {args.params[0]}")
            elif args.action == "membership":
                names = client.membership(args.params[0], args.only or None)
                print("\n".join(names) if names else "(no segments)")
            else:
                with client.watch(args.params) as watch:
                    for change in watch:
                        print(f"{change.seq}\t{change.kind}\t{change.segment}\t{change.id}", flush=True)
    except SegengineError as error:
        return _fail(error)
    except KeyboardInterrupt:
        return 130
    return 0


def _info_dict(info: Any) -> dict[str, Any]:
    from dataclasses import asdict

    result = asdict(info)
    result["depends_on"] = list(info.depends_on)
    return result


def segments_args() -> tuple:
    """Arguments of ``segengine segments``."""
    from .cli import arg

    return (
        arg("action", choices=SEGMENT_ACTIONS, help="what to do"),
        arg("params", nargs="*", help="NAME, NAME QUERY, profile ID, or segment names to watch"),
        arg("--replace", action="store_true", help="create: redefine the segment if it exists"),
        arg("--only", action="append", default=[], metavar="NAME", help="membership: only these segments"),
        *client_args(),
    )


# -- snapshot ---------------------------------------------------------------------------------
def run_snapshot(args: argparse.Namespace) -> int:
    """Ask a server to write a snapshot of its data now."""
    try:
        with connect(args) as client:
            detail = client.snapshot()
    except SegengineError as error:
        return _fail(error)
    print(detail or "snapshot written")
    return 0


def run_update_schema(args: argparse.Namespace) -> int:
    """Extend a server's schema to the one in a JSON file (it must contain everything of the current one)."""
    from .cli_support import read_schema

    schema = read_schema(args.file)
    with connect(args) as client:
        changes = client.update_schema(schema)
    print("\n".join(changes) if changes else "(no changes)")
    return 0


def update_schema_args() -> tuple:
    """Arguments of ``segengine update-schema``."""
    from .cli import arg

    from .cli_support import existing_file

    return (arg("file", type=existing_file, help="the new schema (JSON): the current one plus the additions"),
            *client_args())


# -- load --server ----------------------------------------------------------------------------
def run_load_remote(args: argparse.Namespace) -> int:
    """``segengine load --server ADDR``: send the files' records to a server in batches."""
    from .cli import load_files

    try:
        with connect(args) as client:
            status = load_files(client, args)
            print(f"profiles on the server: {client.count('ALL')}")
    except SegengineError as error:
        return _fail(error)
    return status
