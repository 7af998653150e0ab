"""The papers' tables: accumulators for the rows of ``compnn evaluate``, their pooling over
per-image records (with bootstrap intervals, :mod:`.stats`) and their rendering. The papers' own
Facades figures and where they apply: :mod:`.papers`.

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

import json
from typing import Sequence

import numpy as np

from ..metrics import confusion_matrix, iou_per_class, mean_pixel_accuracy, pixel_accuracy
from .papers import PAPER_KEYS, Claim, PaperContext
from .stats import boot_cm, boot_mean, ci95, cm_metric, paired_difference

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
    keys = ("method", "top_k", "source", "vs", "pixel_accuracy", "mean_iou", "n_images", "ci95") + PAPER_KEYS
    return [{k: r.get(k) for k in keys} for r in rows if "mean_iou" in r and r.get("vs") != "input_labels"]


def table2(rows: list[dict]) -> list[dict]:
    """Table 2 (input-reconstruction MPA of a labels -> photo network) in the papers.json schema."""
    return [{"method": r["method"], "top_k": r["top_k"], "mpa": r.get("mpa"), "pixel_accuracy": r["pixel_accuracy"],
             "paper_mpa": r.get("paper_mpa"), "n_images": r.get("n_images"), "ci95": r.get("ci95")}
            for r in rows if r.get("vs") == "input_labels"]


# ---------------------------------------------------------------------------- per-image records
def key_text(key: tuple) -> str:
    """A row key ``(method, top_k, source, vs)`` as the JSON text a per-image record stores."""
    return json.dumps([None if v is None else (int(v) if isinstance(v, (int, np.integer)) else str(v)) for v in key])


def key_of(text: str) -> tuple:
    return tuple(json.loads(text))


def _keys(records: list[dict], field: str) -> list[str]:
    keys = list(records[0].get(field, {})) if records else []
    for r in records[1:]:
        if list(r.get(field, {})) != keys:
            raise ValueError(f"per-image records disagree on their {field} rows ({r.get('image')!r})")
    return keys


def pooled_rows(records: list[dict], weights: np.ndarray, *, num_classes: int, ignore_index: int | None,
                field: str = "cms", per_class: bool = True, mpa: bool = False) -> list[dict]:
    """Rows pooled over images from per-image confusion matrices (``record[field]``), each with
    ``n_images`` and ``ci95`` (bootstrap over images of every figure of the row)."""
    acc = SegAccumulator(num_classes, ignore_index)
    stacks = {}
    for key in _keys(records, field):
        stacks[key] = np.asarray([r[field][key] for r in records], dtype=np.int64)
        acc.cms[key_of(key)] = stacks[key].sum(axis=0)
    rows = acc.rows(per_class=per_class, mpa=mpa)
    metrics = ("pixel_accuracy", "mean_iou") + (("mpa",) if mpa else ())
    for row, stack in zip(rows, stacks.values()):
        row["n_images"] = len(records)
        row["ci95"] = {m: ci95(boot_cm(stack, m, num_classes, weights)) for m in metrics}
    return rows


def delta_intervals(records: list[dict], rows: list[dict], weights: np.ndarray, *, num_classes: int) -> None:
    """``ci95["delta_pixel_accuracy"]`` / ``["delta_mean_iou"]`` of every ground-truth row: the paired
    bootstrap interval of its difference from the CNN (both pooled on the same resampled images)."""
    cnn_key = key_text(("cnn", None, None, "ground_truth"))
    if not records or cnn_key not in records[0].get("cms", {}):
        return
    cnn = np.asarray([r["cms"][cnn_key] for r in records], dtype=np.int64)
    base = {m: boot_cm(cnn, m, num_classes, weights) for m in ("pixel_accuracy", "mean_iou")}
    for row in rows:
        if row.get("vs") != "ground_truth" or row.get("method") == "cnn" or "delta_pixel_accuracy" not in row:
            continue
        key = key_text((row["method"], row["top_k"], row["source"], row["vs"]))
        stack = np.asarray([r["cms"][key] for r in records], dtype=np.int64)
        for m in ("pixel_accuracy", "mean_iou"):
            row["ci95"]["delta_" + m] = ci95(boot_cm(stack, m, num_classes, weights) - base[m])


def mean_rows(records: list[dict], weights: np.ndarray, *, field: str = "metrics") -> list[dict]:
    """Rows of per-image image metrics (``l1``, ``psnr``; non-finite PSNRs left out), with intervals."""
    rows = []
    for key in _keys(records, field):
        method, k, src, vs = key_of(key)
        row = {"method": method, "top_k": k, "source": src, "vs": vs, "n_images": len(records), "ci95": {}}
        for m in ("l1", "psnr"):
            vals = np.asarray([float(r[field][key][m]) for r in records], dtype=np.float64)  # "inf" too
            finite = vals[np.isfinite(vals)]
            row[m] = float(finite.mean()) if finite.size else float("inf")
            row["ci95"][m] = ci95(boot_mean(vals, weights))
        rows.append(row)
    return rows


def claim_results(records: list[dict], claims: list[Claim], weights: np.ndarray, *, num_classes: int,
                context: PaperContext) -> list[dict]:
    """Each claim's difference on our images (pooled, both rows on the same resamples) and its
    verdict. Off the papers' Facades the paper figure and the verdict are None (not comparable);
    claims whose rows the run did not produce are left out."""
    keys = set(_keys(records, "cms"))
    out = []
    for c in claims:
        a, b = key_text(c.a + ("ground_truth",)), key_text(c.b + ("ground_truth",))
        if a not in keys or b not in keys:
            continue
        sa, sb = (np.asarray([r["cms"][k] for r in records], dtype=np.int64) for k in (a, b))
        ours = float(cm_metric(sa.sum(0), c.metric, num_classes) - cm_metric(sb.sum(0), c.metric, num_classes))
        test = paired_difference(boot_cm(sa, c.metric, num_classes, weights), boot_cm(sb, c.metric, num_classes, weights),
                                 n_images=len(records), paper=c.paper if context.table1 else None)
        out.append({"id": c.id, "claim": c.text, "paper_source": c.source, "metric": c.metric,
                    "a": list(c.a), "b": list(c.b), "ours": ours, **test})
    return out
