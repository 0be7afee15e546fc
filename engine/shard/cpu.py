"""The CPU the calling thread is running on (Linux ``sched_getcpu``), or -1 where unknown.

Workers record the CPU they served their last request on, and a fan-out reads first the reply
of a worker that shares the coordinator's CPU (see ``fanout`` in engine/shard/process.py).

>>> current_cpu() >= -1
True
"""
from __future__ import annotations

import ctypes
from typing import Callable


def _sched_getcpu() -> Callable[[], int]:
    try:
        function = ctypes.CDLL(None).sched_getcpu
    except (AttributeError, OSError):  # not glibc/musl on Linux
        return lambda: -1
    function.restype = ctypes.c_int
    function.argtypes = []
    return function


#: The calling thread's CPU number (75 ns on the development VM), -1 if the platform has no sched_getcpu.
current_cpu: Callable[[], int] = _sched_getcpu()
