"""Benchmark exact search against the BLAS ceiling measured in the same process.

Synthetic random unit vectors with the shape of a 256×256 query at pix2pix Decoder 2:
Q = 127² = 16129 query positions, D = 512, a shortlist of 16 database images of 127×127
positions each (N = 258 064). By default the database is a real ``IndexFlatIP`` file opened
memory-mapped (``faiss.IO_FLAG_MMAP_IFC``), exactly as the index store serves it (vectors at byte
offset 45, so unaligned); ``--aligned`` searches an in-RAM array instead.

Printed: GFLOP/s (2·Q·N·D / s) of

- ``torch.matmul`` of the same (Q, D) × (D, image) shape with a fresh output per image (the
  full Q × N product would need 16.6 GB, so it is measured per image);
- ``torch.mm(out=)`` into a preallocated 4096 × 4096 buffer (pure GEMM, no reduction; this
  plus a row max was exact_search's first design);
- ``exact_search`` on the same images: these three run in interleaved rounds, and the ratio
  exact_search / best torch reference is printed per round, so load drifting on a shared machine
  moves both sides;
- ``exact_search`` over the whole shortlist;
- ``faiss.knn`` (k=1) on a raw slice, and ``IndexFlatIP.search`` with ``IDSelectorRange``.

Usage: ``python tools/bench_exact.py [--images 16] [--threads 2] [--aligned]``
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import faiss
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from compnn_index.index.flatfile import FlatIPWriter
from compnn_index.search.exact import DEFAULT_BLOCK_SIZE, exact_search


def gflops(q: int, n: int, d: int, seconds: float) -> float:
    return 2.0 * q * n * d / seconds / 1e9


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def make_database(n_images: int, side: int, dim: int, *, aligned: bool, tmpdir: str):
    """Random unit vectors; memory-mapped from a FAISS file unless ``aligned``."""
    rng = np.random.default_rng(0)
    per = side * side
    if aligned:
        x = rng.standard_normal((n_images * per, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x, None
    path = os.path.join(tmpdir, "bench.faiss")
    with FlatIPWriter(path, dim) as writer:
        for _ in range(n_images):
            x = rng.standard_normal((per, dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            writer.add(x)
    index = faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC)
    view = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
    view.flags.writeable = False
    return view, index


def torch_matmul_per_image(qt: torch.Tensor, db: torch.Tensor, per: int, images: int) -> float:
    """Seconds for ``torch.matmul(q, image.T)`` over ``images`` images (fresh output each)."""
    def run():
        for i in range(images):
            r = torch.matmul(qt, db[i * per : (i + 1) * per].T)
            del r
    return timed(run)


def torch_mm_blocked(qt: torch.Tensor, db: torch.Tensor, n: int, block: int) -> float:
    """Seconds for ``torch.mm(out=)`` over (Q × n) in block × block tiles, no reduction."""
    buf = torch.empty(block * block)

    def run():
        for b0 in range(0, n, block):
            b1 = min(b0 + block, n)
            for q0 in range(0, qt.shape[0], block):
                q1 = min(q0 + block, qt.shape[0])
                torch.mm(qt[q0:q1], db[b0:b1].T, out=buf[: (q1 - q0) * (b1 - b0)].view(q1 - q0, b1 - b0))
    return timed(run)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=127, help="query and database grid side (127 = 256×256 decoder2)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--images", type=int, default=16, help="shortlisted database images")
    p.add_argument("--ref-images", type=int, default=1, help="images per interleaved reference round")
    p.add_argument("--rounds", type=int, default=2, help="interleaved (torch, exact_search) rounds")
    p.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE, help="exact_search block_size")
    p.add_argument("--gemm-block", type=int, default=4096,
                   help="tile side of the torch.mm(out=) reference (a gemm_block² float32 buffer)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--aligned", action="store_true", help="search an in-RAM array, not a mapped FAISS file")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    q_n, per, d = args.side * args.side, args.side * args.side, args.dim
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((args.side, args.side, d), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=-1, keepdims=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmpdir, threadpool_limits(args.threads):
        vectors, index = make_database(args.images, args.side, d, aligned=args.aligned, tmpdir=tmpdir)
        n = vectors.shape[0]
        offsets = np.arange(args.images + 1, dtype=np.int64) * per
        grids = np.tile(np.array([args.side, args.side], dtype=np.int64), (args.images, 1))
        qt = torch.from_numpy(queries.reshape(q_n, d))
        db = torch.from_numpy(np.asarray(vectors)) if args.aligned else _readonly_tensor(vectors)
        ref_n = args.ref_images * per
        print(f"Q={q_n} D={d} N={n} ({args.images} images) threads={args.threads} "
              f"block_size={args.block_size} database={'in-RAM aligned' if args.aligned else 'mmap FAISS file (unaligned)'}")
        print(f"  {2 * q_n * n * d / 1e12:.2f} TFLOP for the full search")
        # warm the page cache and the BLAS threads
        vectors.sum()
        torch.mm(qt[:512], db[:512].T)

        def run_exact(images: int) -> float:
            return timed(lambda: exact_search(queries, vectors, np.arange(images), offsets=offsets,
                                              grids=grids, block_size=args.block_size))

        # interleaved rounds on ref_n (ratio robust to load drifting on a shared machine)
        ratios, rounds = [], []
        for _ in range(args.rounds):
            r = {
                "torch.matmul per image": gflops(q_n, ref_n, d, torch_matmul_per_image(qt, db, per, args.ref_images)),
                "torch.mm(out=) blocked, no reduction": gflops(q_n, ref_n, d, torch_mm_blocked(qt, db, ref_n, args.gemm_block)),
                "exact_search": gflops(q_n, ref_n, d, run_exact(args.ref_images)),
            }
            ratios.append(r["exact_search"] / max(r["torch.matmul per image"], r["torch.mm(out=) blocked, no reduction"]))
            rounds.append(r)
        results = {f"{k} [{args.ref_images} img, best of {args.rounds}]": max(r[k] for r in rounds) for k in rounds[0]}

        t_exact = run_exact(args.images)
        results[f"exact_search [{args.images} img]"] = gflops(q_n, n, d, t_exact)
        slice_ = np.asarray(vectors[:ref_n])
        t = timed(lambda: faiss.knn(queries.reshape(q_n, d), slice_, 1, metric=faiss.METRIC_INNER_PRODUCT))
        results[f"faiss.knn k=1 on a slice [{args.ref_images} img]"] = gflops(q_n, ref_n, d, t)
        if index is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorRange(0, ref_n))
            t = timed(lambda: index.search(queries.reshape(q_n, d), 1, params=params))
            results[f"IndexFlatIP.search + IDSelectorRange [{args.ref_images} img]"] = gflops(q_n, ref_n, d, t)

    width = max(map(len, results))
    for name, value in results.items():
        print(f"  {name:<{width}}  {value:7.1f} GFLOP/s")
    best_ref = max(v for k, v in results.items() if k.startswith("torch"))
    print(f"  exact_search over {args.images} images took {t_exact:.1f} s")
    print(f"  ratio exact_search / best torch reference, per round: "
          f"{', '.join(f'{r:.2f}' for r in ratios)} (median {np.median(ratios):.2f})")
    print(f"  ratio {args.images}-image exact_search / best torch reference of all rounds: "
          f"{results[f'exact_search [{args.images} img]'] / best_ref:.2f}")


def _readonly_tensor(view: np.ndarray) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(view)


if __name__ == "__main__":
    main()
