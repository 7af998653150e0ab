"""Benchmark HyperPatch-Match at decoder2 scale and compare it with exact search.

Default problem: 16 database images of 127 x 127 hyperpatches, D = 512 (a 256 x 256 query at the
pix2pix U-Net's decoder2 layer against a 16-image shortlist), built from smooth random feature
maps so PatchMatch has structure to exploit. Two queries:

* ``self``: database image 3 with noise added, so the right answer (identity) is known;
* ``novel``: a fresh smooth image, scored against brute force on a sample of positions.

Prints the dot-product kernel's speed, then per query and thread count: wall time, time per
iteration, candidates evaluated, candidates/s, ns per candidate, mean similarity, and agreement
with exact search (recall@1 by similarity on sampled positions; identity rate for ``self``),
plus the project's exact search time (search/exact.py) extrapolated from the sample.

Usage: ``.venv/bin/python tools/bench_patchmatch.py [--images 16 --grid 127 --dim 512 ...]``
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from compnn_index.index.layer import LayerVectors
from compnn_index.search.exact import exact_search
from compnn_index.search.hyperpatchmatch import native_available, patchmatch


def smooth_hyperpatches(rng: np.random.Generator, n: int, grid: int, dim: int) -> np.ndarray:
    """(n, grid, grid, dim) float32: 2x2 windows of blurred random maps with dim/4 channels, unit norm."""
    channels = dim // 4
    out = np.empty((n, grid, grid, dim), dtype=np.float32)
    for i in range(n):
        a = rng.standard_normal((grid + 1, grid + 1, channels), dtype=np.float32)
        for axis in (0, 1):
            for _ in range(3):  # three box blurs of width 5 ~ Gaussian, sigma ~ 2.4 cells
                c = np.cumsum(np.pad(a, [(3, 2) if ax == axis else (0, 0) for ax in range(3)], mode="wrap"),
                              axis=axis)
                a = (np.take(c, np.arange(5, c.shape[axis]), axis=axis)
                     - np.take(c, np.arange(0, c.shape[axis] - 5), axis=axis)) / 5
        k = 0
        for dy in (0, 1):
            for dx in (0, 1):
                out[i, :, :, k * channels : (k + 1) * channels] = a[dy : dy + grid, dx : dx + grid]
                k += 1
        out[i] /= np.linalg.norm(out[i], axis=-1, keepdims=True)
    return out


def exact_best(queries: np.ndarray, vectors: np.ndarray, images: np.ndarray, offsets: np.ndarray,
               grids: np.ndarray, threads: int) -> tuple[np.ndarray, float]:
    """Exact top-1 similarity for (P, D) queries with the project's exact search; also the wall time."""
    t0 = time.perf_counter()
    layer = LayerVectors.from_array(vectors, grids=grids, offsets=offsets)
    field = exact_search(queries[None], layer, images, threads=threads)  # auto: FAISS here (no screen)
    return field.similarity[0], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--grid", type=int, default=127)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--jumps", type=int, default=2)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--exact-sample", type=int, default=512, help="query positions checked by exact search")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if not native_available():
        raise SystemExit("native kernel compnn_index.search._hpm not built; nothing to benchmark")
    from compnn_index.search import _hpm as hpm

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    db = smooth_hyperpatches(rng, args.images + 1, args.grid, args.dim)
    novel = np.ascontiguousarray(db[-1])
    db = db[:-1]
    vectors = db.reshape(-1, args.dim)
    n_img, g = args.images, args.grid
    offsets = np.arange(n_img + 1, dtype=np.int64) * g * g
    grids = np.full((n_img, 2), g, dtype=np.int64)
    images = np.arange(n_img, dtype=np.int64)
    noisy = db[3] + 0.1 * rng.standard_normal(db[3].shape, dtype=np.float32) / np.sqrt(args.dim) * 4
    noisy /= np.linalg.norm(noisy, axis=-1, keepdims=True)
    print(f"data: {n_img} images x {g}x{g} positions, D={args.dim}, N={len(vectors)} "
          f"({vectors.nbytes / 2**20:.0f} MiB), built in {time.perf_counter() - t0:.1f} s")

    # Dot-product kernel: hot (vectors in L1/L2) and streaming (sequential over the database).
    q = np.ascontiguousarray(vectors[0])
    hot = np.ascontiguousarray(vectors[:64])
    reps = 2000
    t0 = time.perf_counter()
    for _ in range(reps):
        hpm.dot_many(q, hot)
    hot_ns = (time.perf_counter() - t0) / (reps * len(hot)) * 1e9
    t0 = time.perf_counter()
    hpm.dot_many(q, vectors)
    stream_ns = (time.perf_counter() - t0) / len(vectors) * 1e9
    print(f"dot kernel {hpm.dot_kernel}: {hot_ns:.1f} ns per {args.dim}-d dot (cached), "
          f"{stream_ns:.1f} ns streaming from DRAM ({args.dim * 4 / stream_ns:.1f} GB/s)")

    sample = rng.choice(g * g, size=min(args.exact_sample, g * g), replace=False)
    for name, query in (("self", noisy), ("novel", novel)):
        best, t_exact = exact_best(np.ascontiguousarray(query.reshape(-1, args.dim)[sample]), vectors, images,
                                   offsets, grids, max(args.threads))
        exact_full = t_exact * (g * g) / len(sample)
        print(f"\nquery '{name}': exact_search (threads={max(args.threads)}) on {len(sample)} positions took {t_exact:.2f} s "
              f"-> {exact_full:.1f} s extrapolated to all {g * g} "
              f"(pessimistic: a small sample does not amortise the database read)")
        for threads in args.threads:
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                layer = LayerVectors.from_array(vectors, grids=grids, offsets=offsets)
                field, stats = patchmatch(query, layer, images,
                                             iterations=args.iterations, samples=args.samples, jumps=args.jumps,
                                             seed=args.seed, threads=threads, return_stats=True)
                times.append(time.perf_counter() - t0)
            t = min(times)
            sims = field.similarity.reshape(-1)[sample]
            recall = np.mean(sims >= best - 1e-5)
            line = (f"  threads={threads}: {t * 1000:.0f} ms ({t / max(stats.iterations, 1) * 1000:.1f} ms/iteration), "
                    f"{stats.candidates} candidates ({stats.candidates / (g * g):.1f}/position), "
                    f"{stats.candidates / t / 1e6:.2f} M candidates/s, {t / stats.candidates * 1e9 * threads:.0f} "
                    f"ns/candidate/thread; mean sim {stats.mean_similarity[-1]:.4f} "
                    f"(exact {float(np.mean(best)):.4f} on sample), recall@1 {recall:.3f}, "
                    f"speed-up vs exact {exact_full / t:.0f}x")
            if name == "self":
                yy, xx = np.mgrid[0:g, 0:g]
                identity = np.mean((field.image == 3) & (field.y == yy) & (field.x == xx))
                line += f", identity {identity:.4f}"
            print(line)
            print("    mean similarity per iteration: " + " ".join(f"{m:.4f}" for m in stats.mean_similarity))


if __name__ == "__main__":
    main()
