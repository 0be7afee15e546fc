"""The floor of a Python gRPC point read's latency on this machine: what segengine's Membership
p99 under load can be compared with.

    python benchmarks/grpc_floor.py [--seconds 8] [--in-flight 4] [idle burn nogil gil fork write]
    python benchmarks/grpc_floor.py fork --fork-gib 1.4 --fork-every 3.2

A bare grpc.aio server (its own process, the GIL switch interval of segengine's server) answers
a constant from a thread pool, as segengine's servicer does for calls that leave the event loop;
a client process keeps ``--in-flight`` calls going for ``--seconds`` and prints QPS, p50 and p99.
Conditions: ``idle``; ``burn``, a process at nice +10 spinning on one core (``--burners``: that
many); ``nogil``, a thread of the server at nice +10 looping a numba kernel that releases the GIL
(as a heavy query's counting does); ``gil``, a thread of the server at nice +10 looping Python
bytecode; ``fork``, the server holding ``--fork-gib`` GiB in 4 KiB pages (as a shard worker's bitmaps and heap mostly are) and a
thread of it forking every ``--fork-every`` seconds, each child spinning at nice +10 until the next
fork (as back-to-back snapshots do: a fork stalls the forking process for the kernel's copy of its
page tables, and the child serialises on the other core). It prints the forks' median length too;
``write``, a process at nice +10 writing files of ``--write-gib`` GiB back to back, each flushed
with ``fsync`` and then removed (as each snapshot writes its parts: about 1.8 GB at 10M profiles),
in a temporary directory beside the data (``--write-dir``); ``--write-mb-s`` paces the writes
(each MiB synced as it is written, so the disk sees a steady stream instead of write-back bursts).
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import threading
import time
from concurrent import futures
from typing import Any

METHOD = "/floor.Floor/Echo"
SWITCH_INTERVAL_S = 0.0005  # as server/app.py


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _hog(mode: str, stop: Any) -> None:
    """A nice +10 thread of the server busy until ``stop``: in a nogil kernel or in bytecode."""
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    if mode == "nogil":
        import numba
        import numpy as np

        @numba.njit(nogil=True)
        def spin(values: Any) -> float:
            total = 0.0
            for value in values:
                total += value * value
            return total

        data = np.random.rand(5_000_000)
        while not stop.is_set():
            spin(data)
    else:
        while not stop.is_set():
            total = 0
            for i in range(100_000):
                total += i


def _forker(gib: float, every: float, stop: Any, lengths: Any) -> None:
    """Hold ``gib`` GiB in 4 KiB pages and fork every ``every`` s until ``stop``; each child spins at
    nice +10 until the next fork is due. Puts each fork's length (ms) on ``lengths``."""
    import mmap

    pages = mmap.mmap(-1, int(gib * (1 << 30)), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    pages.madvise(mmap.MADV_NOHUGEPAGE)
    for offset in range(0, len(pages), mmap.PAGESIZE):  # every page resident
        pages[offset] = 1
    while not stop.wait(0.0):
        began = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.nice(10)
            end = began + every
            while time.perf_counter() < end:
                pass
            os._exit(0)
        lengths.put((time.perf_counter() - began) * 1000)
        os.waitpid(pid, 0)


def serve(ports: Any, mode: str, stop: Any, fork: tuple[float, float] = (0.0, 0.0), lengths: Any = None) -> None:
    """The server process: answers until ``stop``."""
    import grpc

    sys.setswitchinterval(SWITCH_INTERVAL_S)
    pool = futures.ThreadPoolExecutor(16)

    async def echo(request: bytes, context: Any) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(pool, lambda: b"x" * 64)

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "floor.Floor", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ports.put(port)
        while not stop.is_set():
            await asyncio.sleep(0.1)
        await server.stop(0)

    if mode in ("nogil", "gil"):
        threading.Thread(target=_hog, args=(mode, stop), daemon=True).start()
    if mode == "fork":
        threading.Thread(target=_forker, args=(*fork, stop, lengths), daemon=True).start()
    asyncio.run(main())


def write_files(stop: Any, gib: float, directory: str | None, mb_s: float) -> None:
    """A process at nice +10 writing ``gib`` GiB files with fsync, back to back, until ``stop``; at
    most ``mb_s`` MB/s (0: as fast as it can), each 1 MiB written through to the disk at once."""
    import tempfile

    os.nice(10)
    block = os.urandom(1 << 20)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        path = os.path.join(scratch, "part")
        while not stop.is_set():
            began = time.perf_counter()
            with open(path, "wb") as out:
                for i in range(int(gib * 1024)):
                    out.write(block)
                    if stop.is_set():
                        break
                    if mb_s:
                        out.flush()
                        os.fdatasync(out.fileno())
                        time.sleep(max(0.0, began + (i + 1) * len(block) / (mb_s * 1e6) - time.perf_counter()))
                out.flush()
                os.fsync(out.fileno())
            os.unlink(path)


def burn(stop: Any) -> None:
    """A process at nice +10 spinning on one core until ``stop``."""
    os.nice(10)
    while not stop.is_set():
        pass


async def client(port: int, seconds: float, in_flight: int) -> list[float]:
    """Latencies (ms) of Echo calls, ``in_flight`` at a time, for ``seconds``."""
    import grpc

    latencies: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        end = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < end:
                began = time.perf_counter()
                await call(b"q")
                latencies.append((time.perf_counter() - began) * 1000)

        await asyncio.gather(*(loop() for _ in range(in_flight)))
    return latencies


def background(ctx: Any, mode: str, stop: Any, args: argparse.Namespace) -> list[Any]:
    """The processes (not started) that load the machine beside the server in condition ``mode``."""
    if mode == "burn":
        return [ctx.Process(target=burn, args=(stop,)) for _ in range(args.burners)]
    if mode == "write":
        return [ctx.Process(target=write_files, args=(stop, args.write_gib, args.write_dir, args.write_mb_s))]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modes", nargs="*", default=["idle", "burn", "nogil", "gil", "fork", "write"])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--burners", type=int, default=1, help="burn: processes spinning at nice +10")
    parser.add_argument("--fork-gib", type=float, default=1.4, help="fork: the server's memory in 4 KiB pages")
    parser.add_argument("--fork-every", type=float, default=3.2, help="fork: seconds between forks")
    parser.add_argument("--write-gib", type=float, default=1.8, help="write: the size of each file written")
    parser.add_argument("--write-mb-s", type=float, default=0.0,
                        help="write: at most this many MB/s, each MiB synced as written (0: unpaced)")
    parser.add_argument("--write-dir", default=None, help="write: where (default: the system's temporary directory)")
    args = parser.parse_args(argv)
    ctx = multiprocessing.get_context("spawn")
    for mode in args.modes:
        stop, ports, lengths = ctx.Event(), ctx.Queue(), ctx.Queue()
        server = ctx.Process(target=serve, args=(ports, mode, stop, (args.fork_gib, args.fork_every), lengths))
        server.start()
        port = ports.get()
        if mode == "fork":
            time.sleep(args.fork_gib * 2)  # its pages made resident before the clients start
        burners = background(ctx, mode, stop, args)
        for process in burners:
            process.start()
        latencies = asyncio.run(client(port, args.seconds, args.in_flight))
        stop.set()
        for process in (server, *burners):
            process.join()
        forks = []
        while not lengths.empty():
            forks.append(lengths.get())
        note = f"   ({len(forks)} forks, p50 {percentile(forks, 0.5):.1f} ms)" if forks else ""
        print(f"{mode:6s} {len(latencies) / args.seconds:7.0f} QPS   p50 {percentile(latencies, 0.5):6.2f} ms   "
              f"p99 {percentile(latencies, 0.99):6.2f} ms{note}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
