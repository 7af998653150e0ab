"""Cold start: bring the id ranges a search will touch into memory sequentially, before it starts.

HyperPatch-Match reads database vectors at random positions of the shortlisted images. On a
memory-mapped store whose pages are not in the page cache, every such read is a random page fault
(measured: a cold whole-set query spent 150 s in them), while the same bytes read sequentially
stream at the disk's rate. :meth:`LayerSource.prefetch` therefore checks, with ``mincore``, how
much of each shortlisted image's range is resident, and reads the ranges that are not — in id
order, sequentially, ``posix_fadvise(WILLNEED)`` plus ``pread`` in 8 MiB chunks — before the
random phase, then maps the cached pages with ``madvise(MADV_POPULATE_READ)`` (Linux ≥ 5.14) so
the random phase takes no page fault at all. A warm query
pays only the ``mincore`` check (microseconds per image). A prefetch larger than half the memory
the process may still fill (the machine's available memory, or its memory cgroup's limit less its
use: :func:`memory_budget`) is skipped: under a 2 GiB cap, prefetching a whole-set query's 7.3 GB
read the store again and again (40 GB in 10 minutes) where the search alone faults in only what
it touches.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

_PAGE = mmap.PAGESIZE
_MADV_POPULATE_READ = 22
_CHUNK = 8 << 20

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    _libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _libc = None


#: A prefetch reads at most this fraction of the memory this process may still fill.
PREFETCH_MEMORY_FRACTION = 0.5


def _cgroup_memory() -> tuple[int, int] | None:
    """This process's memory cgroup limit and use in bytes (v2 ``memory.max`` / ``memory.current``,
    v1 ``memory.limit_in_bytes`` / ``memory.usage_in_bytes``); None without a limit."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":  # v2
                root = Path("/sys/fs/cgroup") / path.lstrip("/")
                limit, usage = root / "memory.max", root / "memory.current"
            elif "memory" in controllers.split(","):
                root = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
                limit, usage = root / "memory.limit_in_bytes", root / "memory.usage_in_bytes"
            else:
                continue
            if limit.is_file() and usage.is_file():
                text = limit.read_text().strip()
                if text != "max" and int(text) < (1 << 62):
                    return int(text), int(usage.read_text())
    except (OSError, ValueError):
        pass
    return None


def memory_budget() -> int:
    """Bytes of memory this process may still fill: the machine's available memory, and under a
    memory cgroup at most its limit less its use."""
    import psutil

    budget = int(psutil.virtual_memory().available)
    cg = _cgroup_memory()
    return min(budget, max(0, cg[0] - cg[1])) if cg else budget


def memory_limit() -> tuple[int, str]:
    """The most memory this process can ever hold, and what sets it: the machine's RAM, or a
    smaller memory cgroup limit."""
    import psutil

    total = int(psutil.virtual_memory().total)
    cg = _cgroup_memory()
    return (cg[0], "memory cgroup limit") if cg and cg[0] < total else (total, "RAM")


def _page_span(addr: int, nbytes: int) -> tuple[int, int]:
    start = addr - addr % _PAGE
    stop = addr + nbytes
    return start, -(-(stop - start) // _PAGE) * _PAGE


def resident_pages(addr: int, nbytes: int) -> tuple[int, int]:
    """``(resident, total)`` pages of the mapped range ``[addr, addr + nbytes)`` (``mincore``)."""
    if nbytes <= 0 or _libc is None:
        return 0, 0
    start, length = _page_span(addr, nbytes)
    vec = np.zeros(length // _PAGE, dtype=np.uint8)
    if _libc.mincore(start, length, vec.ctypes.data) != 0:
        return 0, 0
    return int(np.count_nonzero(vec & 1)), int(vec.size)


@dataclass
class LayerSource:
    """Where a layer's codes live on disk: file, byte offset of id 0, bytes per id."""

    path: Path
    offset: int
    row_bytes: int

    def resident(self, raw: np.ndarray, runs: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """``(resident, total)`` pages of the id ``runs`` of the mapped codes ``raw``."""
        base = raw.ctypes.data
        res = tot = 0
        for a, b in runs:
            r, t = resident_pages(base + a * self.row_bytes, (b - a) * self.row_bytes)
            res, tot = res + r, tot + t
        return res, tot

    def prefetch(self, raw: np.ndarray, runs: Sequence[tuple[int, int]], *,
                 min_resident: float = 0.95) -> dict:
        """Populate each run of ids that is less than ``min_resident`` cached, in id order.

        Returns ``{"pages": checked, "resident": already cached, "read_bytes": populated,
        "method": ...}``.
        """
        base = raw.ctypes.data
        out = {"pages": 0, "resident": 0, "read_bytes": 0, "method": None}
        todo = []
        for a, b in runs:
            r, t = resident_pages(base + a * self.row_bytes, (b - a) * self.row_bytes)
            out["pages"] += t
            out["resident"] += r
            if t and r < min_resident * t:
                todo.append((a, b))
        if not todo:
            return out
        wanted = sum((b - a) * self.row_bytes for a, b in todo)
        budget = int(memory_budget() * PREFETCH_MEMORY_FRACTION)
        if wanted > budget:  # reading it all would evict what it read first: let the search fault
            out["method"] = f"skipped: {wanted} bytes to read, {budget} of memory to spare"
            return out
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for a, b in todo:
                off, nbytes = self.offset + a * self.row_bytes, (b - a) * self.row_bytes
                # Sequential reads through the file (the kernel's read-ahead makes them large):
                # measured several times faster on a cold file than populating the mapping,
                # which faults it in read-ahead-window pieces.
                os.posix_fadvise(fd, off, nbytes, os.POSIX_FADV_WILLNEED)
                buf = bytearray(min(_CHUNK, nbytes))
                pos = off
                while pos < off + nbytes:
                    n = os.preadv(fd, [memoryview(buf)[: min(_CHUNK, off + nbytes - pos)]], pos)
                    if n <= 0:
                        break
                    pos += n
                out["method"] = "pread"
                # Then map the now cached pages, so the random phase takes no page fault.
                start, length = _page_span(base + a * self.row_bytes, nbytes)
                if _libc is not None and _libc.madvise(start, length, _MADV_POPULATE_READ) == 0:
                    out["method"] = "pread + madvise(MADV_POPULATE_READ)"
                out["read_bytes"] += nbytes
        finally:
            os.close(fd)
        return out

    def evict(self) -> None:
        """Drop the layer file's pages from the page cache (benchmarks of a cold start)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(layer, *, max_fraction: float = 0.8) -> dict:
    """Read a whole layer (codes and screen rows) into the page cache, sequentially.

    ``compnn serve --warm``: the first queries then take no page faults. Skipped, with the reason
    in ``"skipped"``, when the layer's files exceed ``max_fraction`` of the machine's RAM (the
    cache could not hold them, and reading would only evict other pages).
    """
    import time

    sources = [s for s in (layer.source, layer.screen_source) if s is not None]
    need = sum(os.path.getsize(s.path) for s in sources)
    total, what = memory_limit()
    out = {"layer": layer.name, "bytes": need, "read_bytes": 0, "seconds": 0.0}
    if not sources:
        return {**out, "skipped": "in memory already (no file)"}
    if need > max_fraction * total:
        return {**out, "skipped": f"{need / 1e9:.1f} GB does not fit {max_fraction:.0%} of the "
                                  f"{total / 1e9:.1f} GB {what}; queries read the pages they touch"}
    t = time.perf_counter()
    got = layer.prefetch(range(layer.num_images))
    out["read_bytes"] = int(got.get("read_bytes", 0)) + int(got.get("screen", {}).get("read_bytes", 0))
    out["seconds"] = round(time.perf_counter() - t, 3)
    return out
