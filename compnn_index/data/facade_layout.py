"""Label maps of synthetic facades, drawn as filled rectangles in the 12 Facades classes.

Class indices follow :data:`~compnn_index.data.palette.FACADES_CLASSES`: 0 molding (lintel above
a window), 1 background (sky strip and neighbouring lots), 2 facade (wall), 3 window, 4 door,
5 sill, 6 balcony, 7 blind (shutters), 8 deco (pediment above a window), 9 cornice (roof line,
string courses between floors, band above the ground floor), 10 shop (shop fronts), 11 pillar
(pilasters between window columns).

Besides the labels the layout returns a *detail* map for the renderer only (window frames and
mullions, shadows under ledges, shop signs); it never changes a label.
"""
from __future__ import annotations

import numpy as np

from .facade_params import FacadeParams

MOLDING, BACKGROUND, FACADE, WINDOW, DOOR, SILL = 0, 1, 2, 3, 4, 5
BALCONY, BLIND, DECO, CORNICE, SHOP, PILLAR = 6, 7, 8, 9, 10, 11
#: Detail codes (renderer only).
FRAME, SHADOW, SIGN = 1, 2, 3


class _Canvas:
    """A label map and a detail map with clipped rectangle fills in float coordinates."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.labels = np.full((h, w), BACKGROUND, dtype=np.uint8)
        self.detail = np.zeros((h, w), dtype=np.uint8)

    def _slices(self, y0: float, y1: float, x0: float, x1: float) -> tuple[slice, slice]:
        r0, r1 = (min(max(int(round(v)), 0), self.h) for v in (y0, y1))
        c0, c1 = (min(max(int(round(v)), 0), self.w) for v in (x0, x1))
        return slice(r0, r1), slice(c0, c1)

    def fill(self, y0: float, y1: float, x0: float, x1: float, cls: int) -> None:
        self.labels[self._slices(y0, y1, x0, x1)] = cls

    def mark(self, y0: float, y1: float, x0: float, x1: float, code: int) -> None:
        self.detail[self._slices(y0, y1, x0, x1)] = code

    def frame(self, y0: float, y1: float, x0: float, x1: float, t: float) -> None:
        """Outline plus a central mullion and a transom at one third of the height."""
        for args in (
            (y0, y0 + t, x0, x1), (y1 - t, y1, x0, x1), (y0, y1, x0, x0 + t), (y0, y1, x1 - t, x1),
            (y0, y1, (x0 + x1 - t) / 2, (x0 + x1 + t) / 2),
            (y0 + (y1 - y0) / 3 - t / 2, y0 + (y1 - y0) / 3 + t / 2, x0, x1),
        ):
            self.mark(*args, FRAME)


def facade_layout(params: FacadeParams, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Draw the label map of one facade.

    Parameters
    ----------
    params : FacadeParams
        Layout choices (floors, columns, window sizes, shops, balconies, ...).
    size : tuple of int
        ``(H, W)`` in pixels.

    Returns
    -------
    labels : ndarray of uint8, shape (H, W)
        Facades class indices (see the module docstring).
    detail : ndarray of uint8, shape (H, W)
        Renderer hints: 1 frame, 2 shadow, 3 shop sign.
    """
    h, w = size
    p = params
    cv = _Canvas(h, w)
    unit = h / 256.0  # scale of thin features; 1 px at 256
    t = max(1.0, unit)
    sky = max(1.0, p.sky * h)
    bx0, bx1 = p.margin_left * w, w - p.margin_right * w
    cv.fill(sky, h, bx0, bx1, FACADE)

    roof = max(2.0, 0.03 * h)
    cv.fill(sky, sky + roof, bx0, bx1, CORNICE)
    cv.mark(sky + roof, sky + roof + max(1.0, 0.4 * roof), bx0, bx1, SHADOW)

    ground_top = h - p.ground * (h - sky)
    top = sky + roof + 0.025 * h
    floor_h = (ground_top - top) / p.floors
    edge = 0.04 * (bx1 - bx0)
    pitch = (bx1 - bx0 - 2 * edge) / p.columns
    ww = p.window_width * pitch
    wh = p.window_height * floor_h
    centres = [bx0 + edge + (c + 0.5) * pitch for c in range(p.columns)]
    ledge = max(1.0, 0.012 * h)

    if p.pillars:
        pw = max(1.0, 0.3 * (pitch - ww))
        for c in range(p.columns + 1):
            xc = bx0 + edge + c * pitch
            cv.fill(top, ground_top, xc - pw / 2, xc + pw / 2, PILLAR)

    for f in range(p.floors):
        fy = top + f * floor_h
        if p.string_courses and f > 0:
            cv.fill(fy - ledge / 2, fy + ledge / 2, bx0, bx1, CORNICE)
            cv.mark(fy + ledge / 2, fy + ledge, bx0, bx1, SHADOW)
        y0 = fy + 0.6 * (floor_h - wh)
        y1 = y0 + wh
        for cx in centres:
            _window(cv, p, cx - ww / 2, cx + ww / 2, y0, y1, pitch, ledge, t)
        if f in p.balcony_floors:
            by0, by1 = y1 - 0.35 * wh, y1 + ledge
            if p.continuous_balconies:
                cv.fill(by0, by1, bx0 + edge / 2, bx1 - edge / 2, BALCONY)
            else:
                for cx in centres:
                    cv.fill(by0, by1, cx - 0.65 * ww, cx + 0.65 * ww, BALCONY)

    _ground_floor(cv, p, ground_top, bx0, bx1, centres, pitch, ww, ledge, t)
    return cv.labels, cv.detail


def _window(cv: _Canvas, p: FacadeParams, x0: float, x1: float, y0: float, y1: float,
            pitch: float, ledge: float, t: float) -> None:
    ext = max(1.0, 0.08 * (x1 - x0))
    if p.window_top == "deco":
        cv.fill(y0 - 2.5 * ledge, y0 - 0.3 * ledge, x0 - 2 * ext, x1 + 2 * ext, DECO)
    elif p.window_top == "molding":
        cv.fill(y0 - 1.5 * ledge, y0, x0 - ext, x1 + ext, MOLDING)
    cv.fill(y0, y1, x0, x1, WINDOW)
    cv.frame(y0, y1, x0, x1, t)
    cv.fill(y1, y1 + ledge, x0 - ext, x1 + ext, SILL)
    cv.mark(y1 + ledge, y1 + 1.6 * ledge, x0 - ext, x1 + ext, SHADOW)
    if p.blinds:
        bw = min(0.4 * (x1 - x0), (pitch - (x1 - x0)) / 2 - 1.0)
        if bw >= 1.0:
            cv.fill(y0, y1, x0 - bw, x0, BLIND)
            cv.fill(y0, y1, x1, x1 + bw, BLIND)


def _ground_floor(cv: _Canvas, p: FacadeParams, ground_top: float, bx0: float, bx1: float,
                  centres: list[float], pitch: float, ww: float, ledge: float, t: float) -> None:
    h = cv.h
    gh = h - ground_top
    cv.fill(ground_top - ledge, ground_top, bx0, bx1, CORNICE)
    door_cx = centres[p.door_column]
    if p.shop_units:
        start = 0
        for size in p.shop_units:
            x0 = centres[start] - 0.5 * pitch + 0.06 * pitch
            x1 = centres[start + size - 1] + 0.5 * pitch - 0.06 * pitch
            start += size
            cv.fill(ground_top + 0.08 * gh, h, x0, x1, SHOP)
            cv.mark(ground_top + 0.08 * gh, ground_top + 0.28 * gh, x0, x1, SIGN)
    else:
        for cx in centres:
            if cx != door_cx:
                y0, y1 = ground_top + 0.25 * gh, ground_top + 0.72 * gh
                _window(cv, p, cx - ww / 2, cx + ww / 2, y0, y1, pitch, ledge, t)
    dw = min(0.55 * pitch, max(2.0, 0.8 * ww))
    cv.fill(ground_top + 0.2 * gh, h, door_cx - dw / 2, door_cx + dw / 2, DOOR)
    cv.frame(ground_top + 0.2 * gh, h + t, door_cx - dw / 2, door_cx + dw / 2, t)
