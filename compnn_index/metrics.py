"""Metrics for reconstructions and for approximate search.

Segmentation: a confusion matrix (rows = target class, columns = predicted class, as in
``sklearn.metrics.confusion_matrix``) and the scores derived from it. Images: L1 and PSNR for
``[-1, 1]`` images. Search: recall@1 and similarity ratio of an approximate NN field against the
exact one.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import DataError
from .search.field import NNField

__all__ = [
    "confusion_matrix",
    "pixel_accuracy",
    "mean_pixel_accuracy",
    "iou_per_class",
    "mean_iou",
    "l1",
    "psnr",
    "ssim",
    "recall_at_1",
    "similarity_ratio",
]


def _same_shape(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise DataError(f"Expected {names[0]} and {names[1]} of one shape, got {names[0]} {a.shape} and {names[1]} {b.shape}")


def confusion_matrix(
    pred: np.ndarray, target: np.ndarray, num_classes: int, *, ignore_index: int | None = None
) -> np.ndarray:
    """Count (target class, predicted class) pairs over all pixels.

    Parameters
    ----------
    pred, target : array_like of int, same shape
        Predicted and true class labels (any shape, e.g. ``(H, W)`` or a batch).
    num_classes : int
        K; labels must lie in ``[0, K)`` unless equal to ``ignore_index``.
    ignore_index : int, optional
        Pixels whose target equals it are skipped. A prediction equal to it (an abstention, e.g.
        a pixel no block voted for in :func:`compnn_index.compose.paste`) is skipped too: fill
        such pixels first if they should count as errors.

    Returns
    -------
    ndarray of int64, shape (K, K)
        ``cm[t, p]`` = number of pixels of true class ``t`` predicted as ``p``.

    Raises
    ------
    DataError
        On a shape mismatch, non-integer labels, or labels outside ``[0, K)``.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    _same_shape(pred, target, ("pred", "target"))
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise DataError(f"Expected num_classes to be a positive int, got num_classes = {num_classes!r}")
    for name, a in (("pred", pred), ("target", target)):
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise DataError(f"Expected integer class labels for {name}, got dtype {a.dtype}")
    p, t = pred.ravel().astype(np.int64), target.ravel().astype(np.int64)
    if ignore_index is not None:
        keep = (t != ignore_index) & (p != ignore_index)
        p, t = p[keep], t[keep]
    for name, a in (("pred", p), ("target", t)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise DataError(
                f"Expected {name} labels in [0, {num_classes}) or ignore_index = {ignore_index}, "
                f"got values in [{a.min()}, {a.max()}]"
            )
    k = int(num_classes)
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def _check_cm(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise DataError(f"Expected a square (K, K) confusion matrix, got shape {cm.shape}")
    return cm.astype(np.float64)


def pixel_accuracy(cm: np.ndarray) -> float:
    """Fraction of counted pixels predicted correctly (``trace / sum``); NaN if none counted."""
    cm = _check_cm(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def mean_pixel_accuracy(cm: np.ndarray) -> float:
    """Per-class recall ``cm[c, c] / cm[c].sum()`` averaged over classes present in the target."""
    cm = _check_cm(cm)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(cm)[present] / support[present]))


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """Intersection over union per class; NaN for classes absent from both target and prediction."""
    cm = _check_cm(cm)
    inter = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over the classes present in the target or the prediction (NaN if none)."""
    iou = iou_per_class(cm)
    present = ~np.isnan(iou)
    return float(iou[present].mean()) if present.any() else float("nan")


def l1(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two arrays of one shape (computed in float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    _same_shape(a, b, ("a", "b"))
    return float(np.abs(a - b).mean())


def psnr(a: np.ndarray, b: np.ndarray, *, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range**2 / MSE)``.

    ``data_range`` is 2.0 for ``[-1, 1]`` images (255 for uint8). Identical inputs give
    ``float('inf')``.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    _same_shape(a, b, ("a", "b"))
    if not data_range > 0:
        raise DataError(f"Expected data_range > 0, got data_range = {data_range!r}")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(data_range**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float = 2.0, sigma: float = 1.5) -> float:
    """Structural similarity (Wang et al. 2004) of two ``(C, H, W)`` or ``(H, W)`` images.

    Gaussian window (``sigma`` 1.5, truncated at 3.5 sigma: the 11×11 window of the paper),
    ``K1 = 0.01``, ``K2 = 0.03``, computed per channel and averaged; 1.0 for identical inputs.
    """
    from scipy.ndimage import gaussian_filter

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    _same_shape(a, b, ("a", "b"))
    if a.ndim == 2:
        a, b = a[None], b[None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for x, y in zip(a, b):
        f = lambda z: gaussian_filter(z, sigma, truncate=3.5, mode="reflect")  # noqa: E731
        mx, my = f(x), f(y)
        vx, vy, cxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
        m = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        vals.append(m.mean())
    return float(np.mean(vals))


def recall_at_1(approx: NNField, exact: NNField, *, tol: float = 1e-5) -> float:
    """Fraction of query positions where the approximate match is as good as the exact one.

    A position counts when the ids agree or the approximate similarity is within ``tol`` of the
    exact one (FAISS does not order ties by id, so equal-similarity matches are both correct).
    """
    _same_shape(approx.image, exact.image, ("approx field", "exact field"))
    same = (approx.image == exact.image) & (approx.y == exact.y) & (approx.x == exact.x)
    as_good = approx.similarity >= exact.similarity - tol
    return float(np.mean(same | as_good))


def similarity_ratio(approx: NNField, exact: NNField) -> float:
    """Mean over positions of approximate / exact similarity (1.0 = as good as exact search).

    Exact similarities are floored at 1e-6 so a zero or negative exact match cannot blow up the mean.
    """
    _same_shape(approx.similarity, exact.similarity, ("approx field", "exact field"))
    ratio = approx.similarity.astype(np.float64) / np.maximum(exact.similarity.astype(np.float64), 1e-6)
    return float(np.mean(ratio))
