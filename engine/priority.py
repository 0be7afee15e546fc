"""The OS priority of threads: background work (heavy queries, snapshot writes) runs at a lower one.

Linux gives every thread its own nice value, so a thread can lower its own priority without
touching the rest of its process: where no core is free, the kernel then runs the threads of
short calls first. Elsewhere this is a no-op.

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

log = logging.getLogger("segengine")


def lower_thread_priority(nice: int) -> int | None:
    """Lower the calling thread's OS priority by ``nice`` (up to nice 19); its nice value afterwards,
    None where threads have no priority of their own."""
    try:
        thread = threading.get_native_id()
        value = min(os.getpriority(os.PRIO_PROCESS, thread) + nice, 19)
        os.setpriority(os.PRIO_PROCESS, thread, value)
        return value
    except (AttributeError, OSError):  # no per-thread priorities here
        log.debug("cannot lower the priority of thread %s", threading.current_thread().name, exc_info=True)
        return None
