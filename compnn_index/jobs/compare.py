"""``compnn compare``: what the approximation costs — exact search vs HyperPatch-Match vs FAISS ANN.

For each query image and top-k, exact search runs once; every approximate setting is measured
against it on the same query hyperpatches and the same shortlist:

- ``seconds_per_query`` and ``speedup`` (exact time / this time),
- ``recall_at_1``: same (image, y, x) as exact,
- ``similarity_ratio``: mean of (approximate similarity / exact similarity),
- ``agreement``: label-transfer pixel agreement with exact's reconstruction (segmentation) or
  mean absolute difference of output reconstructions (translation),
- ``fidelity``: the reconstruction's agreement with the CNN's own output — label-transfer pixel
  accuracy (segmentation) or PSNR (translation). This is the gate: does the approximate answer
  explain the network as well as the exact one?
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from ..errors import QueryError
from ..metrics import psnr, recall_at_1
from ..options import DEFAULTS, INITS, QueryOptions
from ..search import NNField
from ..search.ann import DEFAULT_BASELINES, ann_fields


def _agreement(a: np.ndarray, b: np.ndarray, seg: bool) -> float:
    return float((a == b).mean()) if seg else float(np.abs(a - b).mean())


def _fidelity(recon: np.ndarray, cnn_out: np.ndarray, seg: bool) -> float:
    return float((recon == cnn_out).mean()) if seg else float(psnr(recon, cnn_out))


def compare(
    index: str | Path, *, data: str, split: str = "test", direction: str | None = None,
    size: int | None = None, limit: int | None = 5, seed: int = 0, layer: str | None = None,
    top_k: Sequence[int] | None = None, iterations: Sequence[int] = (2, 4, 8, 16, 32),
    init: Sequence[str] = ("random",), baselines: Sequence[str] = ("hnsw", "ivf"),
    samples: int = DEFAULTS.samples, jumps: int = DEFAULTS.jumps, threads: int | None = None, out: str | Path,
    progress: bool = True,
    cnn=None, max_baseline_vectors: int = 2_000_000, cluster: str | None = None,
) -> dict:
    """Run the comparison and write ``comparison.json``, ``comparison.md`` and ``comparison.png``."""

    from ..api import CompNN
    from ..data import open_dataset

    cnn = cnn or CompNN.load(index, threads=threads, cluster=cluster)
    layer = cnn.check_layer(layer)
    trained = cnn.store.manifest.get("dataset", {})
    seg = cnn.task == "segment"
    # default: 16, or every database image when fewer (as for a query)
    top_k = [QueryOptions().resolve_top_k(cnn.num_images)] if top_k is None else [int(k) for k in top_k]
    if not top_k:
        raise QueryError("Expected at least one --top-k value, got none")
    for k in top_k:
        if not 1 <= int(k) <= cnn.num_images:
            raise QueryError(f"Expected 1 <= --top-k <= {cnn.num_images}, but got {k}")
    for name, given, known in (("--init", init, INITS), ("--baselines", baselines, tuple(DEFAULT_BASELINES))):
        bad = [v for v in given if v not in known]
        if bad:
            raise QueryError(f"Unknown {name} value {bad[0]!r}; expected any of {', '.join(known)}")
    pm_options = [QueryOptions(search="patchmatch", iterations=int(it), samples=samples, jumps=jumps,
                               seed=seed, init=mode) for mode in init for it in iterations]
    ds = open_dataset(data, split=split, direction=direction or trained.get("direction", "AtoB"),
                      task=cnn.task, size=size or trained.get("size"), limit=limit, seed=seed)
    lv = cnn.layer(layer)

    exact_stats = defaultdict(list)
    acc: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for i in tqdm(range(len(ds)), desc="compare", unit="img", disable=not progress):
        s = ds[i]
        levels = cnn.pyramid(layer) if "coarse" in init else [layer]
        with cnn.thread_limits(threads):
            feats = cnn.extract(s.input, levels)
            q = feats.hyperpatches[layer]
            cnn_out = feats.output
            for k in top_k:
                ex = cnn.explain(feats, layer=layer, top_k=int(k), sources=("target",))
                ex_s = ex.timings["search"]
                n_db = lv.positions(ex.shortlist)
                ex_rec = ex.reconstructions["target"]
                exact_stats[k].append({"seconds": ex_s, "fidelity": _fidelity(ex_rec, cnn_out, seg),
                                       "gflops": 2.0 * q.shape[0] * q.shape[1] * n_db * q.shape[2] / ex_s / 1e9})

                def record(method: str, params: dict, f: NNField, secs: float, r: np.ndarray,
                           extra: dict | None = None):
                    key = (method, json.dumps(params, sort_keys=True), int(k))
                    m = acc[key]
                    m["seconds"].append(secs)
                    m["exact_seconds"].append(ex_s)
                    m["recall_at_1"].append(float(recall_at_1(f, ex.field)))
                    m["similarity_ratio"].append(float(np.mean(f.similarity / np.maximum(ex.field.similarity, 1e-6))))
                    m["agreement"].append(_agreement(r, ex_rec, seg))
                    m["fidelity"].append(_fidelity(r, cnn_out, seg))
                    for key2, v in (extra or {}).items():
                        m[key2].append(v)

                for opts in pm_options:
                    r = cnn.explain(feats, layer=layer, options=opts, top_k=int(k), sources=("target",))
                    record("patchmatch", {"iterations": opts.iterations, "init": opts.init,
                                          "samples": samples, "jumps": jumps},
                           r.field, r.timings["search"], r.reconstructions["target"])
                if n_db <= max_baseline_vectors:
                    for kind in baselines:
                        for build_params, search_params in DEFAULT_BASELINES[kind]:
                            b_s, results = ann_fields(kind, build_params, search_params, q, lv, ex.shortlist)
                            for params, f, s_s in results:
                                rec = cnn.compose(f, lv.spec, "target", s.input.shape[1:])
                                record(kind, params, f, s_s, rec, {"build_seconds": b_s})

    exact = {}
    for k, items in exact_stats.items():
        exact[str(k)] = {key: float(np.mean([it[key] for it in items])) for key in ("fidelity", "gflops")}
        exact[str(k)]["seconds_per_query"] = float(np.mean([it["seconds"] for it in items]))
    settings = []
    for (method, params, k), m in acc.items():
        spq = float(np.mean(m["seconds"]))
        row = {"method": method, "params": json.loads(params), "top_k": k, "seconds_per_query": spq,
               "speedup": float(np.mean(m["exact_seconds"]) / spq) if spq > 0 else float("inf")}
        for key in ("recall_at_1", "similarity_ratio", "agreement", "fidelity", "build_seconds"):
            if key in m:
                row[key] = float(np.mean(m[key]))
        row["fidelity_delta"] = row["fidelity"] - exact[str(k)]["fidelity"]
        settings.append(row)
    first = exact[str(top_k[0])]
    doc = {"index": str(index), "layer": layer, "task": cnn.task, "queries": len(ds),
           "exact": {**first, "by_top_k": exact}, "settings": settings}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "comparison.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out / "comparison.json")
    md = _markdown(doc)
    (out / "comparison.md").write_text(md)
    _plot(doc, out / "comparison.png")
    if progress:
        print(md)
        print(f"wrote {out / 'comparison.json'}")
    return doc


def _markdown(doc: dict) -> str:
    fid = "label-transfer pixel accuracy vs CNN" if doc["task"] == "segment" else "PSNR vs CNN"
    lines = [f"# Exact vs approximate search: layer {doc['layer']}, {doc['queries']} queries",
             "", f"fidelity = {fid}", "",
             "s/query is search time; FAISS ANN indexes also need the build time shown (a copy of the "
             "shortlist's vectors, per query), which exact search and HyperPatch-Match do not.", "",
             "| method | top_k | params | s/query | speed-up | recall@1 | sim. ratio | agreement | fidelity | Δ fidelity vs exact | ANN build s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, e in doc["exact"]["by_top_k"].items():
        lines.append(f"| exact | {k} | {e['gflops']:.0f} GFLOP/s | {e['seconds_per_query']:.3f} | 1.0 | 1 | 1 | 1 | "
                     f"{e['fidelity']:.4f} | 0 | |")
    for r in doc["settings"]:
        p = ", ".join(f"{a}={b}" for a, b in r["params"].items())
        lines.append(f"| {r['method']} | {r['top_k']} | {p} | {r['seconds_per_query']:.3f} | {r['speedup']:.1f} | "
                     f"{r['recall_at_1']:.3f} | {r['similarity_ratio']:.4f} | {r['agreement']:.4f} | "
                     f"{r['fidelity']:.4f} | {r['fidelity_delta']:+.4f} | "
                     + (f"{r['build_seconds']:.1f} |" if "build_seconds" in r else " |"))
    return "\n".join(lines) + "\n"


def _plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    groups = defaultdict(list)
    for r in doc["settings"]:
        label = r["method"] + (f" ({r['params'].get('init')})" if r["method"] == "patchmatch" else "")
        groups[(label, r["top_k"])].append((r["seconds_per_query"], r["fidelity"]))
    for (label, k), pts in groups.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{label}, top-{k}")
    for k, e in doc["exact"]["by_top_k"].items():
        ax.scatter([e["seconds_per_query"]], [e["fidelity"]], marker="*", s=150, zorder=5, label=f"exact, top-{k}")
    ax.set_xscale("log")
    ax.set_xlabel("seconds per query (log; ANN index build time excluded)")
    ax.set_ylabel("fidelity (" + ("pixel acc. vs CNN" if doc["task"] == "segment" else "PSNR vs CNN") + ")")
    ax.set_title(f"Quality vs time, layer {doc['layer']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
