"""Exact search vs HyperPatch-Match vs FAISS ANN on a dataset split, with memory figures.

Runs :func:`compnn_index.compare.compare` (the same as ``compnn compare``) and also prints the
peak resident set size during the run next to the index store's size: the layer indexes are
memory-mapped, so touched index pages count in RSS, and a peak within "index size + 1 GB" shows
that querying made no copy of the index.

Example (issue targets: Facades test images, 256x256, ngf-64 photo->labels U-Net, decoder2)::

    python tools/compare_search.py INDEX --data ../shared/data/facades --split test --limit 5 \\
        --top-k 16 --iterations 2,4,8 --init coarse,random --out runs/compare16
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import psutil
from benchutil import RssSampler, dir_bytes

from compnn_index.cli import _int_list, _str_list
from compnn_index.jobs.compare import compare
from compnn_index.options import DEFAULTS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("index")
    p.add_argument("--data", default="../shared/data/facades")
    p.add_argument("--split", default="test")
    p.add_argument("--direction", default=None)
    p.add_argument("--limit", type=int, default=5)
    p.add_argument("--layer", default="decoder2")
    p.add_argument("--top-k", type=_int_list, default=[16])
    p.add_argument("--iterations", type=_int_list, default=[2, 4, 8, 12, 16, 32])
    p.add_argument("--init", type=_str_list, default=[DEFAULTS.init])
    p.add_argument("--samples", type=int, default=DEFAULTS.samples)
    p.add_argument("--jumps", type=int, default=DEFAULTS.jumps)
    p.add_argument("--baselines", type=_str_list, default=["hnsw", "ivf"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--stores", type=_str_list, default=[],
                   help="more stores of the same model (other codecs), measured against INDEX's fp32 exact field")
    p.add_argument("--exact-cache", default=None, help="folder caching the fp32 exact field per query")
    p.add_argument("--cold", action="store_true", help="also measure each store's cold first query")
    p.add_argument("--no-codec-exact", action="store_true", help="skip exact search on the --stores")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    with RssSampler() as sampler:
        doc = compare(a.index, data=a.data, split=a.split, direction=a.direction, limit=a.limit,
                      layer=a.layer, top_k=a.top_k, iterations=a.iterations, init=a.init,
                      samples=a.samples, jumps=a.jumps, baselines=a.baselines, threads=a.threads, out=a.out,
                      stores=a.stores, exact_cache=a.exact_cache, cold=a.cold, codec_exact=not a.no_codec_exact)
    size = dir_bytes(Path(a.index))
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"wall time       {time.perf_counter() - t0:.1f} s for {doc['queries']} queries")
    print(f"index size      {size / 2**30:.2f} GiB on disk ({a.index})")
    print(f"peak RSS        {sampler.peak / 2**30:.2f} GiB sampled, ru_maxrss {maxrss / 2**30:.2f} GiB "
          f"(before {rss0 / 2**30:.2f} GiB); index size + 1 GiB = {(size + 2**30) / 2**30:.2f} GiB")
    print(f"peak anon RSS   {sampler.peak_anon / 2**30:.2f} GiB (RSS less file-backed pages: the "
          f"memory-mapped index pages that searches touched are the rest)")
    for k, e in doc["exact"]["by_top_k"].items():
        for r in doc["settings"]:
            if r["top_k"] == int(k) and r["method"] == "exact":
                print(f"top-{k} exact on {r['codec']}: {r['seconds_per_query']:.3f} s, {r.get('gflops', 0):.0f} GFLOP/s "
                      f"(fp32 {e['gflops']:.0f}), sim. ratio {r['similarity_ratio']:.5f}, fidelity {r['fidelity']:.4f} "
                      f"(fp32 {e['fidelity']:.4f})")
        best = [r for r in doc["settings"] if r["top_k"] == int(k) and r["method"] == "patchmatch"]
        for r in best:
            ok = (r["speedup"] >= 60 and abs(r["fidelity_delta"]) <= 0.01 and r["similarity_ratio"] >= 0.98)
            print(f"top-{k} {r.get('codec', '')} patchmatch {r['params']}: {r['seconds_per_query']:.3f} s, speed-up {r['speedup']:.1f}x, "
                  f"fidelity {r['fidelity']:.4f} (exact {e['fidelity']:.4f}), sim. ratio {r['similarity_ratio']:.4f}"
                  f"{'  <- meets the top-16 targets' if ok else ''}")


if __name__ == "__main__":
    main()
