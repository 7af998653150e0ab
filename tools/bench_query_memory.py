"""Peak memory of whole-set queries: does querying copy the index?

Opens an index store (layer indexes memory-mapped), runs ``--queries`` HyperPatch-Match (and
optionally exact) queries against ``--top-k`` database images, and prints the peak resident set
size split into file-backed pages (the mapped index, shared with the page cache) and anonymous
memory (where any copy would appear), next to the index size.

    python tools/bench_query_memory.py INDEX --data ../shared/data/facades --top-k 400 --queries 3
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import psutil
from benchutil import RssSampler, dir_bytes

from compnn_index.api import CompNN
from compnn_index.data import open_like


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("index")
    p.add_argument("--data", default="../shared/data/facades")
    p.add_argument("--split", default="test")
    p.add_argument("--layer", default="decoder2")
    p.add_argument("--top-k", type=int, default=None, help="default: every database image")
    p.add_argument("--queries", type=int, default=3)
    p.add_argument("--search", default="patchmatch", choices=["patchmatch", "exact"])
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()

    proc = psutil.Process()
    cnn = CompNN.load(a.index, threads=a.threads)
    man = cnn.store.manifest["dataset"]
    ds = open_like(a.data, man, task=cnn.task, split=a.split, limit=a.queries)
    top_k = a.top_k or cnn.num_images
    before = proc.memory_info()
    times = []
    with RssSampler(interval=0.05) as sampler:
        for i in range(len(ds)):
            t = time.perf_counter()
            res = cnn.query(ds[i].input, layer=a.layer, search=a.search, top_k=top_k, sources=("target",))
            times.append(time.perf_counter() - t)
            print(f"query {i}: {times[-1]:.2f} s (search {res.timings['search']:.2f} s)")
    size = dir_bytes(Path(a.index))
    layer_bytes = cnn.layer(a.layer).raw.nbytes  # the codes, whatever the codec
    print(f"index store     {size / 2**30:.2f} GiB ({a.layer}: {layer_bytes / 2**30:.2f} GiB of vectors)")
    print(f"RSS before      {before.rss / 2**30:.2f} GiB (anon {(before.rss - before.shared) / 2**30:.2f} GiB)")
    print(f"peak RSS        {sampler.peak / 2**30:.2f} GiB; index size + 1 GiB = {(size + 2**30) / 2**30:.2f} GiB")
    print(f"peak anon RSS   {sampler.peak_anon / 2**30:.2f} GiB (a copy of the {a.layer} vectors would add "
          f"{layer_bytes / 2**30:.2f} GiB here)")


if __name__ == "__main__":
    main()
