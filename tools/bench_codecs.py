"""HyperPatch-Match per codec against the fp32 exact field: time, similarity ratio, fidelity.

The first store is the fp32 reference (its exact field per query is computed once and cached in
``--exact-cache``, as ``compnn compare`` does); every store (fp32, fp16, sq8 of the same model)
is then searched with every HyperPatch-Match setting in the grid (iterations × kernel lockstep
rows × prefetch bytes). Speed-up is against the fp32 exact search time of the same query.

    python tools/bench_codecs.py /work/stores/codecs/seg_fp32,/work/stores/codecs/seg_fp16 \\
        --limit 5 --top-k 16 --iterations 8,16,32 --interleave 1,8 --prefetch 0,256
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


from compnn_index.cli import _int_list, _str_list
from benchutil import open_stores
from compnn_index.jobs.compare import _exact, _fidelity
from compnn_index.options import QueryOptions
from compnn_index.search import _hpm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stores", type=_str_list)
    p.add_argument("--data", default="../shared/data/facades")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=5)
    p.add_argument("--layer", default="decoder2")
    p.add_argument("--top-k", type=int, default=16)
    p.add_argument("--iterations", type=_int_list, default=[16, 32])
    p.add_argument("--samples", type=_int_list, default=[8])
    p.add_argument("--jumps", type=int, default=4)
    p.add_argument("--init", default="staged")
    p.add_argument("--kernel", type=_str_list, default=["1:0"],
                   help="ROWS:BYTES pairs: rows scanned in lockstep, bytes prefetched per candidate")
    p.add_argument("--tol", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--exact-cache", default="/work/stores/codecs/exact-cache")
    p.add_argument("--exact-codecs", action="store_true", help="also run exact search on the other stores")
    p.add_argument("--repeat", type=int, default=1, help="runs per setting (best time kept)")
    a = p.parse_args()

    cnns, ds = open_stores(a.stores, data=a.data, split=a.split, limit=a.limit, threads=a.threads)
    ref = cnns[0]
    seg = ref.task == "segment"
    rows: dict[tuple, dict[str, list]] = {}
    exact_fid, exact_s = [], []
    for i in range(len(ds)):
        s = ds[i]
        feats = ref.extract(s.input, [a.layer])
        ex, ex_s = _exact(ref, feats, a.layer, a.top_k, Path(a.exact_cache), f"{i}-{s.name}", s.input.shape[1:])
        exact_fid.append(_fidelity(ex.reconstructions["target"], feats.output, seg))
        exact_s.append(ex_s)
        lv = ref.layer(a.layer)
        flop = 2.0 * feats.hyperpatches[a.layer].shape[0] * feats.hyperpatches[a.layer].shape[1] * \
            lv.positions(ex.shortlist) * lv.dim
        rows.setdefault(("fp32", "exact", "", "", ""), {"s": [], "ratio": [], "fid": [], "ex_s": [], "gflops": []})
        m = rows[("fp32", "exact", "", "", "")]
        m["s"].append(ex_s), m["ex_s"].append(ex_s), m["ratio"].append(1.0), m["fid"].append(exact_fid[-1])
        m["gflops"].append(flop / ex_s / 1e9)
        for c in cnns[1:] if a.exact_codecs else []:
            r = c.explain(feats, layer=a.layer, top_k=a.top_k, sources=("target",))
            m = rows.setdefault((c.layer(a.layer).codec, "exact", "", "", ""),
                                {"s": [], "ratio": [], "fid": [], "ex_s": [], "gflops": []})
            m["s"].append(r.timings["search"]), m["ex_s"].append(ex_s)
            m["ratio"].append(float(np.mean(r.field.similarity / np.maximum(ex.field.similarity, 1e-6))))
            m["fid"].append(_fidelity(r.reconstructions["target"], feats.output, seg))
            m["gflops"].append(flop / r.timings["search"] / 1e9)
        for c in cnns:
            codec = c.layer(a.layer).codec
            for it in a.iterations:
                for sm in a.samples:
                    for il, pf in (tuple(int(v) for v in kp.split(":")) for kp in a.kernel):
                        if True:
                            _hpm.set_interleave(il)
                            _hpm.set_prefetch(pf)
                            opts = QueryOptions(search="patchmatch", top_k=a.top_k, iterations=it, samples=sm,
                                                jumps=a.jumps, init=a.init)
                            best = np.inf
                            for _ in range(a.repeat):
                                t = time.perf_counter()
                                r = c.explain(feats, layer=a.layer, options=opts, sources=("target",))
                                best = min(best, time.perf_counter() - t - r.timings["compose"])
                            key = (codec, it, sm, il, pf)
                            m = rows.setdefault(key, {"s": [], "ratio": [], "fid": [], "ex_s": []})
                            m["s"].append(r.timings["search"] if a.repeat == 1 else best)
                            m["ex_s"].append(ex_s)
                            m["ratio"].append(float(np.mean(r.field.similarity / np.maximum(ex.field.similarity, 1e-6))))
                            m["fid"].append(_fidelity(r.reconstructions["target"], feats.output, seg))
        print(f"query {i} ({s.name}): fp32 exact {ex_s:.2f} s, fidelity {exact_fid[-1]:.4f}", flush=True)
    ef = float(np.mean(exact_fid))
    print(f"\nfp32 exact: {np.mean(exact_s):.2f} s/query, fidelity {ef:.4f} ({len(ds)} queries, top-{a.top_k})")
    print("| codec | iterations | samples | lockstep rows | prefetch B | s/query | speed-up | sim. ratio | fidelity | Δ fidelity |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (codec, it, sm, il, pf), m in rows.items():
        spq = float(np.mean(m["s"]))
        extra = f" ({np.mean(m['gflops']):.0f} GFLOP/s)" if "gflops" in m else ""
        print(f"| {codec}{extra} | {it} | {sm} | {il} | {pf} | {spq:.3f} | {np.mean(m['ex_s']) / spq:.1f} | "
              f"{np.mean(m['ratio']):.5f} | {np.mean(m['fid']):.4f} | {np.mean(m['fid']) - ef:+.4f} |", flush=True)


if __name__ == "__main__":
    main()
