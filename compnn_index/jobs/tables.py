"""The papers' tables: accumulators for the rows of ``compnn evaluate`` and their rendering,
with the papers' own Facades figures beside ours.

Row keys (``results.json`` ``rows``): ``method``, ``top_k``, ``source``, ``vs`` and the scores —
``pixel_accuracy``, ``mean_iou`` (and ``iou_per_class``) for label maps, ``l1`` and ``psnr`` for
images, ``mpa`` (mean per-class pixel accuracy) for input reconstructions of label maps.
Methods: ``cnn``; ``compnn`` (the run's ``--search``) and ``compnn_hpm`` (HyperPatch-Match,
when ``--search exact``); global NN ``global_bottleneck`` (bottleneck descriptor),
``global_last`` (the network's output), ``global_penultimate`` (the whole activation of the
layer feeding the last one: "GR (FC7)"), ``global_layer`` (mean cosine of aligned hyperpatches at
the searched layer). Differences vs the CNN are the ``vs: "cnn"`` rows (agreement with the CNN's
output) and ``delta_*`` keys (row minus the CNN's score vs ground truth).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..metrics import confusion_matrix, iou_per_class, mean_pixel_accuracy, pixel_accuracy

#: The papers' Facades figures we can cite. Table 2 of "Patch Correspondences for Interpreting
#: Pixel-level CNNs" (input-reconstruction MPA, labels -> photo, decoder2, top-k); the CNN's
#: pixel accuracy on Facades labels as the two papers print it. Every other cell: None.
PAPER_TABLE2_MPA = {1: 0.723, 16: 0.837, 32: 0.844, 64: 0.846}
PAPER_CNN_PIXEL_ACCURACY = (0.5105, 0.545)


def paper_figures(row: dict) -> dict:
    """``paper_pixel_accuracy`` / ``paper_mean_iou`` / ``paper_mpa`` of a row (None where the
    papers print no figure we can cite)."""
    out = {"paper_pixel_accuracy": None, "paper_mean_iou": None}
    if row["method"] == "cnn" and row["vs"] == "ground_truth":
        out["paper_pixel_accuracy"] = PAPER_CNN_PIXEL_ACCURACY[0]
    if row.get("vs") == "input_labels" and row["method"] == "compnn":
        out["paper_mpa"] = PAPER_TABLE2_MPA.get(row["top_k"])
    return out


def _clean(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


class SegAccumulator:
    """Confusion matrices summed over images, one per table row.

    The ignore label (e.g. CamVid's void, 11): reference pixels that carry it are left out of
    every row; a *predicted* pixel that carries it — a training label pasted by label transfer,
    or a global-NN image's void — counts as wrong, in every row alike (the CNN never predicts
    it). It is counted in an extra "void" prediction column: it lowers pixel accuracy and the
    IoU of the true class, and is no class of its own in the mean IoU.
    """

    def __init__(self, num_classes: int, ignore_index: int | None):
        self.k = num_classes
        self.ignore = ignore_index
        self.cms: dict[tuple, np.ndarray] = {}

    def add(self, key: tuple, pred: np.ndarray, ref: np.ndarray, *, ignore: bool = True) -> None:
        pred, ref = np.asarray(pred), np.asarray(ref)
        if self.ignore is not None:
            if pred.shape == ref.shape:
                keep = ref != self.ignore if ignore else np.ones(ref.shape, dtype=bool)
                pred, ref = pred[keep], ref[keep]
            pred = np.where(pred == self.ignore, self.k, pred)  # the "void" column: wrong
        k = self.k + (self.ignore is not None)
        cm = confusion_matrix(pred, ref, k)
        self.cms[key] = self.cms.get(key, 0) + cm

    def rows(self, *, per_class: bool = True, mpa: bool = False) -> list[dict]:
        out = []
        for (method, top_k, source, vs), cm in self.cms.items():
            iou = iou_per_class(cm)[: self.k]
            present = ~np.isnan(iou)
            r = {"method": method, "top_k": top_k, "source": source, "vs": vs,
                 "pixel_accuracy": float(pixel_accuracy(cm)),
                 "mean_iou": float(iou[present].mean()) if present.any() else float("nan")}
            if per_class:
                # per class (index order); None where the class is in neither map
                r["iou_per_class"] = [_clean(v) for v in iou]
                r["class_iou"] = r["iou_per_class"]
            if mpa:
                r["mpa"] = float(mean_pixel_accuracy(cm))
            out.append(r)
        return out


def add_deltas(rows: list[dict]) -> None:
    """``delta_pixel_accuracy`` / ``delta_mean_iou``: a ground-truth row minus the CNN's."""
    cnn = next((r for r in rows if r["method"] == "cnn" and r["vs"] == "ground_truth"), None)
    if cnn is None or "mean_iou" not in cnn:
        return
    for r in rows:
        if r["vs"] == "ground_truth" and r["method"] != "cnn" and "mean_iou" in r:
            r["delta_pixel_accuracy"] = r["pixel_accuracy"] - cnn["pixel_accuracy"]
            r["delta_mean_iou"] = r["mean_iou"] - cnn["mean_iou"]


def render_table(rows: list[dict], columns: Sequence[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    lines = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            cells.append(f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def render_per_class(rows: list[dict], class_names: Sequence[str] | None) -> str:
    """Per-class IoU of the ground-truth rows, one column per class."""
    rows = [r for r in rows if r.get("vs") == "ground_truth" and r.get("iou_per_class")]
    if not rows:
        return ""
    k = len(rows[0]["iou_per_class"])
    names = list(class_names or [str(i) for i in range(k)])[:k]
    head = "| method | top_k | source | " + " | ".join(names) + " |\n|" + "---|" * (3 + k) + "\n"
    body = []
    for r in rows:
        vals = ["" if v is None else f"{v:.3f}" for v in r["iou_per_class"]]
        body.append(f"| {r['method']} | {'' if r['top_k'] is None else r['top_k']} | "
                    f"{r['source'] or ''} | " + " | ".join(vals) + " |")
    return head + "\n".join(body) + "\n"


def table1(rows: list[dict]) -> list[dict]:
    """Table 1 of both papers (segmentation), in the papers.json schema."""
    out = []
    for r in rows:
        if "mean_iou" not in r or r.get("vs") == "input_labels":
            continue
        out.append({k: r.get(k) for k in ("method", "top_k", "source", "vs", "pixel_accuracy", "mean_iou")}
                   | paper_figures(r))
    return out


def table2(rows: list[dict]) -> list[dict]:
    """Table 2 (input-reconstruction MPA of a labels -> photo network) in the papers.json schema."""
    return [{"method": r["method"], "top_k": r["top_k"], "mpa": r.get("mpa"),
             "pixel_accuracy": r["pixel_accuracy"], "paper_mpa": PAPER_TABLE2_MPA.get(r["top_k"])
             if r["method"] == "compnn" else None}
            for r in rows if r.get("vs") == "input_labels"]
