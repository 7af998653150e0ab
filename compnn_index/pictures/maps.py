"""Explanation pictures: correspondence maps and correspondence lines."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..compose import resolve_geometry, source_map, used_mask
from ..errors import QueryError
from ..search.field import NNField
from .convert import OTHER_COLOUR, PictureLike, as_rgb, outline_region, source_colours
from .layout import grid



# --------------------------------------------------------------------------- correspondence map


def _lookup(source: Mapping | Sequence | Callable | None, key: int, what: str) -> Any:
    if source is None:
        return None
    try:
        return source(key) if callable(source) else source[key]
    except (KeyError, IndexError) as exc:
        raise QueryError(f"{what}: no entry for database image id {key}") from exc


def correspondence_map(
    field: NNField,
    spec: Any = None,
    *,
    stride: int | None = None,
    region: int | None = None,
    out_size: tuple[int, int],
    db_images: Mapping[int, PictureLike] | Callable[[int], PictureLike],
    query_image: PictureLike | None = None,
    max_sources: int = 8,
    names: Mapping[int, str] | Sequence[str] | Callable[[int], str] | None = None,
    alpha: float = 0.6,
    thumb_height: int | None = None,
) -> Image.Image:
    """Picture of which training image each output pixel came from (CompNN papers, Fig. 7 / 11).

    Left: the output pixels coloured by their source image (:func:`compnn_index.compose.source_map`),
    one colour per top source, grey for the rest, blended over ``query_image`` if given. Right:
    the ``max_sources`` most-used training images, in order of their share of output pixels, each
    with the blocks the field matched in it outlined in its colour (2 px) and the rest faded,
    captioned ``#id name: share``.

    Parameters
    ----------
    field : NNField
    spec : LayerSpec-like, optional
        Alternative to ``stride``/``region``.
    stride, region : int, optional
    out_size : (int, int)
        ``(H, W)`` of the query output.
    db_images : mapping or callable
        Database image id -> picture (uint8 ``(H, W, 3)``, float ``(3, H, W)``, or PIL).
    query_image : picture, optional
        Drawn under the colours (``alpha`` = opacity of the colours); must be ``out_size``.
    max_sources : int
        Number of sources shown with their own colour.
    names : mapping, sequence or callable, optional
        Database image id -> name for the captions.
    alpha : float
    thumb_height : int, optional
        Height of each training-image thumbnail (default: half the map height, two rows).

    Returns
    -------
    PIL.Image.Image (RGB)
    """
    stride, region = resolve_geometry(spec, stride, region)
    if isinstance(max_sources, bool) or not isinstance(max_sources, (int, np.integer)) or max_sources < 1:
        raise QueryError(f"Expected max_sources to be a positive int, got max_sources = {max_sources!r}")
    sm = source_map(field, stride=stride, region=region, out_size=out_size)
    h, w = sm.shape
    ids, counts = np.unique(sm, return_counts=True)
    order = np.lexsort((ids, -counts))  # most pixels first, ties to the lowest id
    top, top_counts = ids[order][:max_sources], counts[order][:max_sources]
    colours = source_colours(len(top))

    by_rank = np.tile(np.array(OTHER_COLOUR, np.uint8), (len(ids), 1))  # colour per unique id
    by_rank[order[:max_sources]] = colours
    left = by_rank[np.searchsorted(ids, sm)]
    if query_image is not None:
        q = as_rgb(query_image)
        if q.shape[:2] != (h, w):
            raise QueryError(f"Expected query_image of out_size {(h, w)}, got shape {q.shape[:2]}")
        left = np.rint(alpha * left + (1.0 - alpha) * q).astype(np.uint8)
    other_share = 1.0 - top_counts.sum() / sm.size

    th = thumb_height or max(32, h // 2)
    thumbs, caps = [], []
    for i, (n, cnt) in enumerate(zip(top.tolist(), top_counts.tolist())):
        img = as_rgb(_lookup(db_images, n, "db_images"))
        mask = used_mask(field, n, stride=stride, region=region, source_size=img.shape[:2])
        size = (max(1, round(img.shape[1] * th / img.shape[0])), th)  # outline at thumbnail scale
        img = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
        thumb = outline_region(img, mask, colours[i])
        thumb[:5] = colours[i]  # colour key along the top edge
        thumbs.append(thumb)
        name = _lookup(names, n, "names")
        caps.append(f"#{n}{' ' + str(name) if name is not None else ''}: {cnt / sm.size:.1%}")

    ncols = -(-len(thumbs) // 2) if len(thumbs) > 2 else len(thumbs)
    rows = [thumbs[i : i + ncols] for i in range(0, len(thumbs), ncols)]
    cap_rows = [caps[i : i + ncols] for i in range(0, len(caps), ncols)]
    legend = "output pixels by source image"
    if other_share > 0:
        legend += f"; grey = other ({other_share:.1%})"
    left_panel = grid([[left]], [[legend]])
    right_panel = grid(rows, cap_rows)
    canvas = Image.new("RGB", (left_panel.width + right_panel.width, max(left_panel.height, right_panel.height)), "white")
    canvas.paste(left_panel, (0, 0))
    canvas.paste(right_panel, (left_panel.width, 0))
    return canvas


# --------------------------------------------------------------------------- correspondence lines


def correspondence_pairs(
    image_a: PictureLike,
    image_b: PictureLike,
    field_ab: NNField,
    spec: Any = None,
    *,
    stride: int | None = None,
    region: int | None = None,
    n_lines: int = 40,
    seed: int = 0,
    gap: int = 16,
) -> Image.Image:
    """Two images side by side, with lines joining a sample of matched points.

    ``field_ab`` matches positions of image A's grid to positions in image B (its image ids are not
    used). Each line joins block centres ``(y*stride + region/2, x*stride + region/2)`` and is
    coloured by its position in A (red grows left to right, green top to bottom), so a smooth
    colour layout in B means the correspondences keep the geometry.

    Parameters
    ----------
    image_a, image_b : picture (see :func:`as_rgb`)
    field_ab : NNField
    spec : LayerSpec-like, optional
    stride, region : int, optional
    n_lines : int
        Number of positions drawn (sampled without replacement; all if fewer).
    seed : int
        Seed of the sample.
    gap : int
        Pixels between the two images.

    Returns
    -------
    PIL.Image.Image (RGB), width ``W_a + gap + W_b``, height ``max(H_a, H_b)``
    """
    stride, region = resolve_geometry(spec, stride, region)
    if not isinstance(field_ab, NNField):
        raise QueryError(f"Expected field_ab to be an NNField, got {type(field_ab).__name__}")
    if isinstance(n_lines, bool) or not isinstance(n_lines, (int, np.integer)) or n_lines < 0:
        raise QueryError(f"Expected n_lines to be an int >= 0, got n_lines = {n_lines!r}")
    a, b = as_rgb(image_a), as_rgb(image_b)
    (ha, wa), (hb, wb) = a.shape[:2], b.shape[:2]
    canvas = Image.new("RGB", (wa + gap + wb, max(ha, hb)), "white")
    canvas.paste(Image.fromarray(a), (0, 0))
    canvas.paste(Image.fromarray(b), (wa + gap, 0))
    hq, wq = field_ab.shape
    take = np.random.default_rng(seed).choice(hq * wq, size=min(n_lines, hq * wq), replace=False)
    qy, qx = np.divmod(take, wq)
    half = region / 2.0
    ya = np.clip(qy * stride + half, 0, ha - 1)
    xa = np.clip(qx * stride + half, 0, wa - 1)
    yb = np.clip(field_ab.y.ravel()[take] * stride + half, 0, hb - 1)
    xb = np.clip(field_ab.x.ravel()[take] * stride + half, 0, wb - 1) + wa + gap
    draw = ImageDraw.Draw(canvas)
    r = 3
    for y0, x0, y1, x1 in zip(ya, xa, yb, xb):
        colour = (int(255 * x0 / max(wa - 1, 1)), int(255 * y0 / max(ha - 1, 1)), int(255 * (1 - x0 / max(wa - 1, 1))))
        draw.line([(x0, y0), (x1, y1)], fill=(0, 0, 0), width=4)  # dark casing for contrast
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=2)
        for cx, cy in ((x0, y0), (x1, y1)):
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour, outline=(0, 0, 0))
    return canvas

