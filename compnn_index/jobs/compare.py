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

Codecs. ``stores`` names further stores of the same model and images with other layer codecs
(``compnn compress``): each is searched exactly and by every HyperPatch-Match setting on the same
queries and shortlists, and measured against the *fp32* exact field of ``index``. Per codec the
report gives the store's bytes, exact search's s/query and GFLOP/s, and (``cold=True``) the cold
first query against a sequential read of the bytes it touched (:mod:`.coldstart`, in a fresh
process, before this process maps any store). ``exact_cache`` keeps the fp32 exact field of
every (query image, layer, top-k) on disk, so repeated whole-set comparisons (10 minutes of exact
search per query here) compute it once.
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
    size: int | None = None, limit: int | None = 5, seed: int = 0, sample: str = "first",
    data_args: dict | None = None, ignore_index: int | None = None, layer: str | None = None,
    top_k: Sequence[int] | None = None, iterations: Sequence[int] = (2, 4, 8, 16, 32),
    init: Sequence[str] = ("random",), baselines: Sequence[str] = ("hnsw", "ivf"),
    samples: int = DEFAULTS.samples, jumps: int = DEFAULTS.jumps, threads: int | None = None, out: str | Path,
    progress: bool = True,
    cnn=None, max_baseline_vectors: int = 2_000_000,
    stores: Sequence[str | Path] = (), exact_cache: str | Path | None = None, cold: bool = False,
    codec_exact: bool = True, cluster: str | None = None, exact_method: str = DEFAULTS.exact_method,
) -> dict:
    """Run the comparison and write ``comparison.json``, ``comparison.md`` and ``comparison.png``.

    ``exact_method``: how the exact reference field is computed (every speed-up is against its
    time; ``faiss`` for speed-ups against FAISS); the other native exact methods the store supports
    are measured beside it as ``exact_bounded`` / ``exact_fused`` rows.
    ``stores``: more stores (other codecs) compared against ``index``'s fp32 exact field;
    ``exact_cache``: folder caching that field per query; ``cold``: measure each store's cold
    first query first; ``codec_exact``: also time exact search on every store of ``stores``.
    """

    from ..api import CompNN
    from ..data import open_like

    cold_rows = [_cold(p, data=data, split=split, layer=layer, top_k=(top_k or [None])[0],
                       iterations=max(iterations), init=init[0], threads=threads, ignore_index=ignore_index)
                 for p in ([index, *stores] if cold else [])]
    cnn = cnn or CompNN.load(index, threads=threads, cluster=cluster)
    others = [CompNN.load(p, model=cnn.model, threads=threads) for p in stores]
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
    QueryOptions(exact_method=exact_method)  # refuses an unknown method before any work
    pm_options = [QueryOptions(search="patchmatch", iterations=int(it), samples=samples, jumps=jumps,
                               seed=seed, init=mode) for mode in init for it in iterations]
    ds = open_like(data, trained, task=cnn.task, split=split, direction=direction, size=size, limit=limit,
                   seed=seed, sample=sample, data_args=data_args, ignore_index=ignore_index)
    lv = cnn.layer(layer)
    exact_stats = defaultdict(list)
    codec_stats: dict[tuple[str, int], list] = defaultdict(list)
    cache = Path(exact_cache) if exact_cache else None
    acc: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for i in tqdm(range(len(ds)), desc="compare", unit="img", disable=not progress):
        s = ds[i]
        levels = cnn.pyramid(layer) if "coarse" in init else [layer]
        with cnn.thread_limits(threads):
            feats = cnn.extract(s.input, levels)
            q = feats.hyperpatches[layer]
            cnn_out = feats.output
            for k in top_k:
                ex, ex_s = _exact(cnn, feats, layer, int(k), cache, f"{i}-{s.name}", s.input.shape[1:],
                                  exact_method)
                n_db = lv.positions(ex.shortlist)
                ex_rec = ex.reconstructions["target"]
                exact_stats[k].append({"seconds": ex_s, "fidelity": _fidelity(ex_rec, cnn_out, seg),
                                       "method": ex.params.get("exact_method", "faiss"),
                                       "gflops": 2.0 * q.shape[0] * q.shape[1] * n_db * q.shape[2] / ex_s / 1e9})

                def record(method: str, params: dict, f: NNField, secs: float, r: np.ndarray,
                           extra: dict | None = None, codec: str = lv.codec):
                    key = (method, json.dumps(params, sort_keys=True), int(k), codec)
                    m = acc[key]
                    m["seconds"].append(secs)
                    m["exact_seconds"].append(ex_s)
                    m["recall_at_1"].append(float(recall_at_1(f, ex.field)))
                    m["similarity_ratio"].append(float(np.mean(f.similarity / np.maximum(ex.field.similarity, 1e-6))))
                    m["agreement"].append(_agreement(r, ex_rec, seg))
                    m["fidelity"].append(_fidelity(r, cnn_out, seg))
                    for key2, v in (extra or {}).items():
                        m[key2].append(v)

                for other in ("bounded", "fused"):  # the native exact methods beside the reference
                    if other == ex.params.get("exact_method") or _unsupported(lv, other):
                        continue
                    r = cnn.explain(feats, layer=layer, top_k=int(k), sources=("target",),
                                    options=QueryOptions(exact_method=other))
                    record(f"exact_{other}", {}, r.field, r.timings["search"], r.reconstructions["target"])
                for c in [cnn, *others]:
                    codec = c.layer(layer).codec
                    if c is not cnn and codec_exact:
                        r = c.explain(feats, layer=layer, top_k=int(k), sources=("target",))
                        assert np.array_equal(r.shortlist, ex.shortlist)
                        record("exact", {}, r.field, r.timings["search"], r.reconstructions["target"],
                               codec=codec)
                        codec_stats[(codec, int(k))].append(
                            2.0 * q.shape[0] * q.shape[1] * n_db * q.shape[2] / r.timings["search"] / 1e9)
                    for opts in pm_options:
                        r = c.explain(feats, layer=layer, options=opts, top_k=int(k), sources=("target",))
                        record("patchmatch", {"iterations": opts.iterations, "init": opts.init,
                                              "samples": samples, "jumps": jumps},
                               r.field, r.timings["search"], r.reconstructions["target"], codec=codec)
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
        # which exact search ran: "fused" (pixel-level kernel) or "faiss" (the reference)
        exact[str(k)]["exact_method"] = "+".join(sorted({it["method"] for it in items}))
    settings = []
    for (method, params, k, codec), m in acc.items():
        spq = float(np.mean(m["seconds"]))
        row = {"method": method, "codec": codec, "params": json.loads(params), "top_k": k,
               "seconds_per_query": spq,
               "speedup": float(np.mean(m["exact_seconds"]) / spq) if spq > 0 else float("inf")}
        for key in ("recall_at_1", "similarity_ratio", "agreement", "fidelity", "build_seconds"):
            if key in m:
                row[key] = float(np.mean(m[key]))
        row["fidelity_delta"] = row["fidelity"] - exact[str(k)]["fidelity"]
        if method == "exact" and (codec, k) in codec_stats:
            row["gflops"] = float(np.mean(codec_stats[(codec, k)]))
        settings.append(row)
    first = exact[str(top_k[0])]
    codecs = {}
    for c in [cnn, *others]:
        clv = c.layer(layer)
        f = c.store.layer_file(layer)
        codecs[clv.codec] = {"store": str(c.store.path), "layer_bytes": f.stat().st_size,
                             "store_bytes": sum(p.stat().st_size for p in c.store.path.rglob("*") if p.is_file())}
    for row in cold_rows:
        codecs.setdefault(row["codec"], {})["cold"] = row
    doc = {"index": str(index), "layer": layer, "task": cnn.task, "queries": len(ds),
           "exact": {**first, "by_top_k": exact}, "codecs": codecs, "settings": settings}
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


def _unsupported(lv, method: str) -> str | None:
    from ..search.bounded import bounded_unsupported
    from ..search.exact import fused_unsupported

    if method == "bounded":
        return bounded_unsupported(lv)
    return fused_unsupported(lv, np.zeros(1, np.float32)) if lv.spec is not None else "no LayerSpec"


def _exact(cnn, feats, layer: str, k: int, cache: Path | None, name: str, size,
           exact_method: str = "faiss") -> tuple:
    """The fp32 exact result of one query (from ``cache`` when there) and its search seconds."""
    from types import SimpleNamespace

    file = None
    if cache is not None:
        tag = f"{cnn.store.manifest['model']['hash'][:12]}-{cnn.num_images}"
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        file = cache / f"{safe}-{layer}-top{k}-{tag}.npz"
        if file.is_file():
            z = np.load(file)
            field = NNField(z["image"], z["y"], z["x"], z["similarity"])
            rec = cnn.compose(field, cnn.store.spec(layer), "target", size)
            method = str(z["method"]) if "method" in z else "faiss"
            return SimpleNamespace(field=field, shortlist=z["shortlist"], params={"exact_method": method},
                                   reconstructions={"target": rec}), float(z["seconds"])
    # The reference of every speed-up: exact search on the float32 store, by exact_method (auto: the
    # fastest the store supports; faiss: FAISS, for speed-ups against it).
    ex = cnn.explain(feats, layer=layer, top_k=k, sources=("target",), options=QueryOptions(exact_method=exact_method))
    if file is not None:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp.npz")
        np.savez(tmp, image=ex.field.image, y=ex.field.y, x=ex.field.x, similarity=ex.field.similarity,
                 shortlist=ex.shortlist, seconds=ex.timings["search"],
                 method=np.asarray(ex.params.get("exact_method", exact_method)))
        os.replace(tmp, file)
    return ex, ex.timings["search"]


def _cold(index, **kw) -> dict:
    """:func:`.coldstart.cold_start` in a fresh process (pages this process maps cannot be evicted)."""
    import subprocess
    import sys

    args = [sys.executable, "-m", "compnn_index.jobs.coldstart", str(index), "--data", kw["data"],
            "--split", kw["split"], "--iterations", str(kw["iterations"]), "--init", kw["init"]]
    for flag, key in (("--layer", "layer"), ("--top-k", "top_k"), ("--threads", "threads"),
                      ("--ignore-index", "ignore_index")):
        if kw.get(key) is not None:
            args += [flag, str(kw[key])]
    outp = subprocess.run(args, capture_output=True, text=True)
    if outp.returncode != 0:  # the child's own message (its last line), not a CalledProcessError
        lines = outp.stderr.strip().splitlines()
        raise QueryError(f"--cold: the cold-start measurement of {os.fspath(index)} failed: "
                         + (lines[-1] if lines else f"exit status {outp.returncode}"))
    return json.loads(outp.stdout.strip().splitlines()[-1])


def _markdown(doc: dict) -> str:
    fid = "label-transfer pixel accuracy vs CNN" if doc["task"] == "segment" else "PSNR vs CNN"
    lines = [f"# Exact vs approximate search: layer {doc['layer']}, {doc['queries']} queries",
             "", f"fidelity = {fid}", "",
             "s/query is search time; FAISS ANN indexes also need the build time shown (a copy of the "
             "shortlist's vectors, per query), which exact search and HyperPatch-Match do not. "
             "Exact GFLOP/s counts hyperpatch-level flops (2·Q·N·D); the fused method does about "
             "k² times fewer.", "",
             "| method | top_k | params | s/query | speed-up | recall@1 | sim. ratio | agreement | fidelity | Δ fidelity vs exact | ANN build s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    main_codec = next(iter(doc.get("codecs") or {"fp32": None}))
    for k, e in doc["exact"]["by_top_k"].items():
        lines.append(f"| exact | {k} | {e.get('exact_method', 'faiss')}, {e['gflops']:.0f} GFLOP/s | "
                     f"{e['seconds_per_query']:.3f} | 1.0 | 1 | 1 | 1 | "
                     f"{e['fidelity']:.4f} | 0 | |")
    for r in doc["settings"]:
        p = ", ".join(f"{a}={b}" for a, b in r["params"].items())
        if "gflops" in r:
            p = f"{r['gflops']:.0f} GFLOP/s"
        method = r["method"] + (f" {r['codec']}" if r.get("codec", main_codec) != main_codec else "")
        lines.append(f"| {method} | {r['top_k']} | {p} | {r['seconds_per_query']:.3f} | {r['speedup']:.1f} | "
                     f"{r['recall_at_1']:.3f} | {r['similarity_ratio']:.4f} | {r['agreement']:.4f} | "
                     f"{r['fidelity']:.4f} | {r['fidelity_delta']:+.4f} | "
                     + (f"{r['build_seconds']:.1f} |" if "build_seconds" in r else " |"))
    if doc.get("codecs"):
        measured = any(c.get("cold") for c in doc["codecs"].values())  # --cold
        lines += ["", "| codec | layer file bytes | store bytes |"
                  + (" cold first query s | sequential read of touched bytes s | ratio | resident pages before |"
                     if measured else ""),
                  "|---|---|---|" + ("---|---|---|---|" if measured else "")]
        for codec, c in doc["codecs"].items():
            cold = c.get("cold")
            row = f"| {codec} | {c.get('layer_bytes', '')} | {c.get('store_bytes', '')} |"
            if cold and cold.get("not_cold"):  # the figure would be a warm query's
                row += f" not cold: {cold['not_cold']} | | | |"
            elif cold:
                row += (f" {cold['query_seconds']:.2f} | {cold['sequential_read_seconds']:.2f} | {cold['ratio']:.2f} | "
                        f"{cold['resident_pages_before']}/{cold['file_pages']} |")
            elif measured:
                row += " | | | |"
            lines.append(row)
    return "\n".join(lines) + "\n"


def _plot(doc: dict, path: Path) -> None:
    """The quality-vs-throughput plot (ann-benchmarks style): :func:`pictures.plots.quality_vs_throughput`."""
    from ..pictures.plots import quality_vs_throughput

    quality_vs_throughput(doc, path)
