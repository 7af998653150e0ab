"""HyperPatch-Match against exact search on a real store: the figures of issue 10's targets.

For every query image of ``--data`` (``--queries`` of them) and the shortlist of ``--top-k``
images (``--restrict N``: among the first N database images only, i.e. an N-image store), the
exact field is computed once and cached in ``--exact-cache`` (``--ref-method``, default ``auto``:
the fastest exact method the store supports — bounded, whose ids equal FAISS's (tools/bench_exact.py
--store) — or fused / faiss); the FAISS fp32 exact time, the denominator of every speed-up, comes
from the cache of a FAISS run or is measured on the first ``--faiss-queries`` queries. Then
every store (fp32 first; fp16 / sq8 stores of the same model) runs every setting of ``--grid``
(``init:iterations:samples:jumps[:polish]``, polish a residual scale or ``off``, the default),
best of ``--repeat`` runs, and the table gives s/query, speed-up vs FAISS exact, recall@1 (the
exact match's id, ties counted), similarity ratio and fidelity (label-transfer pixel accuracy vs
the CNN) minus exact's. ``--baselines hnsw,ivf`` adds FAISS HNSW / IVF-Flat rows over the same
shortlists (their per-query build time apart, as ``compnn compare`` reports it).
``--exact-codecs`` also times exact search on the other stores.

    python tools/bench_hpm.py /work/stores/seg_fp32,/work/stores/seg_fp16 --queries 5 --top-k 16 \\
        --grid screen:8:8:32,staged:32:8:4 --exact-cache /work/stores/exact-cache --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np


from benchutil import open_stores
from compnn_index.jobs.compare import _fidelity
from compnn_index.metrics import recall_at_1
from compnn_index.options import EXACT_METHODS, QueryOptions
from compnn_index.search import NNField
from compnn_index.search.ann import DEFAULT_BASELINES, ann_fields


def _reference(cnn, feats, name, *, layer, top_k, restrict, cache: Path, method: str, size):
    """The cached exact field of one query (computed with ``method`` when missing)."""
    tag = f"{cnn.store.manifest['model']['hash'][:12]}-{cnn.num_images}"
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    file = cache / f"{safe}-{layer}-top{top_k}-{tag}{f'-first{restrict}' if restrict else ''}.npz"
    if not file.is_file():
        opts = QueryOptions(exact_method=method)
        res = cnn.explain(feats, layer=layer, top_k=top_k, sources=(), options=opts,
                          restrict=list(range(restrict)) if restrict else None)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp.npz")
        np.savez(tmp, image=res.field.image, y=res.field.y, x=res.field.x, similarity=res.field.similarity,
                 shortlist=res.shortlist, seconds=res.timings["search"],
                 method=res.params.get("exact_method", method))
        os.replace(tmp, file)
    z = np.load(file)
    method = str(z["method"]) if "method" in z.files else "faiss"
    return NNField(z["image"], z["y"], z["x"], z["similarity"]), z["shortlist"], float(z["seconds"]), method


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stores", type=lambda s: s.split(","))
    p.add_argument("--data", default="../shared/data/facades")
    p.add_argument("--split", default="test")
    p.add_argument("--queries", type=int, default=5)
    p.add_argument("--layer", default="decoder2")
    p.add_argument("--top-k", type=int, default=16)
    p.add_argument("--restrict", type=int, default=None, help="search only the first N database images")
    p.add_argument("--grid", type=lambda s: [g for g in s.split(",") if g], default=["screen:12:8:48", "staged:32:8:4"])
    p.add_argument("--exact-cache", type=Path, required=True)
    p.add_argument("--ref-method", default="auto", choices=list(EXACT_METHODS),
                   help="how the cached exact reference fields are computed (auto: the fastest exact method)")
    p.add_argument("--faiss-seconds", type=float, default=None,
                   help="FAISS fp32 exact s/query measured elsewhere (else: from FAISS-cached queries)")
    p.add_argument("--exact-codecs", action="store_true")
    p.add_argument("--baselines", type=lambda s: [b for b in s.split(",") if b], default=[],
                   help="FAISS ANN baselines over the same shortlists: hnsw, ivf (compnn compare's settings)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()

    cnns, ds = open_stores(a.stores, data=a.data, split=a.split, limit=a.queries, threads=a.threads)
    ref = cnns[0]
    seg = ref.task == "segment"
    restrict = list(range(a.restrict)) if a.restrict else None
    rows: dict[tuple, dict[str, list]] = {}
    faiss_s, exact_fid, methods = [], [], set()
    for i in range(len(ds)):
        s = ds[i]
        feats = ref.extract(s.input, [a.layer])
        field, shortlist, ex_s, method = _reference(
            ref, feats, f"{i}-{s.name}", layer=a.layer, top_k=a.top_k, restrict=a.restrict,
            cache=a.exact_cache, method=a.ref_method, size=s.input.shape[1:])
        methods.add(method)
        if method == "faiss":
            faiss_s.append(ex_s)
        rec = ref.compose(field, ref.store.spec(a.layer), "target", s.input.shape[1:])
        exact_fid.append(_fidelity(rec, feats.output, seg))
        for c in cnns:
            codec = c.layer(a.layer).codec
            runs = [("exact", None)] if (a.exact_codecs and c is not ref) else []
            runs += [("hpm", g) for g in a.grid]
            for kind, g in runs:
                if kind == "exact":
                    opts = QueryOptions()
                else:
                    init, it, sm, jm, *pol = g.split(":")
                    polish = None if not pol or pol[0] == "off" else float(pol[0])
                    opts = QueryOptions(search="patchmatch", init=init, iterations=int(it), samples=int(sm),
                                        jumps=int(jm), polish=polish)
                best = np.inf
                for _ in range(a.repeat if kind == "hpm" else 1):
                    r = c.explain(feats, layer=a.layer, top_k=a.top_k, options=opts, sources=("target",),
                                  restrict=restrict)
                    best = min(best, r.timings["search"])
                assert np.array_equal(np.sort(r.shortlist), np.sort(shortlist))
                m = rows.setdefault((codec, kind, g or ""), {"s": [], "ratio": [], "dfid": [], "fid": [],
                                                             "recall": [], "build": []})
                fid = _fidelity(r.reconstructions["target"], feats.output, seg)
                m["recall"].append(recall_at_1(r.field, field))
                m["s"].append(best)
                m["ratio"].append(float(np.mean(r.field.similarity / np.maximum(field.similarity, 1e-6))))
                m["fid"].append(fid)
                m["dfid"].append(fid - exact_fid[-1])
                print(f"q{i} {codec} {kind} {g or ''}: {best:.3f} s, recall {m['recall'][-1]:.3f}, ratio "
                      f"{m['ratio'][-1]:.5f}, Δfid {m['dfid'][-1]:+.4f} {r.params.get('start', '')} "
                      f"{r.params.get('polish') or ''}", flush=True)
        for kind in a.baselines:  # FAISS ANN over the reference store's shortlist (a copy, a build)
            lv = ref.layer(a.layer)
            for build_params, search_params in DEFAULT_BASELINES[kind]:
                build_s, results = ann_fields(kind, build_params, search_params, feats.hyperpatches[a.layer],
                                              lv, np.sort(shortlist))
                for params, f, search_s in results:
                    g = ", ".join(f"{k}={v}" for k, v in params.items())
                    rec = ref.compose(f, ref.store.spec(a.layer), "target", s.input.shape[1:])
                    fid = _fidelity(rec, feats.output, seg)
                    m = rows.setdefault((lv.codec, kind, g), {"s": [], "ratio": [], "dfid": [], "fid": [],
                                                              "recall": [], "build": []})
                    m["s"].append(search_s)
                    m["build"].append(build_s)
                    m["recall"].append(recall_at_1(f, field))
                    m["ratio"].append(float(np.mean(f.similarity / np.maximum(field.similarity, 1e-6))))
                    m["fid"].append(fid)
                    m["dfid"].append(fid - exact_fid[-1])
                    print(f"q{i} {kind} {g}: {search_s:.3f} s (+ build {build_s:.1f} s), recall "
                          f"{m['recall'][-1]:.3f}, Δfid {m['dfid'][-1]:+.4f}", flush=True)
    fs = a.faiss_seconds or (float(np.mean(faiss_s)) if faiss_s else float("nan"))
    print(f"\nreference: exact ({'/'.join(sorted(methods))}), fidelity {np.mean(exact_fid):.4f}; FAISS fp32 "
          f"exact {fs:.2f} s/query ({len(faiss_s)} measured); {len(ds)} queries, top-{a.top_k}"
          + (f" of the first {a.restrict} images" if a.restrict else ""))
    print("| store codec | search | setting | s/query | speed-up vs FAISS exact | recall@1 (min) | "
          "sim. ratio (min) | fidelity | Δ fidelity (min) | ANN build s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    out = []
    for (codec, kind, g), m in rows.items():
        spq = float(np.mean(m["s"]))
        row = {"codec": codec, "search": kind, "setting": g, "seconds_per_query": spq, "speedup": fs / spq,
               "similarity_ratio": float(np.mean(m["ratio"])), "similarity_ratio_min": float(np.min(m["ratio"])),
               "fidelity": float(np.mean(m["fid"])), "fidelity_delta": float(np.mean(m["dfid"])),
               "fidelity_delta_min": float(np.min(m["dfid"])), "queries": len(m["s"]),
               "recall_at_1": float(np.mean(m["recall"])), "recall_at_1_min": float(np.min(m["recall"])),
               "build_seconds": float(np.mean(m["build"])) if m["build"] else None}
        out.append(row)
        build = f"{row['build_seconds']:.1f}" if m["build"] else ""
        print(f"| {codec} | {kind} | {g} | {spq:.3f} | {fs / spq:.1f} | {row['recall_at_1']:.3f} "
              f"({row['recall_at_1_min']:.3f}) | {row['similarity_ratio']:.5f} "
              f"({row['similarity_ratio_min']:.4f}) | {row['fidelity']:.4f} | {row['fidelity_delta']:+.4f} "
              f"({row['fidelity_delta_min']:+.4f}) | {build} |", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"faiss_seconds": fs, "exact_fidelity": float(np.mean(exact_fid)),
                                      "reference": sorted(methods), "top_k": a.top_k, "restrict": a.restrict,
                                      "queries": len(ds), "rows": out}, indent=1))


if __name__ == "__main__":
    main()
