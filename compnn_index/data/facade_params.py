"""Random parameters of one synthetic facade: layout choices, wall material and colours."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Wall materials, each with its own colour and texture (see ``facade_render``).
MATERIALS: tuple[str, ...] = ("brick", "stucco", "white", "stone")

# Mean wall colour of each material before per-image jitter (RGB).
_WALL_BASE = {
    "brick": (150.0, 62.0, 45.0),
    "stucco": (214.0, 188.0, 146.0),
    "white": (236.0, 234.0, 228.0),
    "stone": (138.0, 138.0, 132.0),
}
# Trim (sills, cornices, mouldings, ornaments) contrasts with the wall.
_TRIM_BASE = {
    "brick": (222.0, 212.0, 192.0),
    "stucco": (242.0, 236.0, 222.0),
    "white": (196.0, 194.0, 186.0),
    "stone": (190.0, 186.0, 174.0),
}
_GLASS = ((48, 62, 84), (40, 70, 76), (70, 76, 82), (104, 126, 148), (30, 34, 40))
_FRAME = ((238, 236, 230), (60, 48, 40), (44, 70, 52), (120, 120, 118))
_DOOR = ((104, 62, 36), (32, 62, 42), (34, 34, 38), (130, 40, 34))
_BLIND = ((62, 104, 64), (112, 76, 46), (150, 150, 146), (180, 190, 200))


@dataclass(frozen=True)
class FacadeParams:
    """Everything random about one synthetic facade except pixel noise and texture detail.

    Fractions are of the image height (``sky``, ``ground``), the building width (margins), the
    column pitch (``window_width``) or the floor height (``window_height``).
    """

    material: str
    floors: int
    columns: int
    window_width: float
    window_height: float
    sky: float
    margin_left: float
    margin_right: float
    ground: float
    shop_units: tuple[int, ...]  # column-group sizes of shop fronts on the ground floor; () = none
    door_column: int
    balcony_floors: tuple[int, ...]  # floor numbers (0 = top floor) with balconies
    continuous_balconies: bool
    window_top: str  # "plain" | "molding" | "deco" (what is drawn above each window)
    blinds: bool
    string_courses: bool
    pillars: bool
    wall_rgb: tuple[float, float, float]
    trim_rgb: tuple[float, float, float]
    glass_rgb: tuple[float, float, float]
    frame_rgb: tuple[float, float, float]
    door_rgb: tuple[float, float, float]
    blind_rgb: tuple[float, float, float]
    sign_rgb: tuple[float, float, float]
    sky_rgb: tuple[float, float, float]
    light: tuple[float, float]  # vertical and horizontal brightness slopes
    noise: float  # standard deviation of pixel noise (0..255 scale)

    def to_meta(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists, colours are rounded)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if isinstance(value, tuple):
                value = [round(float(v), 2) if isinstance(v, float) else v for v in value]
            elif isinstance(value, float):
                value = round(value, 4)
            out[key] = value
        return out


def _colour(rng: np.random.Generator, base: tuple[float, ...], spread: float) -> tuple:
    rgb = np.clip(np.asarray(base, float) + rng.normal(0.0, spread, 3), 0.0, 255.0)
    return tuple(float(v) for v in rgb)


def _pick(rng: np.random.Generator, options: tuple) -> tuple[float, ...]:
    return tuple(float(v) for v in options[rng.integers(len(options))])


def draw_params(rng: np.random.Generator) -> FacadeParams:
    """Draw the parameters of one facade from ``rng``."""
    material = MATERIALS[rng.integers(len(MATERIALS))]
    floors = int(rng.integers(2, 7))
    columns = int(rng.integers(2, 8))
    shop = rng.random() < 0.55
    groups, left = [], columns
    while left > 0:
        g = int(min(left, rng.integers(1, 4)))
        groups.append(g)
        left -= g
    balcony_mode = rng.random()
    floor_draws = rng.random(floors)
    if balcony_mode < 0.45:
        balcony_floors: tuple[int, ...] = ()
    elif balcony_mode < 0.75:
        balcony_floors = tuple(int(f) for f in np.flatnonzero(floor_draws < 0.5))
    else:
        balcony_floors = tuple(range(floors))
    margins = rng.uniform(0.03, 0.14, 2) * (rng.random(2) < 0.45)
    brightness = rng.uniform(0.86, 1.12)
    wall = np.asarray(_WALL_BASE[material]) * brightness
    return FacadeParams(
        material=material,
        floors=floors,
        columns=columns,
        window_width=float(rng.uniform(0.32, 0.62)),
        window_height=float(rng.uniform(0.42, 0.72)),
        sky=float(rng.uniform(0.03, 0.15)),
        margin_left=float(margins[0]),
        margin_right=float(margins[1]),
        ground=float(rng.uniform(0.16, 0.26)),
        shop_units=tuple(groups) if shop else (),
        door_column=int(rng.integers(columns)),
        balcony_floors=balcony_floors,
        continuous_balconies=bool(rng.random() < 0.35),
        window_top=("plain", "molding", "deco")[rng.integers(3)],
        blinds=bool(rng.random() < 0.3),
        string_courses=bool(rng.random() < 0.5),
        pillars=bool(rng.random() < 0.25),
        wall_rgb=_colour(rng, tuple(wall), 6.0),
        trim_rgb=_colour(rng, _TRIM_BASE[material], 5.0),
        glass_rgb=_colour(rng, _pick(rng, _GLASS), 6.0),
        frame_rgb=_pick(rng, _FRAME),
        door_rgb=_colour(rng, _pick(rng, _DOOR), 8.0),
        blind_rgb=_colour(rng, _pick(rng, _BLIND), 8.0),
        sign_rgb=tuple(float(v) for v in rng.integers(30, 240, 3)),
        sky_rgb=_colour(rng, (150.0, 188.0, 228.0) if rng.random() < 0.7 else (196.0, 202.0, 208.0), 8.0),
        light=(float(rng.uniform(-0.25, 0.12)), float(rng.uniform(-0.15, 0.15))),
        noise=float(rng.uniform(2.0, 6.0)),
    )
