"""Uncertainty of the tables over test images: bootstrap intervals and paired tests.

A table figure is pooled over the test images (pixel accuracy and IoU from the summed confusion
matrices, L1 / PSNR as means), so its uncertainty is that of the *images drawn*: we resample
images with replacement (``N_BOOT`` times, seeded), recompute the pooled figure each time and
report the 2.5–97.5 percentile interval (``ci95``). A difference between two rows — CompNN vs the
CNN, CompNN vs a global NN — is tested *paired*: both rows are recomputed on the same resampled
images, so what varies from image to image in both (hard facades are hard for every method)
cancels. NumPy only.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

#: Bootstrap resamples (percentile intervals; enough for the 2.5% tails to be stable to ~0.005).
N_BOOT = 2000
#: Fewer test images than this and no verdict is given: their bootstrap is too coarse to judge.
MIN_IMAGES = 10
VERDICTS = ("supports", "contradicts", "cannot tell")


def resample_weights(n: int, *, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """How often each of ``n`` images is drawn in each resample: int64 ``(n_boot, n)``, rows sum to n."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.int64)


def cm_metric(cms: np.ndarray, metric: str, num_classes: int) -> np.ndarray:
    """``metric`` of each confusion matrix in ``cms`` ``(..., K', K')`` (rows = reference).

    ``num_classes`` real classes come first; a further "void" column (the ignore label predicted,
    :class:`~compnn_index.jobs.tables.SegAccumulator`) counts as wrong and is no class of the mean
    IoU. Matches :mod:`compnn_index.metrics` on one matrix (NaN where nothing is counted).
    """
    cms = np.asarray(cms, dtype=np.float64)
    diag = np.diagonal(cms, axis1=-2, axis2=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "pixel_accuracy":
            total = cms.sum(axis=(-2, -1))
            return np.where(total > 0, diag.sum(-1) / np.where(total > 0, total, 1), np.nan)
        if metric == "mean_iou":
            union = cms.sum(-2) + cms.sum(-1) - diag
            iou = np.where(union > 0, diag / np.where(union > 0, union, 1), np.nan)[..., :num_classes]
        elif metric == "mpa":
            support = cms.sum(-1)
            iou = np.where(support > 0, diag / np.where(support > 0, support, 1), np.nan)
        else:
            raise ValueError(f"unknown confusion-matrix metric {metric!r}")
        present = ~np.isnan(iou)
        return np.where(present.any(-1), np.nansum(iou, -1) / np.maximum(present.sum(-1), 1), np.nan)


def boot_cm(cms: np.ndarray, metric: str, num_classes: int, weights: np.ndarray) -> np.ndarray:
    """The pooled ``metric`` of every resample: per-image matrices ``(n, K', K')`` -> ``(n_boot,)``."""
    sums = np.tensordot(weights, np.asarray(cms, dtype=np.float64), axes=1)
    return cm_metric(sums, metric, num_classes)


def boot_mean(values: Sequence[float], weights: np.ndarray) -> np.ndarray:
    """The mean of every resample (non-finite values, e.g. an infinite PSNR, left out)."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ np.where(ok, v, 0.0)) / (weights @ ok.astype(np.float64))


def ci95(samples: np.ndarray) -> list[float] | None:
    """The 2.5 and 97.5 percentiles of the finite resampled values (None when there are none)."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return None
    lo, hi = np.percentile(s, [2.5, 97.5])
    return [float(lo), float(hi)]


def paired_difference(a: np.ndarray, b: np.ndarray, *, n_images: int, paper: float | None,
                      sign: int | None = None) -> dict:
    """Summarise resampled paired differences ``a - b`` against a paper's printed difference
    (``paper``), or against the direction alone (``sign`` +1 / -1) where the paper prints none.

    ``p_value``: two-sided bootstrap p of a zero difference (twice the smaller tail, at most 1).
    ``supports``: the 95% interval lies wholly on the paper's side of zero; ``contradicts``: wholly
    on the other side; ``cannot tell``: it contains zero, or fewer than :data:`MIN_IMAGES` images.
    ``paper_in_ci95``: whether the paper's figure itself lies in our interval.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[np.isfinite(d)]
    interval = ci95(d)
    p = None if d.size == 0 else float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))
    out = {"ci95": interval, "p_value": p, "n_images": int(n_images), "paper": paper,
           "paper_in_ci95": None if interval is None or paper is None else bool(interval[0] <= paper <= interval[1])}
    direction = sign if paper is None else (0 if paper == 0 else (1 if paper > 0 else -1))
    if not direction:
        out["supports"] = None
    elif interval is None or n_images < MIN_IMAGES or interval[0] <= 0 <= interval[1]:
        out["supports"] = "cannot tell"
    else:
        out["supports"] = "supports" if (interval[0] > 0) == (direction > 0) else "contradicts"
    return out
