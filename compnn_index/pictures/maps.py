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
from .legend import LegendEntry, legend_panel



# --------------------------------------------------------------------------- correspondence map


def _lookup(source: Mapping | Sequence | Callable | None, key: int, what: str) -> Any:
    if source is None:
        return None
    try:
        return source(key) if callable(source) else source[key]
    except (KeyError, IndexError) as exc:
        raise QueryError(f"{what}: no entry for database image id {key}") from exc


def _grey(rgb: np.ndarray) -> np.ndarray:
    """A light grey version of ``rgb`` (float (H, W, 3) in [150, 235]): the stage for colours."""
    lum = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat((150.0 + lum * (85.0 / 255.0))[..., None], 3, axis=-1)


def _region_edges(ids: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour comes from another source (the borders between sources)."""
    edge = np.zeros(ids.shape, bool)
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]
    return edge


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
    alpha: float = 0.55,
    thumb_height: int | None = None,
    min_size: int = 256,
    class_entries: Sequence[LegendEntry] | None = None,
) -> Image.Image:
    """Picture of which training image each output pixel came from (CompNN papers, Fig. 7 / 11).

    Left, enlarged to at least ``min_size`` pixels (nearest neighbour, so every query pixel is a
    visible block): the query's output (``query_image``) in light grey, each pixel filled with the
    colour of its source image (:func:`compnn_index.compose.source_map`) at opacity ``alpha``, the
    borders between sources drawn dark; sources beyond the ``max_sources`` most used are left
    grey ("other"). Right: the pasted pictures of those sources (``db_images``, normally their
    *outputs*: what was pasted), in order of their share, each framed in its colour with the
    blocks the field used outlined and the rest faded, captioned ``#id name · share``; under
    them the class legend (``class_entries``) when the outputs are label maps.

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
        The grey stage under the colours (the query's output, or its input); must be ``out_size``.
        Without it the colours are drawn at full strength.
    max_sources : int
        Number of sources shown with their own colour.
    names : mapping, sequence or callable, optional
        Database image id -> name for the captions.
    alpha : float
        Opacity of the source colours over the grey stage.
    thumb_height : int, optional
        Height of each source thumbnail (default: about half the enlarged map, two rows).
    min_size : int
        The map is enlarged by an integer factor until its longer side is at least this.
    class_entries : legend entries, optional
        Drawn under the thumbnails (the class legend of label-map outputs).

    Returns
    -------
    PIL.Image.Image (RGB) whose ``legend`` lists a :class:`LegendEntry` per coloured source
    (``kind="source"``, ``key`` = image id, ``share``), then "other" if any pixel is other, then
    ``class_entries``.
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

    rank = np.full(len(ids), -1, np.int64)
    rank[order[:max_sources]] = np.arange(len(top))
    pix_rank = rank[np.searchsorted(ids, sm)]  # -1 = other
    table = np.vstack([colours, np.array(OTHER_COLOUR, np.uint8)[None]]).astype(np.float32)
    fill = table[pix_rank]  # rank -1 picks the last row: other
    if query_image is not None:
        q = as_rgb(query_image)
        if q.shape[:2] != (h, w):
            raise QueryError(f"Expected query_image of out_size {(h, w)}, got shape {q.shape[:2]}")
        stage = _grey(q)
        left = np.where((pix_rank >= 0)[..., None], alpha * fill + (1.0 - alpha) * stage, stage)
    else:
        left = fill
    scale = max(1, -(-int(min_size) // max(h, w)))
    left = np.repeat(np.repeat(np.rint(left).astype(np.uint8), scale, 0), scale, 1)
    big_ids = np.repeat(np.repeat(pix_rank, scale, 0), scale, 1)
    edges = _region_edges(big_ids)
    if scale >= 3:  # two-pixel borders once the map is enlarged
        edges |= np.roll(edges, 1, 0) | np.roll(edges, 1, 1)
    left[edges] = (40, 40, 40)
    other_share = 1.0 - top_counts.sum() / sm.size

    th = thumb_height or max(64, left.shape[0] // 2 - 24)
    thumbs, caps, entries = [], [], []
    for i, (n, cnt) in enumerate(zip(top.tolist(), top_counts.tolist())):
        img = as_rgb(_lookup(db_images, n, "db_images"))
        mask = used_mask(field, n, stride=stride, region=region, source_size=img.shape[:2])
        size = (max(1, round(img.shape[1] * th / img.shape[0])), th)  # outline at thumbnail scale
        img = np.asarray(Image.fromarray(img).resize(size, Image.NEAREST))
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
        thumb = outline_region(img, mask, colours[i], width=max(2, th // 40), dim=0.55)
        framed = np.empty((th + 8, size[0] + 8, 3), np.uint8)
        framed[:] = colours[i]  # a frame in the source's colour: the key to the map
        framed[4:-4, 4:-4] = thumb
        thumbs.append(framed)
        name = _lookup(names, n, "names")
        label = f"#{n}{' ' + str(name) if name is not None else ''}"
        entries.append(LegendEntry(label, tuple(int(v) for v in colours[i]), int(n), "source", cnt / sm.size))
        caps.append(f"{label} · {cnt / sm.size:.1%}")
    if other_share > 0:
        entries.append(LegendEntry(f"{len(ids) - len(top)} other images", OTHER_COLOUR, None, "other",
                                   float(other_share)))

    ncols = -(-len(thumbs) // 2) if len(thumbs) > 2 else len(thumbs)
    rows = [thumbs[i : i + ncols] for i in range(0, len(thumbs), ncols)]
    cap_rows = [caps[i : i + ncols] for i in range(0, len(caps), ncols)]
    title = f"output pixels by source image: {len(top)} shown"
    if other_share > 0:
        title += f", grey = {len(ids) - len(top)} others ({other_share:.1%})"
    left_panel = grid([[left]], [title], font_size=13)
    right_panel = grid(rows, cap_rows, font_size=12)
    if class_entries:
        legend = legend_panel(list(class_entries), max_height=max(120, left_panel.height - right_panel.height),
                              title="classes")
        stacked = Image.new("RGB", (max(right_panel.width, legend.shape[1] + 6),
                                    right_panel.height + legend.shape[0]), "white")
        stacked.paste(right_panel, (0, 0))
        stacked.paste(Image.fromarray(legend), (6, right_panel.height))
        right_panel = stacked
    canvas = Image.new("RGB", (left_panel.width + right_panel.width, max(left_panel.height, right_panel.height)), "white")
    canvas.paste(left_panel, (0, 0))
    canvas.paste(right_panel, (left_panel.width, 0))
    canvas.legend = entries + list(class_entries or [])
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

