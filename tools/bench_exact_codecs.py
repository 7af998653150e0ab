"""Exact search GFLOP/s per codec, measured in one run (rounds alternate between the stores).

The query is ``--queries`` hyperpatches of a database image (its own stored fp32 vectors, so no
model is needed), searched against ``--images`` other images of every store; each round runs
every codec once, so a load change on a shared machine hits them all alike. Reports the best and
median GFLOP/s per codec and their ratio to fp32, plus how often the codec's top-1 equals fp32's
and the mean similarity ratio.

    python tools/bench_exact_codecs.py /work/stores/codecs/seg_fp32,/work/stores/codecs/seg_fp16,/work/stores/codecs/seg_sq8
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from compnn_index.cli import _str_list
from compnn_index.index import IndexStore
from compnn_index.search import exact_search


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stores", type=_str_list)
    p.add_argument("--layer", default="decoder2")
    p.add_argument("--query-image", type=int, default=0)
    p.add_argument("--queries", type=int, default=4096)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()

    layers = [IndexStore.open(s).layer(a.layer) for s in a.stores]
    ref = layers[0]
    if ref.codec != "fp32":
        raise SystemExit("the first store must be fp32")
    a0, _ = ref.image_range(a.query_image)
    q = np.array(ref.vectors[a0: a0 + a.queries]).reshape(1, -1, ref.dim)
    images = [i for i in range(ref.num_images) if i != a.query_image][: a.images]
    flop = 2.0 * q.shape[1] * ref.positions(np.asarray(images)) * ref.dim
    for lv in layers:  # warm the page cache
        exact_search(q[:, :64], lv, images)
    times = {lv.codec: [] for lv in layers}
    fields = {}
    for _ in range(a.rounds):
        for lv in layers:
            t = time.perf_counter()
            fields[lv.codec] = exact_search(q, lv, images)
            times[lv.codec].append(time.perf_counter() - t)
    base = fields["fp32"]
    best32 = flop / min(times["fp32"]) / 1e9
    med32 = flop / float(np.median(times["fp32"])) / 1e9
    print(f"{q.shape[1]} queries x {ref.positions(np.asarray(images))} vectors x {ref.dim} dims = {flop / 1e9:.0f} GFLOP, "
          f"{a.rounds} alternating rounds")
    print("| codec | best GFLOP/s | median GFLOP/s | best vs fp32 | median vs fp32 | same top-1 as fp32 | sim. ratio |")
    print("|---|---|---|---|---|---|---|")
    for codec, ts in times.items():
        best, med = flop / min(ts) / 1e9, flop / float(np.median(ts)) / 1e9
        f = fields[codec]
        same = float(np.mean((f.image == base.image) & (f.y == base.y) & (f.x == base.x)))
        ratio = float(np.mean(f.similarity / base.similarity))
        print(f"| {codec} | {best:.1f} | {med:.1f} | {best / best32:.3f} | {med / med32:.3f} | {same:.4f} | {ratio:.5f} |")


if __name__ == "__main__":
    main()
