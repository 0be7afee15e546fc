"""The allocator policy of a shard: keep freed heap memory while querying, give it back after loads.

Queries allocate and free many bitmap containers (8 KiB each) per call. With glibc's default
policy the freed top of the heap beyond 128 KiB is returned to the OS at once and the next query
page-faults it back in: measured at 10M profiles, a range predicate over a 850K-row found set
took 9.7 ms by default and 4.8 ms once freed memory was kept (``tune_allocator``). A bulk load,
on the other hand, allocates large temporaries; ``malloc_trim(0)`` after it releases them, so
the resident size reflects the data (measured: 144 vs 77 bytes per profile at 3M). Every thread
allocates from the one main heap (``M_ARENA_MAX`` 1): the trim returns the free top of the main
heap but not of glibc's per-thread arenas, which kept 40-75 MiB resident per writing thread
(measured: a durable engine at 1M profiles held 128 bytes per profile with them, 64 without). All
are no-ops where glibc is absent.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_LIBC = None
try:
    _name = ctypes.util.find_library("c")
    _LIBC = ctypes.CDLL(_name) if _name else None
    if _LIBC is not None and not hasattr(_LIBC, "malloc_trim"):
        _LIBC = None
except OSError:  # pragma: no cover - non-glibc platforms
    _LIBC = None


#: mallopt parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: Free memory at the top of the heap kept for reuse instead of being returned at every free.
TRIM_THRESHOLD_BYTES = 256 << 20
#: Allocations from this size up get their own mapping (NumPy columns), smaller ones the heap.
MMAP_THRESHOLD_BYTES = 32 << 20
#: glibc malloc arenas: one (threads mostly allocate holding the GIL, so they rarely contend for it).
ARENAS = 1
_tuned = False


def tune_allocator() -> None:
    """Keep freed heap memory for reuse (once per process); ``release_free_memory`` still trims."""
    global _tuned
    if _LIBC is not None and not _tuned and hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        # one heap for every thread: ``malloc_trim`` returns the free top of the main heap only, so each
        # further thread arena (the log's and applier's threads, RPC workers) kept up to 64 MiB resident
        _LIBC.mallopt(M_ARENA_MAX, ARENAS)
        _tuned = True


#: A write of at least this many records is a bulk load: its temporaries are given back after it.
BULK_RECORDS = 1 << 18


def release_free_memory() -> None:
    """Return free heap pages to the OS (glibc ``malloc_trim``)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def release_after_bulk(records: int) -> None:
    """``release_free_memory`` after a write of ``records`` records if it is a bulk load. Trimming
    walks the whole heap (6 ms at 10M profiles), too much for every streamed batch."""
    if records >= BULK_RECORDS:
        release_free_memory()
