"""``compnn evaluate``: the shape of the papers' tables on a dataset split.

Segmentation models (Table 1 of "Do CNNs act as Compositional Nearest Neighbors?"): pixel
accuracy and mean IoU of the CNN, of CompNN (per top-k; original labels and the network's own
"self-supervised" labels as source) and of global NN (bottleneck descriptor; last layer = the network output), each against the
ground truth and against the CNN output.

Translation models (Table 2): input-reconstruction pixel accuracy against the input label map,
and output-reconstruction L1 / PSNR against the CNN output.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from ..options import DEFAULTS, QueryOptions

from ..errors import QueryError
from ..metrics import confusion_matrix, l1, mean_iou, pixel_accuracy, psnr


class _SegAccumulator:
    """Confusion matrices summed over images, one per table row."""

    def __init__(self, num_classes: int, ignore_index: int | None):
        self.k = num_classes
        self.ignore = ignore_index
        self.cms: dict[tuple, np.ndarray] = {}

    def add(self, key: tuple, pred: np.ndarray, ref: np.ndarray, *, ignore: bool = True) -> None:
        cm = confusion_matrix(pred, ref, self.k, ignore_index=self.ignore if ignore else None)
        self.cms[key] = self.cms.get(key, 0) + cm

    def rows(self) -> list[dict]:
        out = []
        for (method, top_k, source, vs), cm in self.cms.items():
            out.append({"method": method, "top_k": top_k, "source": source, "vs": vs,
                        "pixel_accuracy": float(pixel_accuracy(cm)), "mean_iou": float(mean_iou(cm))})
        return out


def _render_table(rows: list[dict], columns: Sequence[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    lines = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            cells.append(f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def evaluate(
    index: str | Path, *, data: str, split: str = "test", direction: str | None = None,
    size: int | None = None, limit: int | None = None, seed: int = 0, layer: str | None = None,
    search: str = "exact", top_k: Sequence[int] = (1, 16, 64), iterations: int = DEFAULTS.iterations,
    init: str = DEFAULTS.init,
    threads: int | None = None, out: str | Path, progress: bool = True, cnn=None,
    examples: int = 4, cluster: str | None = None,
) -> dict:
    """Evaluate CompNN against the CNN and global NN on a dataset split; write the tables."""
    from ..api import CompNN
    from ..data import FACADES_PALETTE, labels_from_colors, open_dataset
    from ..pictures import to_rgb

    cnn = cnn or CompNN.load(index, threads=threads, cluster=cluster)
    man = cnn.store.manifest
    trained = man.get("dataset", {})
    layer = cnn.check_layer(layer)
    top_ks = sorted({int(k) for k in top_k})
    if not top_ks or top_ks[0] < 1:
        raise QueryError(f"Expected --top-k values >= 1, got {list(top_k)}")
    over = [k for k in top_ks if k > cnn.num_images]
    if over:
        raise QueryError(
            f"Expected --top-k <= number of database images ({cnn.num_images}), but got {over}"
        )
    ds = open_dataset(data, split=split, direction=direction or trained.get("direction", "AtoB"),
                      task=cnn.task, size=size or trained.get("size"), limit=limit, seed=seed)
    palette = man.get("palette")
    seg = cnn.task == "segment"
    acc = _SegAccumulator(cnn.num_classes, cnn.ignore_index) if seg else None
    img_metrics: dict[tuple, list[dict]] = defaultdict(list)
    input_acc = _SegAccumulator(len(FACADES_PALETTE), None)
    example_rows = []
    options = QueryOptions(search=search, iterations=iterations, init=init)
    all_ids = np.arange(cnn.num_images, dtype=np.int64)
    levels = cnn.pyramid(layer) if (search == "patchmatch" and init == "coarse") else [layer]
    for i in tqdm(range(len(ds)), desc="evaluate", unit="img", disable=not progress):
        s = ds[i]
        # One forward pass per image serves every top-k and both global baselines.
        with cnn.thread_limits(threads):
            feats = cnn.extract(s.input, levels)
            cnn_out = feats.output
            res = {k: cnn.explain(feats, layer=layer, options=options, top_k=k,
                                  sources=("target", "self", "input")).reconstructions
                   for k in top_ks}
        best_b = int(cnn.shortlist(feats.global_descriptor, all_ids, 1)[0][0])
        best_l = int(all_ids[np.argmax(cnn.output_similarity(cnn_out, all_ids))])
        targets = cnn.array("targets")
        globals_ = {"global_bottleneck": np.asarray(targets[best_b]),
                    "global_last": np.asarray(targets[best_l])}
        if seg:
            acc.add(("cnn", None, None, "ground_truth"), cnn_out, s.target)
            for k, r in res.items():
                for src, tag in (("target", "original"), ("self", "self_supervised")):
                    acc.add(("compnn", k, tag, "ground_truth"), r[src], s.target)
                    acc.add(("compnn", k, tag, "cnn"), r[src], cnn_out, ignore=False)
            for name, pred in globals_.items():
                acc.add((name, None, "original", "ground_truth"), pred, s.target)
                acc.add((name, None, "original", "cnn"), pred, cnn_out, ignore=False)
        else:
            in_labels = labels_from_colors(to_rgb(s.input, None), FACADES_PALETTE)
            img_metrics[("cnn", None, None, "ground_truth")].append(
                {"l1": l1(cnn_out, s.target), "psnr": psnr(cnn_out, s.target)})
            for k, r in res.items():
                rec_in = labels_from_colors(to_rgb(r["input"], None), FACADES_PALETTE)
                input_acc.add(("compnn", k, "input", "input_labels"), rec_in, in_labels)
                for src, tag in (("target", "original"), ("self", "self_supervised")):
                    img_metrics[("compnn", k, tag, "cnn")].append(
                        {"l1": l1(r[src], cnn_out), "psnr": psnr(r[src], cnn_out)})
            for name, pred in globals_.items():
                img_metrics[(name, None, "original", "cnn")].append({"l1": l1(pred, cnn_out), "psnr": psnr(pred, cnn_out)})
        if len(example_rows) < examples:
            best = res[top_ks[-1]]
            row = [to_rgb(s.input, None), to_rgb(s.target, palette), to_rgb(cnn_out, palette),
                   to_rgb(best["target"], palette), to_rgb(globals_["global_bottleneck"], palette)]
            example_rows.append(row)

    rows: list[dict] = []
    if seg:
        rows = acc.rows()
        columns = ["method", "top_k", "source", "vs", "pixel_accuracy", "mean_iou"]
    else:
        for (method, k, src, vs), items in img_metrics.items():
            finite = [m["psnr"] for m in items if np.isfinite(m["psnr"])]
            rows.append({"method": method, "top_k": k, "source": src, "vs": vs,
                         "l1": float(np.mean([m["l1"] for m in items])),
                         "psnr": float(np.mean(finite)) if finite else float("inf")})
        for r in input_acc.rows():
            r.pop("mean_iou", None)
            rows.append(r)
        columns = ["method", "top_k", "source", "vs", "pixel_accuracy", "l1", "psnr"]
    doc = {"index": str(index), "layer": layer, "search": search, "split": split,
           "images": len(ds), "task": cnn.task, "rows": rows}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out / "results.json")
    table = _render_table(rows, columns)
    (out / "results.md").write_text(
        f"# CompNN evaluation: {cnn.task}, layer {layer}, {search} search, {len(ds)} {split} images\n\n" + table)
    if example_rows:
        from ..pictures import grid

        captions = ["input", "ground truth", "CNN output", f"CompNN top-{top_ks[-1]}", "global NN"]
        grid(example_rows, captions).save(out / "examples.png")
    if progress:
        print(table)
        print(f"wrote {out / 'results.json'}")
    doc["markdown"] = table
    return doc
