"""Activation prediction: paste matched training positions' target-layer activation vectors,
and score a predicted activation map against the true one.

Which target positions a source match pastes is fixed by the pair's
:class:`~compnn_index.features.PairGeometry` (see :mod:`compnn_index.features.pairs`): query
window ``(jy, jx)`` predicts the ``ratio × ratio`` target block ``ratio*j + offset + (0..ratio-1)``
in both axes, so every target position has exactly one predicting window. If that window is
matched to window ``(my, mx)`` of training image ``n``, target position
``(ratio*jy + offset + dy, ratio*jx + offset + dx)`` receives training image ``n``'s target
activation vector at ``(ratio*my + offset + dy, ratio*mx + offset + dx)`` — the same place in the
matched window's block — clamped to image ``n``'s map where a border block reaches past it.
"""
from __future__ import annotations

import numpy as np

from .errors import QueryError
from .features import PairGeometry, target_index
from .search.field import NNField

__all__ = ["activation_scores", "channel_groups_rgb", "find_pair", "output_agreement", "own_channels",
           "paste_activations"]


def paste_activations(field: NNField, targets: np.ndarray, geom: PairGeometry) -> np.ndarray:
    """The predicted target activation map ``(C, H, W)`` float32.

    Parameters
    ----------
    field : NN field over the pair's window grid ``geom.grid`` (database windows).
    targets : ``(N, C, H, W)`` training target activations (may be a read-only memmap; only the
        images the field names are read).
    geom : the pair's geometry.
    """
    if tuple(field.shape) != tuple(geom.grid):
        raise QueryError(f"activation prediction: the NN field has shape {field.shape}, the pair "
                         f"{geom.key} has a {tuple(geom.grid)} window grid")
    c, th, tw = geom.target_shape
    if targets.ndim != 4 or tuple(targets.shape[1:]) != (c, th, tw):
        raise QueryError(f"activation prediction: expected targets (N, {c}, {th}, {tw}), got {targets.shape}")
    jy, dy, jx, dx = target_index(geom)
    img = field.image[jy[:, None], jx[None, :]]
    sy = np.clip(geom.ratio * field.y[jy[:, None], jx[None, :]] + geom.offset + dy[:, None], 0, th - 1)
    sx = np.clip(geom.ratio * field.x[jy[:, None], jx[None, :]] + geom.offset + dx[None, :], 0, tw - 1)
    used, slot = np.unique(img, return_inverse=True)
    sub = np.asarray(targets[used], dtype=np.float32)  # (U, C, H, W), one read per used image
    pred = sub[slot.reshape(th, tw), :, sy, sx]  # (H, W, C)
    return np.ascontiguousarray(pred.transpose(2, 0, 1))


def activation_scores(pred: np.ndarray, true: np.ndarray, *, channels: slice | None = None) -> dict:
    """Per-position agreement of a predicted activation map with the true one, averaged.

    Returns ``{"cosine", "relative_l2", "exact"}``: mean over positions of the cosine similarity
    of the two C-vectors, of ``||pred - true|| / ||true||`` (positions where the true vector is
    zero are left out), and the fraction of positions predicted exactly (all channels equal).
    ``channels`` restricts to a channel range (e.g. the decoder's own half of a U-Net tap).
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 3:
        raise QueryError(f"activation scores: expected two (C, H, W) maps of one shape, got {p.shape} and {t.shape}")
    if channels is not None:
        p, t = p[channels], t[channels]
    p = p.reshape(p.shape[0], -1)
    t = t.reshape(t.shape[0], -1)
    np_, nt = np.linalg.norm(p, axis=0), np.linalg.norm(t, axis=0)
    both = (np_ > 0) & (nt > 0)
    cos = np.where(both, (p * t).sum(0) / np.where(both, np_ * nt, 1.0), np.where((np_ == 0) & (nt == 0), 1.0, 0.0))
    nz = nt > 0
    rel = np.linalg.norm(p - t, axis=0)[nz] / nt[nz]
    return {"cosine": float(cos.mean()), "relative_l2": float(rel.mean()) if rel.size else 0.0,
            "exact": float(np.mean(np.all(p == t, axis=0)))}


def channel_groups_rgb(act: np.ndarray, groups: int = 4, *, reference: np.ndarray | None = None) -> list[np.ndarray]:
    """The paper's Figure 3 rendering: channels ``3g .. 3g+2`` of ``act`` as one RGB picture.

    Each channel is scaled to [0, 255] by the minimum and maximum of the same channel of
    ``reference`` (default ``act``), so CNN, CompNN and global NN maps drawn against the CNN's
    activation share one colour scale. Returns ``groups`` uint8 ``(H, W, 3)`` arrays.
    """
    a = np.asarray(act, dtype=np.float32)
    ref = a if reference is None else np.asarray(reference, dtype=np.float32)
    out = []
    for g in range(min(groups, a.shape[0] // 3)):
        ch = slice(3 * g, 3 * g + 3)
        lo = ref[ch].min(axis=(1, 2), keepdims=True)
        hi = ref[ch].max(axis=(1, 2), keepdims=True)
        x = np.clip((a[ch] - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
        out.append((x.transpose(1, 2, 0) * 255).round().astype(np.uint8))
    return out


def output_agreement(output: np.ndarray, reference: np.ndarray, *, num_classes: int | None = None) -> dict:
    """How alike a network output is to the CNN's own: labels → pixel accuracy and mean IoU
    (``num_classes`` classes), images → PSNR and L1."""
    from .metrics import confusion_matrix, l1, mean_iou, pixel_accuracy, psnr

    if np.issubdtype(np.asarray(output).dtype, np.integer):
        cm = confusion_matrix(output, reference, int(num_classes))
        return {"pixel_accuracy": pixel_accuracy(cm), "mean_iou": mean_iou(cm)}
    return {"psnr": psnr(output, reference), "l1": l1(output, reference)}


def find_pair(manifest: dict, source: str, target: str, k: int | None = None) -> tuple[PairGeometry, dict]:
    """A store's activation pair ``source -> target`` (``k`` None: the smallest stored window):
    its geometry and its manifest entry (``vectors`` and ``targets`` array names)."""
    entries = manifest.get("predictions") or {}
    found = [e for e in entries.values() if e["source"] == source and e["target"] == target
             and (k is None or e["k"] == k)]
    if not found:
        have = ", ".join(entries) or "none"
        raise QueryError(f"this index stores no activation pair {source}->{target}"
                         f"{'' if k is None else f' with k = {k}'} (stored: {have}); build it "
                         f"with --predict {source}:{target}:{k or 4}")
    entry = min(found, key=lambda e: e["k"])
    return PairGeometry.from_dict(entry), entry


def own_channels(model, tap: str, channels: int) -> slice | None:
    """A U-Net ``decoderN`` tap is cat(decoder N's output, encoder N-1's): the first half is what
    the decoder computed (None for other taps and networks)."""
    if getattr(model, "arch", None) == "unet" and tap.startswith("decoder"):
        return slice(0, channels // 2)
    return None
