"""The OS priority of threads: background work (heavy queries, snapshot writes) runs at a lower one.

Linux gives every thread its own nice value, so a thread can lower its own priority without
touching the rest of its process: where no core is free, the kernel then runs the threads of
short calls first. Elsewhere this is a no-op.

A thread that lowered its priority is a background thread (``is_background_thread``): its reads
of the engine are heavy (a writer waits for them without holding other reads back:
engine.concurrency), and its calls to shard workers run there at a lower priority too
(``run_in_background``), so a heavy query yields to short calls in every process it reaches. The
parts of a write that no reader waits for are sent the same way (``background_calls``).

>>> import threading
>>> got = []
>>> thread = threading.Thread(target=lambda: got.append(lower_thread_priority(0)))
>>> thread.start(); thread.join()
>>> got[0] == os.getpriority(os.PRIO_PROCESS, 0)  # a no-op change: the process's own nice value
True
"""
from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")

log = logging.getLogger("segengine")


_thread = threading.local()


def is_background_thread() -> bool:
    """True if the calling thread lowered its priority (``lower_thread_priority``)."""
    return getattr(_thread, "background", False)


def sends_background() -> bool:
    """True if the calling thread's shard calls are background work: a background thread's, or made
    inside ``background_calls``."""
    return is_background_thread() or getattr(_thread, "calls", False)


@contextmanager
def background_calls() -> Iterator[None]:
    """Send the shard calls this thread makes in the block as background work (a worker serves them
    at a lower priority), the thread itself keeping its priority: the parts of a write that readers
    do not wait for (its prepare, its sync step: engine.concurrency)."""
    before = getattr(_thread, "calls", False)
    _thread.calls = True
    try:
        yield
    finally:
        _thread.calls = before


def run_in_background(fn: Callable[[], T], nice: int) -> T:
    """``fn()`` run on a new thread whose priority is ``nice`` lower (a thread cannot raise its own
    priority back once lowered, so the caller's stays as it is); re-raises what ``fn`` raises."""
    outcome: list = []

    def run() -> None:
        lower_thread_priority(nice)
        try:
            outcome.append((True, fn()))
        except BaseException as error:  # handed to the caller
            outcome.append((False, error))

    thread = threading.Thread(target=run, name="background-call", daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def lower_thread_priority(nice: int) -> int | None:
    """Lower the calling thread's OS priority by ``nice`` (up to nice 19) and make it a background
    thread; its nice value afterwards, None where threads have no priority of their own."""
    _thread.background = True
    try:
        thread = threading.get_native_id()
        value = min(os.getpriority(os.PRIO_PROCESS, thread) + nice, 19)
        os.setpriority(os.PRIO_PROCESS, thread, value)
        return value
    except (AttributeError, OSError):  # no per-thread priorities here
        log.debug("cannot lower the priority of thread %s", threading.current_thread().name, exc_info=True)
        return None
