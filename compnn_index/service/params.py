"""Request parameters of the HTTP service, validated at the boundary.

Form fields arrive as strings, JSON bodies as typed values; both go through the same parsers so a
query means the same thing whichever way it is sent. Integers, choices and ``restrict`` are parsed
by :mod:`compnn_index.checks` (the parsers every surface shares) and query defaults come from
:class:`~compnn_index.options.QueryOptions`; every failure raises :class:`HTTPProblem` with the
status to answer and a message that names the field and quotes the bad value.
"""
from __future__ import annotations

import io
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .. import checks
from ..data.query_image import dataset_geometry, dataset_image, load_image
from ..errors import QueryError
from ..options import EXACT_METHODS, INITS, SEARCHES, SOURCES, QueryOptions

#: ``(low, high)`` of each integer query field a client may send: the library's own bounds
#: (:data:`compnn_index.checks.QUERY_INT_BOUNDS`), identical on the command line and the API.
#: The work one request can cause is further bounded by the admission queue and its deadline.
QUERY_INT_FIELDS = {name: checks.QUERY_INT_BOUNDS[name] for name in ("iterations", "samples", "jumps", "seed")}
#: Initialisations of HyperPatch-Match the service accepts by name (``coarse``: coarse to fine
#: down the indexed layers).
INIT_CHOICES = tuple(INITS)
#: What is pasted when a request names no ``sources`` (the API's default).
DEFAULT_SOURCES = ("target", "input")
#: Upload formats decoded; anything else is answered 415.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "PPM", "GIF")


class HTTPProblem(Exception):
    """A request the service refuses: ``status`` and a user-facing ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message


@contextmanager
def refused_as(status: int = 422) -> Iterator[None]:
    """Turn a :class:`QueryError` from the shared checks into :class:`HTTPProblem` ``status``."""
    try:
        yield
    except QueryError as exc:
        raise HTTPProblem(status, str(exc)) from None


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
    """Validated options of ``POST /v1/query`` (see :meth:`compnn_index.api.CompNN.explain`).

    ``options`` holds search, top_k (None: the API's default shortlist) and the HyperPatch-Match
    parameters, with :class:`QueryOptions`' defaults for every field the request left out.
    """

    image: ImageRef
    layer: str | None = None
    options: QueryOptions = field(default_factory=QueryOptions)
    restrict: Any = None
    sources: tuple[str, ...] = DEFAULT_SOURCES
    #: database ids/names never matched; ``keep_self=False`` adds a database query's own id
    exclude: tuple = ()
    keep_self: bool = True

    def api_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :meth:`CompNN.explain` / ``query`` (without the image)."""
        own = [self.image.image_id] if not self.keep_self and self.image.image_id is not None else []
        return dict(layer=self.layer, options=self.options, restrict=self.restrict,
                    sources=self.sources, exclude=[*self.exclude, *own])


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
def parse_int(value: Any, name: str, *, lo: int | None = None, hi: int | None = None) -> int:
    """An integer option (int, or a decimal string from a form) within ``[lo, hi]``; else 422.

    :func:`compnn_index.checks.parse_int` decides what an integer is (ASCII digits and one
    optional sign: ``"²"``, ``"+-3"`` and ``"--3"`` are refused).
    """
    with refused_as(422):
        return checks.parse_int(value, name, low=lo, high=hi)


def parse_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """A string option that must be one of ``choices``; else 422."""
    with refused_as(422):
        return checks.check_choice(value, name, choices)


def parse_list(value: Any, name: str) -> list:
    """A list option: a JSON list, a comma-separated string, or repeated form fields."""
    if isinstance(value, (list, tuple)):
        items: list = []
        for v in value:
            items.extend(parse_list(v, name) if isinstance(v, str) else [v])
        return items
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if checks.is_int(value):
        return [int(value)]
    raise HTTPProblem(422, f"Expected {name} to be a list or a comma-separated string, got {value!r}")


def parse_restrict(value: Any) -> Any:
    """``restrict``: :func:`compnn_index.checks.parse_restrict` (the one parser), refusals as 422.

    Returns what :meth:`CompNN.candidates` takes: ``None``, a ``{key: value}`` dict, or a list of
    ints (ids) and strings (names). An empty list is refused.
    """
    with refused_as(422):
        return checks.parse_restrict(value)


def parse_sources(value: Any) -> tuple[str, ...]:
    """``sources``: which reconstructions to paste (subset of target, input, self)."""
    if value is None:
        return DEFAULT_SOURCES
    items = parse_list(value, "sources")
    if len(items) > 4 * len(SOURCES):
        raise HTTPProblem(422, f"Expected at most {4 * len(SOURCES)} sources, got {len(items)}")
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
    image_id = parse_int(raw_id, id_field)
    if not 0 <= image_id < num_images:
        raise HTTPProblem(
            404, f"{id_field}: image id {image_id} does not exist; expected 0 <= id < {num_images}"
        )
    return ImageRef(field=name, image_id=image_id)


# ---------------------------------------------------------------------------- whole requests
QUERY_FIELDS = frozenset({"image", "image_id", "layer", "search", "top_k", "restrict", "sources",
                          *QUERY_INT_FIELDS, "init", "exact_method", "polish", "exclude", "keep_self"})


def parse_bool(value: Any, name: str) -> bool:
    """A flag: JSON true/false, or a form's ``true``/``false``/``1``/``0``; else 422."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.strip().lower() in ("true", "1", "yes", "on")
    raise HTTPProblem(422, f"Expected {name} to be true or false, got {value!r}")


def parse_polish(value: Any) -> float | None:
    """``polish``: null / ``"off"`` (no polish), or a number in [0, 1]; else 422."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("off", "none", "null", "")):
        return None
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0.0 <= float(number) <= 1.0:
        raise HTTPProblem(422, f"Expected polish to be a number in [0, 1] or \"off\", got {value!r}")
    return float(number)


def _refuse_unknown(fields: Fields, known) -> None:
    unknown = sorted(set(fields.values) - set(known))
    if unknown:
        raise HTTPProblem(422, f"Unknown field(s) {', '.join(map(repr, unknown))}; expected any of "
                               f"{', '.join(sorted(known))}")


def parse_options(fields: Fields, *, num_images: int) -> QueryOptions:
    """The query's :class:`QueryOptions`: the fields given, the defaults for the others."""
    given: dict[str, Any] = {}
    search = fields.get("search")
    if search is not None:
        given["search"] = parse_choice(search, "search", SEARCHES)
    top_k = fields.get("top_k")
    if top_k is not None:
        given["top_k"] = parse_int(top_k, "top_k", lo=1, hi=num_images)
    for name, (lo, hi) in QUERY_INT_FIELDS.items():
        value = fields.get(name)
        if value is not None:
            given[name] = parse_int(value, name, lo=lo, hi=hi)
    init = fields.get("init")
    if init is not None:
        given["init"] = parse_choice(init, "init", INIT_CHOICES)
    exact_method = fields.get("exact_method")
    if exact_method is not None:
        given["exact_method"] = parse_choice(exact_method, "exact_method", EXACT_METHODS)
    if "polish" in fields.values:
        given["polish"] = parse_polish(fields.get("polish"))
    with refused_as(422):
        return QueryOptions(**given)


def parse_query(fields: Fields, *, layers: Sequence[str], num_images: int) -> QueryParams:
    """Validate ``POST /v1/query``'s fields.

    Parameters
    ----------
    fields : the request's form or JSON fields.
    layers : the index's layers; num_images : its image count.
    """
    _refuse_unknown(fields, QUERY_FIELDS)
    image = parse_image_ref(fields, "image", id_field="image_id", num_images=num_images)
    layer = fields.get("layer")
    if layer is not None:
        layer = parse_choice(layer, "layer", layers)
    options = parse_options(fields, num_images=num_images)
    with refused_as(422):
        exclude = tuple(checks.parse_exclude(fields.get("exclude")))
    keep = fields.get("keep_self")
    # the HTTP API, like the Python API, keeps a database query's own image unless told
    # keep_self=false (the viewer's "leave the query image out", on by default there)
    return QueryParams(image=image, layer=layer, options=options,
                       restrict=parse_restrict(fields.get("restrict")),
                       sources=parse_sources(fields.get("sources")), exclude=exclude,
                       keep_self=True if keep is None else parse_bool(keep, "keep_self"))


def parse_correspond(fields: Fields, *, layers: Sequence[str], num_images: int) -> CorrespondParams:
    """Validate ``POST /v1/correspond``'s fields."""
    _refuse_unknown(fields, ("image_a", "image_b", "image_a_id", "image_b_id", "layer"))
    a = parse_image_ref(fields, "image_a", id_field="image_a_id", num_images=num_images)
    b = parse_image_ref(fields, "image_b", id_field="image_b_id", num_images=num_images)
    layer = fields.get("layer")
    if layer is not None:
        layer = parse_choice(layer, "layer", layers)
    return CorrespondParams(image_a=a, image_b=b, layer=layer)


def parse_multipart(body: bytes, content_type: str, *, uploads: Sequence[str], max_fields: int = 32,
                    max_part_size: int = 1024 * 1024) -> Fields:
    """A ``multipart/form-data`` body (already read, bounded) → :class:`Fields`.

    Synchronous, so that a large body can be parsed in a worker thread instead of on the event
    loop (python-multipart is pure Python: 0.27 s for a 7.5 MiB upload here). File parts must
    be named in ``uploads`` (one file each); other parts are text fields of at most
    ``max_part_size`` bytes, at most ``max_fields`` of them.

    Raises
    ------
    HTTPProblem
        400 for a malformed body, 422 for unexpected or repeated files, too many fields.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise HTTPProblem(400, "multipart/form-data without a boundary")
    values: dict[str, list[str]] = {}
    files: dict[str, bytes] = {}
    part: dict[str, Any] = {}
    header = [b"", b""]

    def on_part_begin():
        part.clear()
        part.update(headers={}, data=[], size=0)

    def on_header_field(data, start, end):
        header[0] += data[start:end]

    def on_header_value(data, start, end):
        header[1] += data[start:end]

    def on_header_end():
        part["headers"][header[0].lower()] = header[1]
        header[0] = header[1] = b""

    def on_headers_finished():
        _, opts = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if b"name" not in opts:
            raise HTTPProblem(400, 'A multipart part lacks the Content-Disposition "name"')
        name = opts[b"name"].decode("utf-8", "replace")
        part["name"], part["file"] = name, b"filename" in opts
        if part["file"]:
            if name not in uploads:
                raise HTTPProblem(422, f"Unexpected file field {name!r}; expected uploads named "
                                       f"{', '.join(map(repr, uploads))}")
            if name in files:
                raise HTTPProblem(422, f"More than one file in field {name!r}")
        elif sum(map(len, values.values())) >= max_fields:
            raise HTTPProblem(422, f"Too many form fields; expected at most {max_fields}")

    def on_part_data(data, start, end):
        part["size"] += end - start
        if not part["file"] and part["size"] > max_part_size:
            raise HTTPProblem(422, f"Form field {part['name']!r} is over {max_part_size} bytes")
        part["data"].append(data[start:end])

    def on_part_end():
        data = b"".join(part["data"])
        if part["file"]:
            files[part["name"]] = data
        else:
            values.setdefault(part["name"], []).append(data.decode("utf-8", "replace"))

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished})
    try:
        view = memoryview(body)
        for a in range(0, len(body), 256 * 1024):
            parser.write(bytes(view[a: a + 256 * 1024]))
        parser.finalize()
    except HTTPProblem:
        raise
    except Exception as exc:  # python-multipart's MultipartParseError and friends
        raise HTTPProblem(400, f"The multipart body is malformed ({type(exc).__name__}: "
                               f"{str(exc)[:120]})") from None
    return Fields(values={k: v[0] if len(v) == 1 else v for k, v in values.items()},
                  uploads=files, form=True)


def decode_upload(data: bytes, *, name: str, image_size: tuple[int, int],
                  dataset: dict | None = None) -> np.ndarray:
    """Decode an uploaded image file into a float32 (3, H, W) network input.

    The header is checked before any pixel is decoded: the format must be a known image format
    and the size must equal the index's image size ``(H, W)``, or the geometry of the files of
    the store's ``dataset`` (manifest), which get the build's preprocessing (``dataset_image``).

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
        native = dataset_geometry(dataset)
        if (h, w) != tuple(image_size) and (h, w) != native:
            also = f" or {native[1]}×{native[0]} (its dataset's files)" if native else ""
            raise HTTPProblem(
                422, f"{name}: expected an image of {image_size[1]}×{image_size[0]} pixels "
                     f"(width×height, the index's image size){also}, got {w}×{h}"
            )
        try:
            img.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise HTTPProblem(415, f"{name}: the image file is truncated or corrupt ({exc})") from None
        if (h, w) != tuple(image_size):
            arr = dataset_image(img, dataset, image_size)
            if arr is None:
                raise HTTPProblem(422, f"{name}: expected an RGB or grey image, got PIL mode {img.mode!r}")
            return arr
        try:
            return load_image(img, name=name)
        except ValueError as exc:  # QueryError: wrong pixel mode (e.g. CMYK, 16-bit)
            raise HTTPProblem(422, str(exc)) from None
