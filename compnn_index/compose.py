"""The compositor: paste the database blocks an NN field names into a reconstruction.

Geometry (see ``LayerSpec`` in :mod:`compnn_index.features`): the hyperpatch at feature position
``(y, x)`` stands for the pixel block ``[y*stride, y*stride+region) x [x*stride, x*stride+region)``.
If the NN field matches query position ``(y, x)`` to ``(n, my, mx)``, the compositor copies the
block ``source[n][..., my*stride : my*stride+region, mx*stride : mx*stride+region]`` to the
query block at ``(y*stride, x*stride)``. Blocks overlap when ``region > stride``; overlapping
values are averaged (images, ``mode="mean"``) or voted (class labels, ``mode="vote"``).

Implementation: instead of looping over field positions, every output pixel ``(py, px)`` is
covered by at most ``ceil(region/stride)**2`` blocks (one per "candidate" ``(a, b)``: the
position ``(py//stride - a, px//stride - b)``). The code loops over those few candidates and
does whole-image NumPy gathers, so the cost is ``O(ceil(region/stride)**2 * H * W)``.

Borders: blocks are clipped at the output border and at the source image border. An output
pixel that no block reaches (with "valid" hyperpatch windows and ``region = k*stride`` every pixel
is reached; gaps appear when ``(Hq-1)*stride + region < H``, e.g. a custom ``region < k*stride``
or an ``out_size`` larger than the field's reach) takes the value of the nearest reached pixel
(Euclidean distance, ``scipy.ndimage.distance_transform_edt``).
"""
from __future__ import annotations

from typing import Any, Literal, NamedTuple

import numpy as np

from .errors import QueryError
from .search.field import NNField

__all__ = ["paste", "source_map", "source_coords", "used_mask", "SourceCoords", "resolve_geometry"]


class SourceCoords(NamedTuple):
    """Where each output pixel came from: database image id and pixel row/column in it."""

    image: np.ndarray
    y: np.ndarray
    x: np.ndarray


class _Candidates(NamedTuple):
    """Stacked per-candidate gathers, each of shape ``(m, H, W)``."""

    pos: np.ndarray  # flat field position index (clipped where invalid)
    image: np.ndarray  # database image id of the covering block
    sy: np.ndarray  # source pixel row the block pastes here
    sx: np.ndarray  # source pixel column
    valid: np.ndarray  # bool: this candidate really covers this output pixel


# --------------------------------------------------------------------------- validation helpers


def resolve_geometry(spec: Any = None, stride: int | None = None, region: int | None = None) -> tuple[int, int]:
    """Return ``(stride, region)`` from a LayerSpec-like object or explicit values.

    Parameters
    ----------
    spec : object with ``.stride`` and ``.region`` (``region`` may be None: then ``k*stride``), optional
    stride, region : int, optional
        Used when ``spec`` is not given. ``region`` defaults to ``stride``.

    Raises
    ------
    QueryError
        If both or neither of ``spec`` and ``stride`` are given, or the values are not positive ints.
    """
    if spec is not None:
        if stride is not None or region is not None:
            raise QueryError(
                f"Give either spec or stride/region, not both; got spec = {spec!r}, "
                f"stride = {stride!r}, region = {region!r}"
            )
        if not hasattr(spec, "stride"):
            raise QueryError(f"Expected spec with .stride and .region attributes, got {type(spec).__name__}")
        stride = spec.stride
        region = getattr(spec, "region", None)
        if region is None:
            region = getattr(spec, "k", 1) * stride
    elif stride is None:
        raise QueryError("Expected spec= (a LayerSpec) or stride= and region=, got neither")
    elif region is None:
        region = stride
    for name, v in (("stride", stride), ("region", region)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise QueryError(f"Expected {name} to be a positive int, got {name} = {v!r}")
    return int(stride), int(region)


def _check_out_size(out_size: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in out_size)
        ok = h >= 1 and w >= 1 and all(float(v) == int(v) for v in out_size)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise QueryError(f"Expected out_size = (H, W) with positive ints, got out_size = {out_size!r}")
    return h, w


def _check_field(field: Any, stride: int, out_size: tuple[int, int]) -> None:
    if not isinstance(field, NNField):
        raise QueryError(f"Expected an NNField, got {type(field).__name__}")
    hq, wq = field.shape
    if hq < 1 or wq < 1:
        raise QueryError(f"Expected a non-empty NN field, got shape {field.shape}")
    h, w = out_size
    if (hq - 1) * stride >= h or (wq - 1) * stride >= w:
        raise QueryError(
            f"NN field of shape {field.shape} at stride {stride} reaches pixel "
            f"({(hq - 1) * stride}, {(wq - 1) * stride}), outside out_size = {out_size}"
        )
    if field.image.min() < 0 or field.y.min() < 0 or field.x.min() < 0:
        raise QueryError(
            "Expected NN field image ids and positions >= 0, got minimum image "
            f"{field.image.min()}, y {field.y.min()}, x {field.x.min()} (missing matches?)"
        )


def _check_against_source(field: NNField, stride: int, n: int, hs: int, ws: int) -> None:
    if field.image.max() >= n:
        raise QueryError(
            f"Expected NN field image ids < number of source images, but max image id = "
            f"{field.image.max()}, source images = {n}"
        )
    if field.y.max() * stride >= hs or field.x.max() * stride >= ws:
        raise QueryError(
            f"NN field position (y {field.y.max()}, x {field.x.max()}) at stride {stride} lies "
            f"outside the source images of size ({hs}, {ws})"
        )


# --------------------------------------------------------------------------- core geometry


def _candidates(
    field: NNField, stride: int, region: int, out_size: tuple[int, int], src_hw: tuple[int, int] | None
) -> _Candidates:
    """For every output pixel, the (at most ceil(region/stride)**2) blocks covering it."""
    h, w = out_size
    hq, wq = field.shape
    reach = -(-region // stride)

    def axis(n_out: int, n_grid: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        p = np.arange(n_out)
        out = []
        for a in range(reach):
            q = p // stride - a
            d = p - q * stride
            ok = (q >= 0) & (q < n_grid) & (d < region)
            out.append((np.clip(q, 0, n_grid - 1), d, ok))
        return out

    rows, cols = axis(h, hq), axis(w, wq)
    img_f, y_f, x_f = field.image.ravel(), field.y.ravel(), field.x.ravel()
    m = len(rows) * len(cols)
    pos = np.empty((m, h, w), np.int64)
    image = np.empty((m, h, w), np.int64)
    sy = np.empty((m, h, w), np.int64)
    sx = np.empty((m, h, w), np.int64)
    valid = np.empty((m, h, w), bool)
    i = 0
    for qy, dy, oky in rows:
        for qx, dx, okx in cols:
            p = qy[:, None] * wq + qx[None, :]
            pos[i] = p
            image[i] = img_f[p]
            sy[i] = y_f[p].astype(np.int64) * stride + dy[:, None]
            sx[i] = x_f[p].astype(np.int64) * stride + dx[None, :]
            v = oky[:, None] & okx[None, :]
            if src_hw is not None:
                v = v & (sy[i] < src_hw[0]) & (sx[i] < src_hw[1])
            valid[i] = v
            i += 1
    return _Candidates(pos, image, sy, sx, valid)


def _nearest_fill(values: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Replace uncovered pixels (last two axes) by the value of the nearest covered pixel."""
    if covered.all():
        return values
    from scipy.ndimage import distance_transform_edt

    iy, ix = distance_transform_edt(~covered, return_distances=False, return_indices=True)
    return values[..., iy, ix]


def _mode(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel most frequent value over axis 0 among valid entries; ties go to the lowest value.

    Pairwise comparison of the ``m = ceil(region/stride)**2`` candidates: ``O(m**2 * H * W)``,
    independent of the number of classes or image ids (m = 4 for 2x2 windows).
    Returns ``(winner, has_vote)``; ``winner`` is 0 where no entry is valid.
    """
    m = values.shape[0]
    counts = np.zeros(values.shape, np.int32)
    for j in range(m):
        for i in range(m):
            counts[j] += (values[i] == values[j]) & valid[i]
    counts[~valid] = -1
    best = counts.max(axis=0)
    big = np.iinfo(np.int64).max
    winner = np.where((counts == best) & valid, values, big).min(axis=0)
    has_vote = valid.any(axis=0)
    return np.where(has_vote, winner, 0), has_vote


# --------------------------------------------------------------------------- public API


def paste(
    field: NNField,
    spec: Any = None,
    source: np.ndarray | None = None,
    *,
    stride: int | None = None,
    region: int | None = None,
    out_size: tuple[int, int],
    mode: Literal["mean", "vote"] = "mean",
    num_classes: int | None = None,
    ignore_index: int | None = None,
) -> np.ndarray:
    """Paste the database blocks named by an NN field into one output image.

    Parameters
    ----------
    field : NNField
        Query grid ``(Hq, Wq)`` of matches ``(image, y, x)``.
    spec : LayerSpec-like, optional
        Any object with ``.stride`` and ``.region``; alternative to ``stride``/``region``.
    source : ndarray
        ``(N, C, H, W)`` float images (e.g. training targets in ``[-1, 1]``) for ``mode="mean"``,
        or ``(N, H, W)`` integer class labels for ``mode="vote"``, indexed by database image id.
        May be a read-only ``np.memmap``: only the images the field uses are read.
    stride, region : int, optional
        Feature stride and block size in pixels (when ``spec`` is not given).
    out_size : (int, int)
        ``(H, W)`` of the output.
    mode : {"mean", "vote"}
        ``"mean"`` averages overlapping blocks; ``"vote"`` takes the most frequent label per pixel
        (ties to the lowest class).
    num_classes : int, optional
        For ``mode="vote"``: labels must lie in ``[0, num_classes)`` (or equal ``ignore_index``).
    ignore_index : int, optional
        For ``mode="vote"``: source pixels with this label do not vote; output pixels that get no
        vote are set to ``ignore_index`` (0 if it is None).

    Returns
    -------
    ndarray
        ``(C, H, W)`` float32 for ``"mean"``, ``(H, W)`` int64 for ``"vote"``. Pixels no block
        reaches take the value of the nearest reached pixel (see module docstring).

    Raises
    ------
    QueryError
        On an inconsistent geometry, mode, source shape/dtype, or field ids/positions outside the
        source.
    """
    stride, region = resolve_geometry(spec, stride, region)
    out_size = _check_out_size(out_size)
    _check_field(field, stride, out_size)
    if source is None:
        raise QueryError("Expected source = training images (N, C, H, W) or labels (N, H, W), got None")
    if mode not in ("mean", "vote"):
        raise QueryError(f"Expected mode 'mean' or 'vote', got mode = {mode!r}")
    is_int = np.issubdtype(source.dtype, np.integer)
    if mode == "mean":
        if source.ndim != 4 or not np.issubdtype(source.dtype, np.floating):
            hint = "; use mode='vote' for class labels" if is_int else ""
            raise QueryError(
                f"mode='mean' expects a float source of shape (N, C, H, W), got dtype {source.dtype} "
                f"shape {source.shape}{hint}"
            )
        n, c, hs, ws = source.shape
    else:
        if source.ndim != 3 or not is_int:
            raise QueryError(
                f"mode='vote' expects integer labels of shape (N, H, W), got dtype {source.dtype} "
                f"shape {source.shape}"
            )
        n, hs, ws = source.shape
        if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) < 1):
            raise QueryError(f"Expected num_classes to be a positive int, got num_classes = {num_classes!r}")
    _check_against_source(field, stride, n, hs, ws)

    cand = _candidates(field, stride, region, out_size, (hs, ws))
    # Only the pixels the blocks cover are read (fancy indexing of a memmap reads those pages):
    # a whole-set field matches hundreds of images, whose whole planes would cost ~0.4 MB each.
    # Invalid entries read pixel (0, 0) of a used image and get weight 0.
    img = np.where(cand.valid, cand.image, field.image.flat[0])
    sy = np.where(cand.valid, cand.sy, 0)
    sx = np.where(cand.valid, cand.sx, 0)
    covered = cand.valid.any(axis=0)

    if mode == "mean":
        acc = np.zeros((c, *out_size), np.float64)  # float64: sums of equal float32 values are exact
        for i in range(img.shape[0]):
            for ch in range(c):
                acc[ch] += np.where(cand.valid[i], source[img[i], ch, sy[i], sx[i]], 0.0)
        count = cand.valid.sum(axis=0)
        out = (acc / np.maximum(count, 1.0)).astype(np.float32)
        return np.ascontiguousarray(_nearest_fill(out, covered))

    labels = np.asarray(source[img, sy, sx]).astype(np.int64)
    _check_labels(labels[cand.valid], num_classes, ignore_index)
    votes = cand.valid if ignore_index is None else cand.valid & (labels != ignore_index)
    winner, has_vote = _mode(labels, votes)
    out = np.where(has_vote, winner, 0 if ignore_index is None else ignore_index)
    return _nearest_fill(out, covered).astype(np.int64)


def _check_labels(sub: np.ndarray, num_classes: int | None, ignore_index: int | None) -> None:
    vals = sub if ignore_index is None else sub[sub != ignore_index]
    if vals.size == 0:
        return
    lo, hi = int(vals.min()), int(vals.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        raise QueryError(
            f"Expected source labels in [0, {num_classes if num_classes is not None else 'inf'}) "
            f"or ignore_index = {ignore_index}, got labels in [{lo}, {hi}]"
        )


def source_map(
    field: NNField,
    spec: Any = None,
    *,
    stride: int | None = None,
    region: int | None = None,
    out_size: tuple[int, int],
) -> np.ndarray:
    """Which database image each output pixel came from.

    Each output pixel takes the image id that most of the blocks covering it come from (ties to
    the lowest id); pixels no block reaches take the nearest reached pixel's id.

    Parameters
    ----------
    field : NNField
    spec : LayerSpec-like, optional
        Alternative to ``stride``/``region``.
    stride, region : int, optional
    out_size : (int, int)

    Returns
    -------
    ndarray of int64, shape (H, W)
    """
    stride, region = resolve_geometry(spec, stride, region)
    out_size = _check_out_size(out_size)
    _check_field(field, stride, out_size)
    cand = _candidates(field, stride, region, out_size, None)
    winner, has_vote = _mode(cand.image, cand.valid)
    return _nearest_fill(winner, has_vote).astype(np.int64)


def source_coords(
    field: NNField,
    spec: Any = None,
    *,
    stride: int | None = None,
    region: int | None = None,
    out_size: tuple[int, int],
    at: Literal["pixel", "centre"] = "pixel",
) -> SourceCoords:
    """For each output pixel, the database image and source pixel it came from.

    The image is :func:`source_map`'s vote. Among the blocks from that image covering the pixel,
    the one with the highest similarity wins (ties to the first); with ``at="pixel"`` the result is
    the source pixel that block pasted here, with ``at="centre"`` the centre of that block
    (``my*stride + region//2``). Pixels no block reaches copy the nearest reached pixel.

    Returns
    -------
    SourceCoords
        ``(image, y, x)``, each int64 of shape ``(H, W)``.
    """
    if at not in ("pixel", "centre"):
        raise QueryError(f"Expected at 'pixel' or 'centre', got at = {at!r}")
    stride, region = resolve_geometry(spec, stride, region)
    out_size = _check_out_size(out_size)
    _check_field(field, stride, out_size)
    cand = _candidates(field, stride, region, out_size, None)
    winner, has_vote = _mode(cand.image, cand.valid)
    sim = field.similarity.ravel()[cand.pos]
    sim = np.where(cand.valid & (cand.image == winner[None]), sim, -np.inf)
    pick = np.argmax(sim, axis=0)[None]
    sy = np.take_along_axis(cand.sy, pick, 0)[0]
    sx = np.take_along_axis(cand.sx, pick, 0)[0]
    if at == "centre":
        p = np.take_along_axis(cand.pos, pick, 0)[0]
        sy = field.y.ravel()[p].astype(np.int64) * stride + region // 2
        sx = field.x.ravel()[p].astype(np.int64) * stride + region // 2
    stacked = _nearest_fill(np.stack([winner, sy, sx]), has_vote).astype(np.int64)
    return SourceCoords(stacked[0], stacked[1], stacked[2])


def used_mask(
    field: NNField,
    image_id: int,
    spec: Any = None,
    *,
    stride: int | None = None,
    region: int | None = None,
    source_size: tuple[int, int],
) -> np.ndarray:
    """The pixels of database image ``image_id`` that the field's matched blocks cover.

    Parameters
    ----------
    field : NNField
    image_id : int
    spec, stride, region
        Geometry, as in :func:`paste`.
    source_size : (int, int)
        ``(H, W)`` of the database image; blocks are clipped to it.

    Returns
    -------
    ndarray of bool, shape ``source_size``
    """
    stride, region = resolve_geometry(spec, stride, region)
    h, w = _check_out_size(source_size)
    sel = field.image == image_id
    y0 = field.y[sel].astype(np.int64) * stride
    x0 = field.x[sel].astype(np.int64) * stride
    keep = (y0 < h) & (x0 < w)
    y0, x0 = y0[keep], x0[keep]
    y1, x1 = np.minimum(y0 + region, h), np.minimum(x0 + region, w)
    diff = np.zeros((h + 1, w + 1), np.int64)  # 2-D difference array: +1/-1 at block corners
    np.add.at(diff, (y0, x0), 1)
    np.add.at(diff, (y0, x1), -1)
    np.add.at(diff, (y1, x0), -1)
    np.add.at(diff, (y1, x1), 1)
    return diff.cumsum(0).cumsum(1)[:h, :w] > 0
