"""``tools/bench_exact.py --store``: bounded vs fused vs FAISS exact search on a real store's layer.

Per top-k and query image: the query's hyperpatches and shortlist from the store's own model
(``CompNN.extract`` / ``shortlist``), then the three exact methods on the same inputs, the layer's
shortlisted pages read into the page cache first (``LayerVectors.prefetch``) so no method pays the
disk. FAISS runs on every position for the first ``--faiss-queries`` queries, and on
``--faiss-positions`` sampled positions of the others (its time then scaled up to the grid; the
ids and similarities compared at those positions). A differing id counts as a tie when both
matches' similarities, recomputed in float64 from the stored (decoded) vectors, agree to 1e-6.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from benchutil import open_stores
from compnn_index.search.exact import exact_search


def _ties(lv, q: np.ndarray, a, b, where: np.ndarray) -> np.ndarray:
    """Whether the matches of fields a and b at the flat positions ``where`` tie in float64."""
    ia = lv.positions_to_ids(a.image.ravel()[where], a.y.ravel()[where], a.x.ravel()[where])
    ib = lv.positions_to_ids(b.image.ravel()[where], b.y.ravel()[where], b.x.ravel()[where])
    qq = q.reshape(-1, q.shape[-1])[where].astype(np.float64)
    sa = np.einsum("ij,ij->i", qq, lv.decode(ia).astype(np.float64))
    sb = np.einsum("ij,ij->i", qq, lv.decode(ib).astype(np.float64))
    return np.abs(sa - sb) <= 1e-6


def _compare(lv, q, got, ref, positions=None) -> dict:
    """Id agreement (ties apart) and the largest similarity difference of ``got`` against ``ref``."""
    flat = np.arange(q.shape[0] * q.shape[1]) if positions is None else positions
    gi, gy, gx, gs = (np.asarray(getattr(got, n)).ravel()[flat] for n in ("image", "y", "x", "similarity"))
    if positions is None:
        ri, ry, rx, rs = (np.asarray(getattr(ref, n)).ravel() for n in ("image", "y", "x", "similarity"))
    else:
        ri, ry, rx, rs = (np.asarray(getattr(ref, n)).ravel() for n in ("image", "y", "x", "similarity"))
    differ = np.flatnonzero((gi != ri) | (gy != ry) | (gx != rx))
    ties = 0
    if differ.size:
        from compnn_index.search import NNField
        sub_got = NNField(gi[differ][None], gy[differ][None], gx[differ][None], gs[differ][None])
        sub_ref = NNField(ri[differ][None], ry[differ][None], rx[differ][None], rs[differ][None])
        ties = int(_ties(lv, q.reshape(-1, q.shape[-1])[flat][differ][None], sub_got, sub_ref,
                         np.arange(differ.size)).sum())
    return {"positions": int(len(flat)), "ids_differ": int(differ.size), "ties": ties,
            "ids_identical": bool(differ.size == ties), "max_abs_sim_diff": float(np.abs(gs - rs).max())}


def bench_store(args) -> None:
    cnns, ds = open_stores([args.store], data=args.data, split=args.split, limit=args.queries,
                           threads=args.threads)
    cnn = cnns[0]
    lv = cnn.layer(args.layer)
    rng = np.random.default_rng(args.seed)
    result: dict = {"store": str(args.store), "layer": args.layer, "threads": args.threads,
                    "queries": len(ds), "by_top_k": {}}
    all_ids = np.arange(cnn.num_images, dtype=np.int64)
    for k in args.top_k:
        rows = []
        for i in range(len(ds)):
            s = ds[i]
            with cnn.thread_limits(args.threads):
                feats = cnn.extract(s.input, [args.layer])
            q = feats.hyperpatches[args.layer]
            qn = feats.hyperpatch_norms[args.layer]
            ids = np.sort(cnn.shortlist(feats.global_descriptor, all_ids, k)[0])
            lv.prefetch(ids)
            row = {"query": str(s.name), "positions": int(q.shape[0] * q.shape[1]),
                   "candidates": int(lv.positions(ids))}
            info: dict = {}
            t = time.perf_counter()
            bnd = exact_search(q, lv, ids, method="bounded", threads=args.threads, info=info)
            row["bounded_seconds"] = time.perf_counter() - t
            row["bounded_seed_seconds"] = info["bounded_seed_seconds"]
            row["bounded_pruned"] = info["bounded_pruned"]
            row["bounded_counts"] = info["bounded_counts"]
            if not args.no_fused:
                t = time.perf_counter()
                fused = exact_search(q, lv, ids, method="fused", query_norms=qn, threads=args.threads)
                row["fused_seconds"] = time.perf_counter() - t
                row["vs_fused"] = _compare(lv, q, bnd, fused)
            flat = q.reshape(-1, q.shape[-1])
            if i < args.faiss_queries:
                t = time.perf_counter()
                ref = exact_search(q, lv, ids, method="faiss", threads=args.threads)
                row["faiss_seconds"] = time.perf_counter() - t
                row["vs_faiss"] = _compare(lv, q, bnd, ref)
            else:
                pos = np.sort(rng.choice(flat.shape[0], size=min(args.faiss_positions, flat.shape[0]), replace=False))
                t = time.perf_counter()
                ref = exact_search(flat[pos][None], lv, ids, method="faiss", threads=args.threads)
                row["faiss_seconds"] = (time.perf_counter() - t) * flat.shape[0] / len(pos)
                row["faiss_sampled_positions"] = int(len(pos))
                row["vs_faiss"] = _compare(lv, q, bnd, ref, positions=pos)
            rows.append(row)
            print(f"top-{k} query {s.name}: bounded {row['bounded_seconds']:.2f} s (seed "
                  f"{row['bounded_seed_seconds']:.2f} s; pruned {row['bounded_pruned']})"
                  + (f", fused {row['fused_seconds']:.2f} s" if "fused_seconds" in row else "")
                  + f", faiss {row['faiss_seconds']:.2f} s"
                  + (" (scaled from sampled positions)" if "faiss_sampled_positions" in row else "")
                  + f"; vs faiss {row['vs_faiss']}" + (f"; vs fused {row['vs_fused']}" if "vs_fused" in row else ""),
                  flush=True)
        med = {key: float(np.median([r[key] for r in rows])) for key in ("bounded_seconds", "fused_seconds", "faiss_seconds")
               if all(key in r for r in rows)}
        summary = {**med,
                   "bounded_speedup_vs_faiss": med["faiss_seconds"] / med["bounded_seconds"],
                   "bounded_ids_identical": all(r["vs_faiss"]["ids_identical"] and
                                                r.get("vs_fused", {"ids_identical": True})["ids_identical"] for r in rows),
                   "bounded_max_abs_sim_diff": max(max(r["vs_faiss"]["max_abs_sim_diff"],
                                                       r.get("vs_fused", {"max_abs_sim_diff": 0.0})["max_abs_sim_diff"])
                                                   for r in rows),
                   "bounded_pruned_median": {g: float(np.median([r["bounded_pruned"][g] for r in rows]))
                                             for g in rows[0]["bounded_pruned"]},
                   "rows": rows}
        if "fused_seconds" in med:
            summary["bounded_speedup_vs_fused"] = med["fused_seconds"] / med["bounded_seconds"]
        result["by_top_k"][str(k)] = summary
        print(f"top-{k} median over {len(rows)} queries: " + ", ".join(
            f"{key} {v:.3f}" for key, v in summary.items() if isinstance(v, float)) +
            f", ids identical (ties apart): {summary['bounded_ids_identical']}", flush=True)
    first = result["by_top_k"][str(args.top_k[0])]
    result.update({key: v for key, v in first.items() if key.startswith("bounded_") or key.endswith("_seconds")})
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
