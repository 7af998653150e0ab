"""Request parameters of the HTTP service, validated at the boundary.

Form fields arrive as strings, JSON bodies as typed values; both go through the same parsers so a
query means the same thing whichever way it is sent. Every failure raises :class:`HTTPProblem`
with the status to answer and a message that names the field and quotes the bad value.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..api import INITS, SEARCHES, SOURCES
from ..data.query_image import load_image

#: Bounds on the HyperPatch-Match parameters a client may ask for (work per query grows with them).
MAX_ITERATIONS = 64
MAX_SAMPLES = 64
MAX_SEED = 2**31 - 1
#: Initialisations of HyperPatch-Match the service accepts by name (``coarse``: coarse to fine
#: down the indexed layers).
INIT_CHOICES = tuple(INITS)
#: Upload formats decoded; anything else is answered 415.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "PPM", "GIF")


class HTTPProblem(Exception):
    """A request the service refuses: ``status`` and a user-facing ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message


@dataclass
class ImageRef:
    """A query image: an uploaded file (``data``) or a database image (``image_id``)."""

    field: str
    data: bytes | None = None
    image_id: int | None = None

    def describe(self) -> str:
        return f"upload {self.field!r}" if self.data is not None else f"database image {self.image_id}"


@dataclass
class QueryParams:
    """Validated options of ``POST /v1/query`` (see :meth:`compnn_index.api.CompNN.query`)."""

    image: ImageRef
    layer: str | None = None
    search: str = "exact"
    top_k: int | None = None  # None: 16, or every candidate image when fewer
    restrict: Any = None
    sources: tuple[str, ...] = ("target", "input")
    iterations: int = 32
    samples: int = 8
    jumps: int = 4
    seed: int = 0
    init: str = "staged"

    def api_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :meth:`CompNN.query` (without the image)."""
        kw: dict[str, Any] = dict(layer=self.layer, search=self.search, top_k=self.top_k,
                                  restrict=self.restrict, sources=self.sources)
        if self.search == "patchmatch":
            kw.update(iterations=self.iterations, samples=self.samples, jumps=self.jumps,
                      seed=self.seed, init=self.init)
        return kw


@dataclass
class CorrespondParams:
    """Validated options of ``POST /v1/correspond``."""

    image_a: ImageRef
    image_b: ImageRef
    layer: str | None = None


@dataclass
class Fields:
    """Request fields from a form (strings, uploads) or a JSON object, with their origin."""

    values: Mapping[str, Any]
    uploads: Mapping[str, bytes] = field(default_factory=dict)
    form: bool = False

    def get(self, name: str, default: Any = None) -> Any:
        value = self.values.get(name, default)
        if self.form and isinstance(value, str) and value.strip() == "":
            return default  # an empty form field means "not given"
        return value


# ---------------------------------------------------------------------------- scalar parsers
def parse_int(value: Any, name: str, *, lo: int, hi: int | None = None) -> int:
    """An integer option (int, or a decimal string from a form) within ``[lo, hi]``."""
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise HTTPProblem(422, f"Expected {name} to be an integer, but {name} = {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f"{lo} <= {name}" + (f" <= {hi}" if hi is not None else "")
        raise HTTPProblem(422, f"Expected {bound}, but {name} = {value}")
    return value


def parse_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """A string option that must be one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise HTTPProblem(422, f"Unknown {name} {value!r}; expected one of {', '.join(choices)}")
    return value


def parse_list(value: Any, name: str) -> list:
    """A list option: a JSON list, a comma-separated string, or repeated form fields."""
    if isinstance(value, (list, tuple)):
        items: list = []
        for v in value:
            items.extend(parse_list(v, name) if isinstance(v, str) else [v])
        return items
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return [int(value)]
    raise HTTPProblem(422, f"Expected {name} to be a list or a comma-separated string, got {value!r}")


def parse_restrict(value: Any) -> Any:
    """``restrict``: ``None``, ``"KEY=VALUE"`` (image meta) or a list of ids / names.

    Returns what :meth:`CompNN.candidates` takes: ``None``, a ``{key: value}`` dict, or a list of
    ints (ids) and strings (names). An empty list is refused.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        if not value or not all(isinstance(k, str) and isinstance(v, (str, int)) for k, v in value.items()):
            raise HTTPProblem(422, f"Expected restrict as {{\"key\": value}} pairs, got {value!r}")
        return dict(value)
    if isinstance(value, str) and "=" in value:
        key, _, val = value.partition("=")
        if not key.strip() or not val.strip():
            raise HTTPProblem(422, f"Expected restrict as KEY=VALUE (e.g. material=brick), got {value!r}")
        return {key.strip(): val.strip()}
    items = parse_list(value, "restrict")
    if not items:
        raise HTTPProblem(
            422, f"restrict is empty ({value!r}): expected at least one database image id or name, "
                 "or KEY=VALUE"
        )
    out: list = []
    for v in items:
        if isinstance(v, str) and v.lstrip("-").isdigit():
            out.append(int(v))
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            out.append(int(v))
        elif isinstance(v, str):
            out.append(v)
        else:
            raise HTTPProblem(422, f"restrict: expected image ids or names, got {v!r}")
    return out


def parse_sources(value: Any) -> tuple[str, ...]:
    """``sources``: which reconstructions to paste (subset of target, input, self)."""
    if value is None:
        return ("target", "input")
    items = parse_list(value, "sources")
    if not items:
        raise HTTPProblem(422, f"sources is empty; expected any of {', '.join(SOURCES)}")
    for s in items:
        parse_choice(s, "source", SOURCES)
    return tuple(dict.fromkeys(items))


def parse_image_ref(fields: Fields, name: str, *, id_field: str, num_images: int) -> ImageRef:
    """The image named ``name``: an upload of that field, or a database id in ``id_field``."""
    data = fields.uploads.get(name)
    raw_id = fields.get(id_field)
    if data is not None and raw_id is not None:
        raise HTTPProblem(422, f"Give either an upload {name!r} or {id_field!r}, not both")
    if data is not None:
        if not data:
            raise HTTPProblem(422, f"{name}: the uploaded file is empty")
        return ImageRef(field=name, data=bytes(data))
    if raw_id is None:
        if fields.get(name) is not None:
            raise HTTPProblem(
                422, f"{name}: expected a file upload (multipart/form-data), got a plain value; "
                     f"use {id_field!r} to name a database image"
            )
        raise HTTPProblem(422, f"Missing query image: upload {name!r} or give {id_field!r}")
    image_id = parse_int(raw_id, id_field, lo=-(2**62))
    if not 0 <= image_id < num_images:
        raise HTTPProblem(
            404, f"{id_field}: image id {image_id} does not exist; expected 0 <= id < {num_images}"
        )
    return ImageRef(field=name, image_id=image_id)


# ---------------------------------------------------------------------------- whole requests
def parse_query(
    fields: Fields, *, layers: Sequence[str], num_images: int, patchmatch_error: str | None
) -> QueryParams:
    """Validate ``POST /v1/query``'s fields.

    Parameters
    ----------
    fields : the request's form or JSON fields.
    layers : the index's layers; num_images : its image count.
    patchmatch_error : why HyperPatch-Match cannot run here, or None when it can.
    """
    known = {"image", "image_id", "layer", "search", "top_k", "restrict", "sources",
             "iterations", "samples", "jumps", "seed", "init"}
    unknown = sorted(set(fields.values) - known)
    if unknown:
        raise HTTPProblem(422, f"Unknown field(s) {', '.join(map(repr, unknown))}; expected any of "
                               f"{', '.join(sorted(known))}")
    image = parse_image_ref(fields, "image", id_field="image_id", num_images=num_images)
    layer = fields.get("layer")
    if layer is not None:
        layer = parse_choice(layer, "layer", layers)
    search = parse_choice(fields.get("search", "exact"), "search", SEARCHES)
    top_k = fields.get("top_k")
    if search == "patchmatch" and patchmatch_error is not None:
        raise HTTPProblem(501, f"search='patchmatch' is not available on this server: {patchmatch_error}")
    return QueryParams(
        image=image, layer=layer, search=search,
        top_k=None if top_k is None else parse_int(top_k, "top_k", lo=1, hi=num_images),
        restrict=parse_restrict(fields.get("restrict")),
        sources=parse_sources(fields.get("sources")),
        iterations=parse_int(fields.get("iterations", 32), "iterations", lo=1, hi=MAX_ITERATIONS),
        samples=parse_int(fields.get("samples", 8), "samples", lo=1, hi=MAX_SAMPLES),
        jumps=parse_int(fields.get("jumps", 4), "jumps", lo=0, hi=MAX_SAMPLES),
        seed=parse_int(fields.get("seed", 0), "seed", lo=0, hi=MAX_SEED),
        init=parse_choice(fields.get("init", "staged"), "init", INIT_CHOICES),
    )


def parse_correspond(fields: Fields, *, layers: Sequence[str], num_images: int) -> CorrespondParams:
    """Validate ``POST /v1/correspond``'s fields."""
    known = {"image_a", "image_b", "image_a_id", "image_b_id", "layer"}
    unknown = sorted(set(fields.values) - known)
    if unknown:
        raise HTTPProblem(422, f"Unknown field(s) {', '.join(map(repr, unknown))}; expected any of "
                               f"{', '.join(sorted(known))}")
    a = parse_image_ref(fields, "image_a", id_field="image_a_id", num_images=num_images)
    b = parse_image_ref(fields, "image_b", id_field="image_b_id", num_images=num_images)
    layer = fields.get("layer")
    if layer is not None:
        layer = parse_choice(layer, "layer", layers)
    return CorrespondParams(image_a=a, image_b=b, layer=layer)


def decode_upload(data: bytes, *, name: str, image_size: tuple[int, int]) -> np.ndarray:
    """Decode an uploaded image file into a float32 (3, H, W) network input.

    The header is checked before any pixel is decoded: the format must be a known image format
    and the size must equal the index's image size ``(H, W)``.

    Raises
    ------
    HTTPProblem
        415 for a file that is not an image, 422 for a wrong size or pixel mode.
    """
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise HTTPProblem(
            415, f"{name}: the uploaded file is not a readable image "
                 f"({type(exc).__name__}); expected one of {', '.join(IMAGE_FORMATS)}"
        ) from None
    with img:
        if img.format not in IMAGE_FORMATS:
            raise HTTPProblem(415, f"{name}: image format {img.format!r} is not accepted; "
                                   f"expected one of {', '.join(IMAGE_FORMATS)}")
        w, h = img.size
        if (h, w) != tuple(image_size):
            raise HTTPProblem(
                422, f"{name}: expected an image of {image_size[1]}×{image_size[0]} pixels "
                     f"(width×height, the index's image size), got {w}×{h}"
            )
        try:
            img.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise HTTPProblem(415, f"{name}: the image file is truncated or corrupt ({exc})") from None
        try:
            return load_image(img, name=name)
        except ValueError as exc:  # QueryError: wrong pixel mode (e.g. CMYK, 16-bit)
            raise HTTPProblem(422, str(exc)) from None
