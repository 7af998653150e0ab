"""The service's anonymous memory: give freed buffers back to the OS, and measure it.

A flood of large uploads allocates and frees many multi-megabyte buffers; glibc keeps freed heap
memory in its arenas (and, after each large free, raises the size above which it maps
allocations separately), so the process's anonymous memory would stay high long after the flood.
:func:`tune_allocator` fixes that threshold, :func:`release_memory` trims the heap when the
service falls idle, and :func:`rss_anon` reads what the tests and ``tools/load_test.py`` check
(mapped store pages are file-backed and do not count).
"""
from __future__ import annotations

from pathlib import Path


def release_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; elsewhere nothing).

    Called when the pool falls idle: after a flood of large uploads the freed buffers would
    otherwise stay in the allocator's arenas and the process's anonymous memory stay high.
    """
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


def tune_allocator(mmap_threshold: int = 4 << 20) -> None:
    """Serve allocations of at least ``mmap_threshold`` bytes (request bodies, decoded uploads)
    from their own mappings, returned to the OS when freed (glibc ``mallopt``; elsewhere
    nothing). Fixing the threshold also stops glibc from raising it after each large free."""
    mallopt = _libc_function("mallopt")
    if mallopt is not None:
        mallopt(-3, int(mmap_threshold))  # M_MMAP_THRESHOLD


def _libc_function(name: str):
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return getattr(libc, name)
    except (OSError, AttributeError):
        return None


def rss_anon(pid: int | str = "self") -> int:
    """Resident anonymous memory of a process in bytes (``RssAnon`` of ``/proc/PID/status``), or 0."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
