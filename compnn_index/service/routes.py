"""The service's endpoints, registered on a FastAPI app by :func:`add_routes`.

:func:`compnn_index.service.server.create_app` builds the app and the :class:`ServiceState` the
routes share (the loaded index, the engine pool, the result cache); each ``add_*`` function here
registers one group of routes on it.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread
from cachetools import LRUCache
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import checks
from ..api import CompNN, Correspondence
from ..errors import CompNNError, DistributedError, IndexStoreError
from ..options import SEARCHES
from .engines import ClientGone, EnginePool, PoolBusy
from .params import (
    INIT_CHOICES, Fields, HTTPProblem, ImageRef, decode_upload, parse_correspond, parse_multipart,
    parse_query, refused_as,
)
from .results import (
    CORRESPOND_PICTURES, QUERY_PICTURES, ResultCache, StoredResult, database_rgb, png_bytes,
)

log = logging.getLogger("compnn.service")

STATIC_DIR = Path(__file__).with_name("static")

_QUERY_FIELDS_SCHEMA = {
    "layer": {"type": "string"},
    "search": {"type": "string", "enum": list(SEARCHES)},
    "top_k": {"type": "integer", "minimum": 1},
    "iterations": {"type": "integer"}, "samples": {"type": "integer"}, "jumps": {"type": "integer"},
    "seed": {"type": "integer"}, "init": {"type": "string", "enum": list(INIT_CHOICES)},
}
_QUERY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "image": {"type": "string", "format": "binary",
                          "description": "query image file (PNG/JPEG…) of the index's image size"},
                "image_id": {"type": "integer", "description": "or: a database image id"},
                "restrict": {"type": "string",
                             "description": "comma-separated ids/names, or KEY=VALUE (material=brick)"},
                "sources": {"type": "string", "description": "comma-separated: target,input,self"},
                "exclude": {"type": "string", "description": "comma-separated ids/names never matched"},
                "keep_self": {"type": "boolean", "description": "false: leave the image_id out (leave-one-out)"},
                **_QUERY_FIELDS_SCHEMA,
            }}},
            "application/json": {"schema": {"type": "object", "properties": {
                "image_id": {"type": "integer"},
                "restrict": {"oneOf": [{"type": "string"}, {"type": "array", "items": {
                    "oneOf": [{"type": "integer"}, {"type": "string"}]}}]},
                "sources": {"type": "array", "items": {"type": "string"}},
                "exclude": {"type": "array", "items": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
                            "description": "database ids or names never matched"},
                "keep_self": {"type": "boolean", "default": True,
                              "description": "false: leave the query's own image_id out of its explanation"},
                **_QUERY_FIELDS_SCHEMA,
            }, "required": ["image_id"]}},
        },
    }
}
_CORRESPOND_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "image_a": {"type": "string", "format": "binary"},
                "image_b": {"type": "string", "format": "binary"},
                "image_a_id": {"type": "integer"}, "image_b_id": {"type": "integer"},
                "layer": {"type": "string"},
            }}},
            "application/json": {"schema": {"type": "object", "properties": {
                "image_a_id": {"type": "integer"}, "image_b_id": {"type": "integer"},
                "layer": {"type": "string"},
            }, "required": ["image_a_id", "image_b_id"]}},
        },
    }
}
_PNG = {200: {"content": {"image/png": {}}, "description": "PNG image"}}


@dataclass
class ServiceState:
    """What the routes share: the loaded index, its engines, results and rendered images."""

    cnn: CompNN
    pool: EnginePool
    cache: ResultCache
    summary: dict
    #: rendered database images, (id, kind) -> PNG; an LRU of 4 × the result cache's capacity
    db_pngs: LRUCache = field(default_factory=lambda: LRUCache(maxsize=256))

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.summary["image_size"])  # type: ignore[return-value]

    def image(self, ref: ImageRef):
        """The API's image argument for ``ref``: a decoded upload, or the database id."""
        if ref.data is not None:
            return decode_upload(ref.data, name=ref.field, image_size=self.image_size,
                                 dataset=self.cnn.store.manifest.get("dataset"))
        return ref.image_id


# ---------------------------------------------------------------------------- helpers
def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _json(doc: dict) -> Response:
    """``doc`` as a JSON answer (strict JSON: a NaN that slipped past the checks is refused)."""
    try:
        body = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        raise IndexStoreError("the result holds NaN or infinite values; the index store is "
                              "corrupt (run compnn verify STORE)") from None
    return Response(body.encode("utf-8"), media_type="application/json")


def _short(value: str, n: int = 48) -> str:
    return repr(value if len(value) <= n else value[:n] + "…")


#: Bodies at least this large are parsed in a worker thread, not on the event loop.
_THREAD_PARSE_BYTES = 64 * 1024


async def read_fields(request: Request, uploads: tuple[str, ...]) -> Fields:
    """The request's fields: a JSON object, or multipart form fields plus the named file uploads.

    Only ``application/json`` and ``multipart/form-data`` are read: a url-encoded form, which
    any web page can make a browser send cross-site, is refused (415). JSON nested more than
    :data:`compnn_index.checks.MAX_JSON_DEPTH` deep is refused (422); a large body is parsed
    off the event loop.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        raw = await request.body()
        try:
            if len(raw) >= _THREAD_PARSE_BYTES:
                body = await anyio.to_thread.run_sync(_load_body, raw)
            else:
                body = _load_body(raw)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit integer
            raise HTTPProblem(400, f"The request body is not valid JSON ({str(exc)[:200]})") from None
        if not isinstance(body, dict):
            raise HTTPProblem(422, f"Expected a JSON object, got {type(body).__name__}")
        return Fields(values=body)
    if ctype == "multipart/form-data":
        raw = await request.body()
        parse = partial(parse_multipart, raw, request.headers["content-type"], uploads=uploads)
        return await anyio.to_thread.run_sync(parse) if len(raw) >= _THREAD_PARSE_BYTES else parse()
    raise HTTPProblem(
        415, f"Expected Content-Type multipart/form-data or application/json, got {ctype or 'none'!r}"
             + (" (url-encoded forms are refused: any web page can send them cross-site)"
                if ctype == "application/x-www-form-urlencoded" else "")
    )


#: Most values (commas, counted before parsing) a JSON body may hold: a restrict list of
#: MAX_RESTRICT ids and the other fields. ``json.loads`` holds the GIL for its whole run (over a
#: second for 2 million values here), so longer documents are refused unparsed.
MAX_JSON_VALUES = checks.MAX_RESTRICT + 1000


def _load_body(raw: bytes) -> Any:
    if raw.count(b",") >= MAX_JSON_VALUES:
        raise HTTPProblem(422, f"The JSON body holds more than {MAX_JSON_VALUES} values; expected "
                               f"at most {checks.MAX_RESTRICT} restrict entries")
    with refused_as(422):
        return checks.load_json(raw, "The JSON body")


async def _parse(parser, fields: Fields, **kwargs):
    """Validate the fields, in a worker thread when they are large (a long ``restrict``)."""
    big = any(isinstance(v, (str, list, dict)) and len(v) > 1024 for v in fields.values.values())
    if big:
        return await anyio.to_thread.run_sync(partial(parser, fields, **kwargs))
    return parser(fields, **kwargs)


def _disconnected(request: Request):
    """An awaitable factory that returns once the client has disconnected."""
    async def wait() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return
    return wait


# ---------------------------------------------------------------------------- route groups
def add_routes(app: FastAPI, state: ServiceState) -> None:
    """Register every endpoint and error handler on ``app``."""
    add_error_handlers(app)
    add_page_routes(app, state)
    add_query_routes(app, state)
    add_picture_routes(app, state)


def add_error_handlers(app: FastAPI) -> None:
    """Every refusal is answered ``{"error": "..."}`` with its status; surprises with 500."""

    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, exc: HTTPProblem):
        return _error(exc.status, exc.message)

    @app.exception_handler(RecursionError)
    async def _recursion(request: Request, exc: RecursionError):
        return _error(422, "The request is nested too deeply")

    @app.exception_handler(PoolBusy)
    async def _busy(request: Request, exc: PoolBusy):
        return JSONResponse({"error": str(exc)}, status_code=503,
                            headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone):
        return Response(status_code=499)  # nobody is listening; for the access log

    @app.exception_handler(IndexStoreError)
    async def _store(request: Request, exc: IndexStoreError):
        log.error("index store problem on %s %s: %s", request.method, request.url.path, exc)
        return _error(503, f"The index store cannot answer: {exc}")

    @app.exception_handler(DistributedError)
    async def _shard(request: Request, exc: DistributedError):
        # a shard actor died and did not come back in time, or did not answer: the store is
        # fine and the shard may be back shortly, so 503 (retry), naming the shard
        log.error("shard problem on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"error": f"A shard of the index cannot answer now: {exc}"}, status_code=503,
                            headers={"Retry-After": "5"})

    @app.exception_handler(CompNNError)
    async def _compnn(request: Request, exc: CompNNError):
        return _error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e.get("loc", ())[1:]) or "request"
            parts.append(f"{loc}: {e.get('msg')} (got {e.get('input')!r})")
        return _error(422, "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"Internal error ({type(exc).__name__}); see the server log")


def add_page_routes(app: FastAPI, state: ServiceState) -> None:
    """The viewer, its assets, health and the index's metadata."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def viewer() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/health")
    async def health() -> dict:
        """Liveness: answers while queries compute."""
        pool = state.pool
        return {"status": "ok", "images": state.cnn.num_images, "workers": pool.workers,
                "queries_in_flight": pool.in_flight, "queries_waiting": pool.waiting,
                "queries_completed": pool.completed, "queries_refused": pool.refused,
                "queries_abandoned": pool.abandoned, "results_cached": len(state.cache)}

    @app.get("/v1/index")
    async def index_info() -> dict:
        """Layers, LayerSpecs, image count and size, images with meta, model and dataset."""
        return state.summary


def add_query_routes(app: FastAPI, state: ServiceState) -> None:
    """``POST /v1/query`` and ``POST /v1/correspond``: computed in the engine pool."""
    cnn, pool, cache = state.cnn, state.pool, state.cache

    @app.post("/v1/query", openapi_extra=_QUERY_BODY)
    async def query(request: Request) -> dict:
        """Explain an image: NN field, shortlist, timings and links to the pictures."""
        t0 = time.perf_counter()
        fields = await read_fields(request, ("image",))
        p = await _parse(parse_query, fields, layers=cnn.layers, num_images=cnn.num_images)
        # top_k None: the API resolves the default shortlist (QueryOptions.resolve_top_k)
        result, waited = await pool.run(lambda engine: engine.query(state.image(p.image), **p.api_kwargs()),
                                        disconnected=_disconnected(request))
        stored = cache.put(StoredResult("query", result))

        def answer() -> Response:
            doc = result.to_json()
            doc["timings"].update(queued=round(waited, 6), server=round(time.perf_counter() - t0, 6))
            return _json({"query_id": stored.id, "image": p.image.describe(),
                          "image_size": list(state.image_size), **doc, "links": stored.links()})

        return await anyio.to_thread.run_sync(answer)  # a large field: serialised off the loop

    @app.post("/v1/correspond", openapi_extra=_CORRESPOND_BODY)
    async def correspond(request: Request) -> dict:
        """Semantic correspondences: each hyperpatch of image A matched to its most similar in B."""
        t0 = time.perf_counter()
        fields = await read_fields(request, ("image_a", "image_b"))
        p = await _parse(parse_correspond, fields, layers=cnn.layers, num_images=cnn.num_images)
        res: Correspondence
        res, waited = await pool.run(lambda engine: engine.correspond(
            state.image(p.image_a), state.image(p.image_b), layer=p.layer),
            disconnected=_disconnected(request))
        stored = cache.put(StoredResult("correspond", res))

        def answer() -> Response:
            timings = {k: round(float(v), 6) for k, v in res.timings.items()}
            timings.update(queued=round(waited, 6), server=round(time.perf_counter() - t0, 6))
            return _json({"query_id": stored.id, "layer": res.layer, "spec": res.spec.to_dict(),
                          "image_a": p.image_a.describe(), "image_b": p.image_b.describe(),
                          "nn_field": res.field.to_dict(), "timings": timings, "links": stored.links()})

        return await anyio.to_thread.run_sync(answer)


def add_picture_routes(app: FastAPI, state: ServiceState) -> None:
    """Database images and the pictures of cached results, as PNG."""
    cnn, cache = state.cnn, state.cache

    @app.get("/v1/images/{image_id}", responses=_PNG, response_class=Response)
    async def database_image(image_id: int, kind: Literal["input", "target", "output"] = "input"):
        """A database image as PNG (labels drawn with the manifest palette)."""
        if not 0 <= image_id < cnn.num_images:
            raise HTTPProblem(404, f"image id {image_id} does not exist; "
                                   f"expected 0 <= id < {cnn.num_images}")
        key = (image_id, kind)
        data = state.db_pngs.get(key)
        if data is None:
            data = await anyio.to_thread.run_sync(lambda: png_bytes(database_rgb(cnn, image_id, kind)))
            state.db_pngs[key] = data
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/v1/results/{query_id}/{filename}", responses=_PNG, response_class=Response)
    async def result_picture(query_id: str, filename: str):
        """A picture of a cached result: ``input``, ``output``, ``reconstruction_<source>``,
        ``correspondence_map`` (queries) or ``image_a``, ``image_b``, ``correspondence``."""
        stem, _, ext = filename.rpartition(".")
        if ext != "png" or stem not in QUERY_PICTURES + CORRESPOND_PICTURES:
            raise HTTPProblem(404, f"Unknown picture {_short(filename)}; expected <name>.png with "
                                   f"name one of {', '.join(QUERY_PICTURES + CORRESPOND_PICTURES)}")
        item = cache.get(query_id)
        if item is None:
            raise HTTPProblem(404, f"Result {_short(query_id)} is unknown or was evicted from the "
                                   f"result cache (it keeps the {cache.capacity} most recent)")
        data = await anyio.to_thread.run_sync(partial(item.png, cnn, stem))
        if data is None:
            raise HTTPProblem(404, f"Result {query_id} has no picture {stem!r}; it has "
                                   f"{', '.join(item.picture_names)}")
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})
