"""Pausing Python's cyclic garbage collector around a call that allocates many short-lived containers.

A batch of merges decodes and builds thousands of dicts and lists that live until its write is
applied. Collected while they live, they are promoted to the oldest generation, whose full
collections walk every object of the process (some 30-40 ms in a coordinator): one came every few
batches. With the collector paused for the call they are freed by reference counting when it ends,
and no full collection is owed to them. Nested and concurrent pauses share one pause; a collector
that the host application disabled stays disabled.

>>> import gc
>>> with collector_paused():
...     gc.isenabled()
False
>>> gc.isenabled()
True
"""
from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
_holders = 0
_resume = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the body with the cyclic collector disabled (re-enabled when the last pause ends)."""
    global _holders, _resume
    with _lock:
        if _holders == 0:
            _resume = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _resume:
                gc.enable()
