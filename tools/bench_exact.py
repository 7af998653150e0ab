"""Benchmark exact search: the fused pixel-level kernel against FAISS, on the same store.

The decoder2 problem of a 256×256 query: Q = 127² = 16,129 query windows, D = 512 (C = 128
channels, k = 2), a shortlist of 16 database images of 128×128 activations (127×127 windows
each, N = 258,064). The data are *consistent* hyperpatches — the project's own extraction
(``hyperpatches(..., return_norms=True)``) applied to random, spatially smooth ReLU activations —
written like a store's layer: a FAISS ``IndexFlatIP`` file opened memory-mapped
(``faiss.IO_FLAG_MMAP_IFC``: vectors at file byte 45, unaligned) plus the float32 norms sidecar
(``.npy``, memory-mapped). Both methods answer the same question on the same bytes.

Measured in interleaved rounds (FAISS, fused, FAISS, fused, ...) so load drifting on a shared
machine moves both; printed per round and as min / median:

- ``exact_search(method="faiss")``: ``faiss.knn`` over the images' id range (the reference);
  its GFLOP/s count 2·Q·N·D;
- ``exact_search(method="fused")``: pixel-level GEMM + shifted sum + running best (about k²
  times fewer flops); "effective" GFLOP/s use the same 2·Q·N·D;
- the CPU seconds of each (``time.process_time``: on a machine shared with other jobs the wall
  time of FAISS's OpenMP barriers suffers more than the fused kernel's, so both are reported);
- the largest |similarity difference| between the two fields, and the fraction of positions whose
  match differs (exact or near-exact ties).

``--json PATH`` writes ``{"faiss_gflops", "fused_seconds", "faiss_seconds", "fused_speedup",
"max_abs_sim_diff", ...}`` (medians; ``*_min`` the best round), and ``bounded_*`` for the bounded
method (``exact_search(method="bounded")``: HyperPatch-Match seed + screen bounds; its time
includes the seed's) on the same problem.

``--store STORE`` instead runs the decoder2 problem of a real store: every test image of
``--data`` (``--queries`` of them) through the store's model, its top-k shortlists
(``--top-k 16,400``), and per query bounded, fused and FAISS exact search on the same
hyperpatches and shortlist (FAISS on the first ``--faiss-queries`` queries of each top-k, and on
``--faiss-positions`` sampled positions of the others: FAISS costs ~77 s per top-16 query here).
Printed and in ``--json``: per top-k ``bounded_seconds``, ``fused_seconds``, ``faiss_seconds``
(medians), ``bounded_speedup_vs_fused``, ``bounded_speedup_vs_faiss``, ``bounded_ids_identical``
(no id differs from FAISS's or fused's except exact ties: both similarities equal to 1e-6 in
float64), ``bounded_max_abs_sim_diff``, and the pruned fraction at every grain.

Usage: ``python tools/bench_exact.py [--images 16] [--threads 2] [--rounds 3] [--json out.json]``
       ``python tools/bench_exact.py --store STORE --data ../shared/data/facades --queries 5 --top-k 16,400``
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compnn_index.features import LayerSpec, hyperpatches  # noqa: E402
from compnn_index.index import LayerVectors  # noqa: E402
from compnn_index.index.flatfile import FlatIPWriter  # noqa: E402
from compnn_index.index.npyfile import NpyWriter  # noqa: E402
from compnn_index.index.screen import compute_screen  # noqa: E402
from compnn_index.search.exact import exact_search  # noqa: E402


def activation(rng: np.random.Generator, c: int, side: int, kind: str) -> np.ndarray:
    """One (1, C, side, side) float32 activation: ``random`` normal, or ``smooth`` ReLU maps."""
    x = torch.from_numpy(rng.standard_normal((1, c, side, side), dtype=np.float32))
    if kind == "smooth":
        x = torch.relu(torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
                       + 0.1 * x)
    return x.numpy()


def make_store(tmpdir: str, n_images: int, c: int, side: int, k: int, kind: str, seed: int):
    """A memory-mapped layer (FAISS file + norms sidecar) and one query (vectors, norms)."""
    rng = np.random.default_rng(seed)
    hp = side - k + 1
    path, npath = os.path.join(tmpdir, "bench.faiss"), os.path.join(tmpdir, "bench.norms.npy")
    norms_out = NpyWriter(npath, (n_images * hp * hp,), np.dtype(np.float32))
    with FlatIPWriter(path, k * k * c) as writer:
        for _ in range(n_images):
            v, n = hyperpatches(activation(rng, c, side, kind), k, return_norms=True)
            writer.add(v.reshape(-1, v.shape[-1]))
            norms_out.add(n.reshape(-1))
    norms_out.close()
    index = faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC)
    view = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
    view.flags.writeable = False
    grids = np.tile(np.array([hp, hp], dtype=np.int64), (n_images, 1))
    layer = LayerVectors("decoder2", LayerSpec("decoder2", "m", k=k), grids, raw=view, dim=index.d,
                         owner=index, norms=np.load(npath, mmap_mode="r"))
    layer.screen = compute_screen(layer)  # in memory: the screen a store's build writes
    qv, qn = hyperpatches(activation(rng, c, side, kind), k, return_norms=True)
    return layer, qv[0], qn[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=128, help="activation side (128: a 256×256 query at decoder2)")
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--images", type=int, default=16, help="shortlisted database images")
    p.add_argument("--rounds", type=int, default=3, help="interleaved (faiss, fused) rounds")
    p.add_argument("--activations", choices=["smooth", "random"], default="smooth")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--store", default=None, help="a real store: its decoder2 problem (see the module docstring)")
    p.add_argument("--data", default="../shared/data/facades")
    p.add_argument("--split", default="test")
    p.add_argument("--queries", type=int, default=5)
    p.add_argument("--layer", default="decoder2")
    p.add_argument("--top-k", type=lambda v: [int(x) for x in v.split(",")], default=[16])
    p.add_argument("--faiss-queries", type=int, default=5, help="queries per top-k with a full FAISS run")
    p.add_argument("--faiss-positions", type=int, default=1024, help="sampled positions for FAISS on the others")
    p.add_argument("--no-fused", action="store_true", help="skip the fused kernel (store mode)")
    args = p.parse_args()
    if args.store:
        from bench_exact_store import bench_store

        return bench_store(args)

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmpdir:
        t = time.perf_counter()
        layer, q, qn = make_store(tmpdir, args.images, args.channels, args.side, args.k, args.activations, args.seed)
        q_n, n, d = q.shape[0] * q.shape[1], layer.ntotal, layer.dim
        flop = 2.0 * q_n * n * d
        images = np.arange(args.images)
        print(f"Q={q_n} D={d} (C={args.channels}, k={args.k}) N={n} ({args.images} images of "
              f"{args.side}×{args.side} {args.activations} activations) threads={args.threads}; "
              f"mmap FAISS file (unaligned) + norms sidecar; built in {time.perf_counter() - t:.1f} s")
        print(f"  {flop / 1e12:.2f} TFLOP at hyperpatch level, {flop / args.k ** 2 / 1e12:.2f} at pixel level")
        np.asarray(layer.vectors).sum()  # warm the page cache
        exact_search(q[:4], layer, images[:1], method="faiss", threads=args.threads)

        faiss_s, fused_s, faiss_cpu, fused_cpu, diffs, mismatch = [], [], [], [], [], []
        bounded_s, bounded_diffs, bounded_mismatch, bounded_info = [], [], [], {}
        for r in range(args.rounds):
            t, c = time.perf_counter(), time.process_time()
            ref = exact_search(q, layer, images, method="faiss", threads=args.threads)
            faiss_s.append(time.perf_counter() - t)
            faiss_cpu.append(time.process_time() - c)
            info: dict = {}
            t, c = time.perf_counter(), time.process_time()
            fused = exact_search(q, layer, images, method="fused", query_norms=qn, threads=args.threads, info=info)
            fused_s.append(time.perf_counter() - t)
            fused_cpu.append(time.process_time() - c)
            diffs.append(float(np.abs(fused.similarity - ref.similarity).max()))
            same = (fused.image == ref.image) & (fused.y == ref.y) & (fused.x == ref.x)
            mismatch.append(float(1.0 - same.mean()))
            t = time.perf_counter()
            bnd = exact_search(q, layer, images, method="bounded", threads=args.threads, info=bounded_info)
            bounded_s.append(time.perf_counter() - t)
            bounded_diffs.append(float(np.abs(bnd.similarity - ref.similarity).max()))
            bounded_mismatch.append(float(1.0 - ((bnd.image == ref.image) & (bnd.y == ref.y) & (bnd.x == ref.x)).mean()))
            print(f"  round {r + 1}: bounded {bounded_s[-1]:.2f} s (pruned {bounded_info['bounded_pruned']}), "
                  f"max |Δsim| {bounded_diffs[-1]:.2e}, ids differ at {bounded_mismatch[-1]:.2e}")
            print(f"  round {r + 1}: faiss {faiss_s[-1]:7.2f} s ({flop / faiss_s[-1] / 1e9:6.1f} GFLOP/s)   "
                  f"fused {fused_s[-1]:6.2f} s ({flop / fused_s[-1] / 1e9:6.1f} effective GFLOP/s, "
                  f"{info['exact_kernel']})   speed-up {faiss_s[-1] / fused_s[-1]:.2f}× "
                  f"(CPU s {faiss_cpu[-1]:.1f} vs {fused_cpu[-1]:.1f}: {faiss_cpu[-1] / fused_cpu[-1]:.2f}×)   "
                  f"max |Δsim| {diffs[-1]:.2e}   ids differ at {mismatch[-1]:.2e} of positions")

    med_faiss, med_fused = float(np.median(faiss_s)), float(np.median(fused_s))
    ratios = [a / b for a, b in zip(faiss_s, fused_s)]
    result = {
        "faiss_gflops": flop / med_faiss / 1e9,
        "fused_effective_gflops": flop / med_fused / 1e9,
        "fused_pixel_gflops": flop / args.k ** 2 / med_fused / 1e9,
        "faiss_seconds": med_faiss,
        "fused_seconds": med_fused,
        "fused_speedup": med_faiss / med_fused,
        "faiss_seconds_min": float(min(faiss_s)),
        "fused_seconds_min": float(min(fused_s)),
        "fused_speedup_min_times": float(min(faiss_s)) / float(min(fused_s)),
        "fused_speedup_per_round": ratios,
        "faiss_cpu_seconds": float(np.median(faiss_cpu)),
        "fused_cpu_seconds": float(np.median(fused_cpu)),
        "fused_cpu_speedup": float(np.median(faiss_cpu)) / float(np.median(fused_cpu)),
        "max_abs_sim_diff": float(max(diffs)),
        "id_mismatch_fraction": float(max(mismatch)),
        "bounded_seconds": float(np.median(bounded_s)),
        "bounded_speedup_vs_fused": med_fused / float(np.median(bounded_s)),
        "bounded_speedup_vs_faiss": med_faiss / float(np.median(bounded_s)),
        "bounded_ids_identical": bool(max(bounded_mismatch) == 0.0),
        "bounded_max_abs_sim_diff": float(max(bounded_diffs)),
        "bounded_pruned": bounded_info.get("bounded_pruned"),
        "problem": {"Q": q_n, "D": d, "C": args.channels, "k": args.k, "N": n, "images": args.images,
                    "activations": args.activations, "threads": args.threads, "rounds": args.rounds,
                    "store": "mmap FAISS file + norms .npy"},
    }
    print(f"  median: faiss {med_faiss:.2f} s ({result['faiss_gflops']:.1f} GFLOP/s), fused {med_fused:.2f} s "
          f"-> speed-up {result['fused_speedup']:.2f}× (per round {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"min-time ratio {result['fused_speedup_min_times']:.2f}×; CPU-time ratio {result['fused_cpu_speedup']:.2f}×); "
          f"max |Δsim| {result['max_abs_sim_diff']:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"  wrote {args.json}")


if __name__ == "__main__":
    main()
