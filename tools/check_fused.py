"""Fused vs FAISS exact search on a real store: the same NN field at every position?

For the first ``--queries`` images of a dataset split, one forward pass each, then
``CompNN.explain`` twice (``exact_method="fused"`` and ``"faiss"``) over the same shortlist.
Prints per query (and writes with ``--json``): the methods that ran, the largest |similarity
difference|, how many positions matched a different database hyperpatch (and, for those, the
float64 similarity gap between the two choices: 0 means an exact tie), whether the label-transfer
reconstructions agree, their fidelity to the CNN, and both search times.

Usage: ``python tools/check_fused.py STORE --data ../shared/data/facades [--queries 5] [--top-k 4]``
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compnn_index.api import CompNN  # noqa: E402
from compnn_index.data import open_like  # noqa: E402
from compnn_index.options import QueryOptions  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("index")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--queries", type=int, default=5)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--layer", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args()

    cnn = CompNN.load(a.index, threads=a.threads)
    layer = cnn.check_layer(a.layer)
    lv = cnn.layer(layer)
    trained = cnn.store.manifest.get("dataset", {})
    ds = open_like(a.data, trained, task=cnn.task, split=a.split, limit=a.queries)
    out = []
    for i in range(len(ds)):
        s = ds[i]
        feats = cnn.extract(s.input, [layer])
        rf = cnn.explain(feats, layer=layer, top_k=a.top_k, sources=("target",))
        rr = cnn.explain(feats, layer=layer, top_k=a.top_k, sources=("target",),
                         options=QueryOptions(exact_method="faiss"))
        f, r = rf.field, rr.field
        same = (f.image == r.image) & (f.y == r.y) & (f.x == r.x)
        rows = np.flatnonzero(~same.ravel())
        gap = 0.0
        if rows.size:
            q = feats.hyperpatches[layer].reshape(-1, lv.dim)[rows].astype(np.float64)
            vf = lv.decode(lv.positions_to_ids(f.image, f.y, f.x).ravel()[rows]).astype(np.float64)
            vr = lv.decode(lv.positions_to_ids(r.image, r.y, r.x).ravel()[rows]).astype(np.float64)
            gap = float(np.abs(np.einsum("ij,ij->i", q, vf) - np.einsum("ij,ij->i", q, vr)).max())
        rec_f, rec_r = rf.reconstructions["target"], rr.reconstructions["target"]
        fid = (lambda rec: float((rec == feats.output).mean())) if cnn.task == "segment" else (
            lambda rec: float(-np.abs(rec - feats.output).mean()))
        d = {"query": s.name, "exact_method": [rf.params["exact_method"], rr.params["exact_method"]],
             "max_abs_sim_diff": float(np.abs(f.similarity - r.similarity).max()),
             "ids_differ": int(rows.size), "positions": int(same.size), "tie_gap_of_differing": gap,
             "reconstruction_agreement": float(np.mean(rec_f == rec_r)),
             "fidelity_fused": fid(rec_f), "fidelity_faiss": fid(rec_r),
             "search_s_fused": rf.timings["search"], "search_s_faiss": rr.timings["search"]}
        print(json.dumps(d), flush=True)
        out.append(d)
    print(f"{len(out)} queries, top-{a.top_k}: max |Δsim| {max(d['max_abs_sim_diff'] for d in out):.2e}, "
          f"{sum(d['ids_differ'] for d in out)} differing matches of {sum(d['positions'] for d in out)}, "
          f"search {np.mean([d['search_s_fused'] for d in out]):.1f} s fused vs "
          f"{np.mean([d['search_s_faiss'] for d in out]):.1f} s FAISS per query")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
