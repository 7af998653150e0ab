"""Benchmark ``build_index``: images/s, vectors/s, peak RSS and index size.

Example (the full Facades Decoder 2 store is ~13 GB of disk; the build streams, so RAM stays at
about one batch)::

    python tools/bench_build.py --data ../shared/data/facades --size 256 --ngf 64 \\
        --layers decoder2 --limit 400 [--model CKPT] [--out indexes/bench] [--keep]

Without ``--model`` an untrained U-Net of the given width is used (the timing does not depend on
the weights). The store is deleted afterwards unless ``--keep``.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import psutil
from benchutil import RssSampler, dir_bytes

from compnn_index.data import open_dataset
from compnn_index.index import IndexStore, build_index
from compnn_index.models import build_model, load_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/facades")
    p.add_argument("--split", default="train")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--layers", nargs="+", default=["decoder2"])
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--model", default=None, help="checkpoint (default: an untrained U-Net)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="store folder (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the store")
    args = p.parse_args()

    if args.model:
        model = load_checkpoint(args.model)
        task = model.config.get("task", "translate")
    else:
        task = "translate"
        model = build_model("unet", task=task, ngf=args.ngf, size=args.size)
    ds = open_dataset(args.data, split=args.split, task=task, size=args.size, limit=args.limit)
    tmp = None
    if args.out is None:
        tmp = tempfile.mkdtemp(prefix="bench_build-", dir=os.environ.get("TMPDIR"))
        out = Path(tmp) / "store"
    else:
        out = Path(args.out)
    rss_before = psutil.Process().memory_info().rss
    try:
        with RssSampler() as sampler:
            t0 = time.perf_counter()
            build_index(model, ds, layers=args.layers, out=out, batch_size=args.batch_size,
                        threads=args.threads, model_path=args.model, overwrite=args.out is not None)
            seconds = time.perf_counter() - t0
        store = IndexStore.open(out)
        vectors = sum(store.layer_index(layer).ntotal for layer in store.layers)
        size = dir_bytes(out)
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        print(f"images        {len(ds)} at {ds.image_size[0]}×{ds.image_size[1]}, layers {store.layers}")
        for layer in store.layers:
            hp, wp = store.grid(layer)
            print(f"  {layer}: grid {hp}×{wp}, dim {store.dim(layer)}, "
                  f"{store.layer_index(layer).ntotal} vectors")
        print(f"time          {seconds:.1f} s")
        print(f"images/s      {len(ds) / seconds:.2f}")
        print(f"vectors/s     {vectors / seconds:,.0f}")
        print(f"peak RSS      {sampler.peak / 2**30:.2f} GiB sampled (before build {rss_before / 2**30:.2f} GiB); "
              f"ru_maxrss {maxrss / 2**30:.2f} GiB")
        print(f"index size    {size / 1e9:.2f} GB on disk ({out})")
    finally:
        if not args.keep:
            shutil.rmtree(tmp or out, ignore_errors=True)


if __name__ == "__main__":
    main()
