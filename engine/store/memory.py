"""Give freed heap memory back to the operating system after bulk loads.

A bulk load allocates large temporaries; glibc keeps the freed pages in its heap, so the
process's RSS stays near the load's peak (measured: 144 vs 77 bytes per profile at 3M).
``malloc_trim(0)`` releases them. A no-op where glibc is absent.
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


def release_free_memory() -> None:
    """Return free heap pages to the OS (glibc ``malloc_trim``)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
