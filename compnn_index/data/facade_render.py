"""Photos of synthetic facades rendered from their label maps (vectorised NumPy, no pixel loops).

The wall gets a per-image *material* texture: ``brick`` (red bricks, per-brick tone, light mortar
lines in a running bond), ``stucco`` (beige render with soft blotches), ``white`` (smooth white
paint) or ``stone`` (grey ashlar blocks with dark joints). Other classes get flat colours with a
little structure (glass reflections, shutter slats, balcony railings, shop signs), then the whole
picture gets a lighting gradient and Gaussian noise.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from .facade_layout import (
    BACKGROUND, BALCONY, BLIND, CORNICE, DECO, DOOR, FACADE, FRAME, MOLDING, PILLAR, SHADOW, SHOP,
    SIGN, SILL, WINDOW,
)
from .facade_params import FacadeParams


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Unit-variance-ish noise varying over ``cell`` pixels, float32 ``(H, W)``."""
    coarse = rng.standard_normal((h // cell + 2, w // cell + 2), dtype=np.float32)
    size = ((w // cell + 2) * cell, (h // cell + 2) * cell)
    big = Image.fromarray(coarse).resize(size, Image.BILINEAR)  # float32 -> mode "F"
    return np.asarray(big, dtype=np.float32)[:h, :w]


def _blocks(h: int, w: int, bh: int, bl: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Running-bond grid: per-pixel block row and column, and joint masks."""
    rows = np.arange(h)[:, None] // bh
    shift = (rows % 2) * (bl // 2)
    xs = np.arange(w)[None, :] + shift
    cols = xs // bl
    bed = (np.arange(h) % bh == 0)[:, None]
    head = xs % bl == 0
    return rows, cols, bed, head


#: Extra colour codes used only while rendering (after the 12 classes).
JOINT, FRAME_CODE, SIGN_CODE, RAIL, BALCONY_GAP, NEIGHBOUR = 12, 13, 14, 15, 16, 17


def wall_pattern(p: FacadeParams, rng: np.random.Generator, h: int, w: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The wall material as brightness modulation.

    Returns
    -------
    gain : ndarray of float32, shape (H, W)
        Multiplies the wall colour (per-brick / per-block tone).
    offset : ndarray of float32, shape (H, W)
        Added to the wall colour (soft blotches).
    joints : ndarray of bool, shape (H, W)
        Mortar lines or block joints (all False for stucco and white paint).
    """
    unit = h / 256.0
    if p.material in ("brick", "stone"):
        brick = p.material == "brick"
        bh = max(2, int(round((5 if brick else 11) * unit)))
        bl = max(3, int(round(bh * (2.4 if brick else rng.uniform(1.8, 2.8)))))
        rows, cols, bed, head = _blocks(h, w, bh, bl)
        tone = rng.normal(0.0, 0.09 if brick else 0.06, (h // bh + 1, w // bl + 3))
        gain = 1.0 + tone.astype(np.float32)[rows, cols]
        offset = _smooth_noise(rng, h, w, max(2, int(8 * unit))) * (4.0 if brick else 6.0)
        return gain, offset, bed | head
    amount = 7.0 if p.material == "stucco" else 3.0
    offset = _smooth_noise(rng, h, w, max(2, int(16 * unit))) * amount
    return np.ones((h, w), np.float32), offset, np.zeros((h, w), bool)


def render_photo(labels: np.ndarray, detail: np.ndarray, params: FacadeParams,
                 rng: np.random.Generator) -> np.ndarray:
    """Render the photo of a facade.

    Every pixel gets a colour code (its class, or a rendering sub-code such as mortar, window
    frame, shop sign, balcony railing), then ``photo = colour[code] * gain + offset`` where the
    single-channel ``gain`` and ``offset`` maps carry texture, shading and noise. Working on
    (H, W) maps keeps a 256×256 photo at a few milliseconds.

    Parameters
    ----------
    labels, detail : ndarray of uint8, shape (H, W)
        From :func:`~compnn_index.data.facade_layout.facade_layout`.
    params : FacadeParams
        Material and colours.
    rng : numpy.random.Generator
        Texture and noise randomness.

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)
    """
    p = params
    h, w = labels.shape
    unit = h / 256.0
    yy = (np.arange(h, dtype=np.float32) / h)[:, None]
    xx = (np.arange(w, dtype=np.float32) / w)[None, :]
    wall = np.asarray(p.wall_rgb, np.float32)
    trim = np.asarray(p.trim_rgb, np.float32)
    sky = np.asarray(p.sky_rgb, np.float32)

    colour = np.zeros((18, 3), np.float32)
    colour[MOLDING], colour[SILL], colour[CORNICE], colour[DECO] = (
        trim * 0.96, trim, trim * 0.93, np.minimum(trim * 1.03, 255.0))
    colour[FACADE], colour[PILLAR] = wall, np.minimum(wall * 1.1 + 8.0, 255.0)
    colour[WINDOW], colour[DOOR], colour[BLIND] = p.glass_rgb, p.door_rgb, p.blind_rgb
    colour[SHOP], colour[BACKGROUND] = (38.0, 40.0, 46.0), sky
    # A joint is one pixel wide at every size; below 256 px it stands for a thinner line, so its
    # colour is mixed with the wall's as if averaged over the pixel.
    joint = np.asarray((196.0, 188.0, 176.0), np.float32) if p.material == "brick" else wall * 0.62
    colour[JOINT] = wall + (joint - wall) * min(1.0, max(0.3, unit))
    colour[FRAME_CODE], colour[SIGN_CODE], colour[RAIL] = p.frame_rgb, p.sign_rgb, (42.0, 42.0, 46.0)
    colour[BALCONY_GAP], colour[NEIGHBOUR] = wall * 0.55, sky[::-1] * 0.55 + 30.0

    is_facade, is_pillar = labels == FACADE, labels == PILLAR
    is_window, is_door = labels == WINDOW, labels == DOOR
    is_balcony, is_shop, is_back = labels == BALCONY, labels == SHOP, labels == BACKGROUND
    code = labels.copy()

    tex_gain, tex_offset, joints = wall_pattern(p, rng, h, w)
    code[joints & is_facade] = JOINT
    bars = (np.arange(w) % max(2, int(round(5 * unit))) == 0)[None, :]
    rail_top = is_balcony & ~np.vstack([np.zeros((1, w), bool), is_balcony[:-1]])
    code[is_balcony] = BALCONY_GAP
    code[is_balcony & (bars | rail_top)] = RAIL
    column = labels[:, w // 2] != BACKGROUND
    roof_row = int(column.argmax()) if column.any() else h
    code[is_back & (np.arange(h) >= roof_row + 0.1 * h)[:, None]] = NEIGHBOUR
    code[is_shop & (detail == SIGN)] = SIGN_CODE
    code[(detail == FRAME) & (is_window | is_door)] = FRAME_CODE

    textured = (code == FACADE) | (code == PILLAR) | (code == BALCONY_GAP)
    gain = np.where(textured, tex_gain, np.float32(1.0))
    offset = np.where(textured | (code == JOINT), tex_offset, np.float32(0.0))
    glass = code == WINDOW
    gain = np.where(glass, 1.15 - 0.3 * yy, gain)
    streak = ((xx * w + yy * (0.7 * h)) / max(4.0, 22.0 * unit)) % 1.0 < 0.3
    offset += (glass & streak) * np.float32(26.0)
    gain = np.where(code == BACKGROUND, 1.0 + 0.12 * yy, gain)
    slat = (np.arange(h) % max(2, int(round(3 * unit))) == 0)[:, None]
    gain *= np.where((code == BLIND) & slat, np.float32(0.7), np.float32(1.0))
    shop = code == SHOP
    offset += shop * (_smooth_noise(rng, h, w, max(2, int(6 * unit))) * 14.0 + 40.0 * (1.0 - yy))
    shadow = (detail == SHADOW) & (is_facade | is_pillar)
    gain *= np.where(shadow, np.float32(0.72), np.float32(1.0))

    dy, dx = p.light
    gain *= 1.0 + dy * (yy - 0.5) + dx * (xx - 0.5)
    offset += rng.standard_normal((h, w), dtype=np.float32) * np.float32(p.noise)
    img = np.take(colour, code, axis=0)
    img *= gain[..., None]
    img += offset[..., None]
    return np.clip(img, 0.0, 255.0, out=img).astype(np.uint8)
