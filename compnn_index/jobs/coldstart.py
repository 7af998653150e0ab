"""Cold start of one query: the first query on a store whose layer file is not in the page cache.

Run in a fresh process (``python -m compnn_index.jobs.coldstart STORE ...`` prints one JSON
object), because a page mapped by any process cannot be evicted. Steps:

1. open the store and the model, extract the query's features (not timed: model load and
   forward pass are not what a cold store costs);
2. evict the layer file and its screen rows (``posix_fadvise(POSIX_FADV_DONTNEED)``) and
   check they are cold: the ``mincore`` count of their resident pages (through a fresh read-only
   ``mmap`` of each file) is reported before the query;
3. time the query's search (HyperPatch-Match or exact, as given);
4. release the store, evict again, and time a sequential read (``pread``, 8 MiB chunks) of the
   bytes the query touched — the shortlisted images' id ranges, of the codes and of the screen
   rows — on the now cold files: the figure the first query is compared with (``ratio`` = query
   seconds / read seconds).
"""
from __future__ import annotations

import argparse
import gc
import json
import mmap
import os
import time
from pathlib import Path

import numpy as np


def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _resident(path: Path) -> tuple[int, int]:
    from ..index.readahead import resident_pages

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        buf = np.frombuffer(m, dtype=np.uint8)
        try:
            return resident_pages(buf.ctypes.data, buf.size)
        finally:
            del buf


def _sequential_read(path: Path, ranges: list[tuple[int, int]]) -> float:
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    t = time.perf_counter()
    try:
        for a, b in ranges:
            pos = a
            while pos < b:
                n = os.preadv(fd, [view[: min(len(buf), b - pos)]], pos)
                if n <= 0:
                    break
                pos += n
    finally:
        os.close(fd)
    return time.perf_counter() - t


def _files(lv) -> list:
    """The layer's on-disk sources: its codes, and its screen rows when it has some."""
    return [s for s in (lv.source, lv.screen_source) if s is not None]


def cold_start(index: str | Path, *, data: str, split: str = "test", query: int = 0,
               layer: str | None = None, top_k: int | None = None, search: str = "patchmatch",
               iterations: int | None = None, init: str | None = None, threads: int | None = None,
               ignore_index: int | None = None) -> dict:
    """Measure the first query on a cold store (see the module doc); returns the figures."""
    from ..api import CompNN
    from ..data import open_like
    from ..options import DEFAULTS, QueryOptions

    iterations = DEFAULTS.iterations if iterations is None else iterations
    init = init or DEFAULTS.init
    cnn = CompNN.load(index, threads=threads)
    layer = cnn.check_layer(layer)
    trained = cnn.store.manifest.get("dataset", {})
    ds = open_like(data, trained, task=cnn.task, split=split, limit=query + 1, ignore_index=ignore_index)
    feats = cnn.extract(ds[query].input, [layer])
    paths = [Path(s.path) for s in _files(cnn.layer(layer))]
    opts = QueryOptions(search=search, top_k=top_k, iterations=iterations, init=init)
    for path in paths:
        _evict(path)
    before = [sum(v) for v in zip(*(_resident(p) for p in paths))]
    # A page mapped by any process survives the eviction: say so rather than time a warm query.
    # The files' headers, mapped by this process's open store, stay (a few pages).
    warm_pages = before[0] > max(256, 0.01 * before[1])
    not_cold = (f"{before[0]} of {before[1]} pages of {', '.join(p.name for p in paths)} stayed in the page "
                f"cache after the eviction (mapped by another process?)") if warm_pages else None
    t = time.perf_counter()
    res = cnn.explain(feats, layer=layer, options=opts, sources=())
    seconds = time.perf_counter() - t
    lv = cnn.layer(layer)
    runs = lv.runs(lv.check_images(res.shortlist))
    reads = [(Path(s.path), [(s.offset + a * s.row_bytes, s.offset + b * s.row_bytes) for a, b in runs])
             for s in _files(lv)]
    touched = sum(b - a for _, ranges in reads for a, b in ranges)
    after = [sum(v) for v in zip(*(_resident(p) for p in paths))]
    codec = lv.codec
    del lv, res, cnn
    gc.collect()
    for path in paths:
        _evict(path)
    cold_again = [sum(v) for v in zip(*(_resident(p) for p in paths))]
    read_s = sum(_sequential_read(path, ranges) for path, ranges in reads)
    return {"index": os.fspath(index), "codec": codec, "layer": layer, "search": search,
            "top_k": top_k, "iterations": iterations, "init": init, "files": [os.fspath(p) for p in paths],
            "resident_pages_before": before[0], "file_pages": before[1],
            "resident_pages_after_query": after[0], "resident_pages_before_read": cold_again[0],
            "query_seconds": seconds, "touched_bytes": touched, "sequential_read_seconds": read_s,
            "sequential_read_MBps": touched / read_s / 1e6 if read_s > 0 else None,
            "ratio": seconds / read_s if read_s > 0 else None, "not_cold": not_cold}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("index")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--query", type=int, default=0)
    p.add_argument("--layer", default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--search", default="patchmatch", choices=["patchmatch", "exact"])
    p.add_argument("--iterations", type=int, default=None, help="default: QueryOptions'")
    p.add_argument("--init", default=None, help="default: QueryOptions'")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ignore-index", type=int, default=None, help="default: the store's")
    a = p.parse_args(argv)
    print(json.dumps(cold_start(a.index, data=a.data, split=a.split, query=a.query, layer=a.layer,
                                top_k=a.top_k, search=a.search, iterations=a.iterations, init=a.init,
                                threads=a.threads, ignore_index=a.ignore_index)))


if __name__ == "__main__":
    main()
