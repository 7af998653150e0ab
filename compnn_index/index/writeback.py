"""Start writing a file's dirty pages to disk while the file is still being written.

A store file is fsynced once, when it is closed. Left to itself, the kernel starts writing dirty
pages back only past ``vm.dirty_background_ratio`` of memory (~2.3 GB on a 24 GiB machine), so a
small store's whole write happened inside that final fsync, serially after the build's compute,
while a large store's was mostly written in the background during it: a 200-image build paid
~0.4 s that a 3,200-image build hid (issue 23, build throughput against database size). The
writers here ask for writeback of each finished span as they go (``sync_file_range`` with
``SYNC_FILE_RANGE_WRITE``: it only starts the I/O, it does not wait and guarantees nothing), the
way RocksDB's ``bytes_per_sync`` does; durability is still the fsync at close.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import BinaryIO

#: Bytes written between two writeback requests.
SPAN_BYTES = 32 << 20
_SYNC_FILE_RANGE_WRITE = 2


def _load():
    if not hasattr(os, "sched_getaffinity"):  # not Linux
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load()


class Writeback:
    """Tracks how much of ``file`` was written since the last request; :meth:`wrote` asks for the
    span's writeback once it reaches :data:`SPAN_BYTES`. A no-op where the call is missing."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.done = 0                  # bytes before this offset were already requested
        self.pending = file.tell()     # what is already written (a header) goes with the first span

    def wrote(self, nbytes: int) -> None:
        self.pending += int(nbytes)
        if self.pending < SPAN_BYTES or _sync_file_range is None:
            return
        self.file.flush()
        # errors (EINVAL on a file system without it, ESPIPE on a pipe) only lose the head start
        _sync_file_range(self.file.fileno(), self.done, self.pending, _SYNC_FILE_RANGE_WRITE)
        self.done += self.pending
        self.pending = 0
