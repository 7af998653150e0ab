"""``compnn serve``: the HTTP query API and the correspondence viewer.

One process loads the index store (memory-mapped, read-only) and its model once and answers
queries in a bounded pool of worker threads (:class:`~.engines.EnginePool`), so the event loop —
``/health``, pictures, the viewer — stays responsive while queries compute.

Endpoints (JSON unless noted; schema at ``/openapi.json``):

- ``GET /`` the viewer page; ``GET /static/...`` its script and style.
- ``GET /health``; ``GET /v1/index`` layers, specs, images, meta, model and dataset identity.
- ``GET /v1/images/{id}?kind=input|target|output`` a database image (PNG).
- ``POST /v1/query`` explain an uploaded image (multipart field ``image``) or a database image
  (``image_id``); ``GET /v1/results/{query_id}/{name}.png`` its pictures.
- ``POST /v1/correspond`` semantic correspondences from image A to image B.

Every refused request is answered 4xx with ``{"error": "..."}`` naming what is wrong.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any, Literal, Union

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..api import CompNN, Correspondence
from ..errors import CompNNError
from .engines import EnginePool
from .params import (
    INIT_CHOICES, Fields, HTTPProblem, ImageRef, decode_upload, parse_correspond, parse_query,
)
from .results import (
    CORRESPOND_PICTURES, QUERY_PICTURES, ResultCache, StoredResult, database_rgb, png_bytes,
)

log = logging.getLogger("compnn.service")

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_MAX_UPLOAD = 8 * 1024 * 1024
DEFAULT_TOP_K = 16
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
}

_QUERY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "image": {"type": "string", "format": "binary",
                          "description": "query image file (PNG/JPEG…) of the index's image size"},
                "image_id": {"type": "integer", "description": "or: a database image id"},
                "layer": {"type": "string"},
                "search": {"type": "string", "enum": ["exact", "patchmatch"]},
                "top_k": {"type": "integer", "minimum": 1},
                "restrict": {"type": "string",
                             "description": "comma-separated ids/names, or KEY=VALUE (material=brick)"},
                "sources": {"type": "string", "description": "comma-separated: target,input,self"},
                "iterations": {"type": "integer"}, "samples": {"type": "integer"},
                "jumps": {"type": "integer"},
                "seed": {"type": "integer"}, "init": {"type": "string", "enum": list(INIT_CHOICES)},
            }}},
            "application/json": {"schema": {"type": "object", "properties": {
                "image_id": {"type": "integer"}, "layer": {"type": "string"},
                "search": {"type": "string", "enum": ["exact", "patchmatch"]},
                "top_k": {"type": "integer", "minimum": 1},
                "restrict": {"oneOf": [{"type": "string"}, {"type": "array", "items": {
                    "oneOf": [{"type": "integer"}, {"type": "string"}]}}]},
                "sources": {"type": "array", "items": {"type": "string"}},
                "iterations": {"type": "integer"}, "samples": {"type": "integer"},
                "jumps": {"type": "integer"},
                "seed": {"type": "integer"}, "init": {"type": "string", "enum": list(INIT_CHOICES)},
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


# ---------------------------------------------------------------------------- middleware
class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413 before parsing.

    The body is read (bounded) before the app sees it, whether or not ``Content-Length`` is
    sent; an oversized body is drained (up to a cap) so the client reads the 413 answer.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def _refuse(self, send, got: str) -> None:
        body = json.dumps({"error": f"Request body too large: {got}; the limit is "
                                    f"{self.max_bytes} bytes (max_upload_bytes)"}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._drain(receive, limit=16 * self.max_bytes)
            await self._refuse(send, f"Content-Length {int(declared)}")
            return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await self._drain(receive, limit=16 * self.max_bytes)
                await self._refuse(send, f"more than {self.max_bytes} bytes sent")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _drain(receive, *, limit: int) -> None:
        seen = 0
        while seen <= limit:
            message = await receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


class SecurityHeaders:
    """ASGI middleware: add :data:`_SECURITY_HEADERS` (CSP, nosniff, …) to every response."""

    def __init__(self, app) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in _SECURITY_HEADERS.items()]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.headers if k not in present]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ---------------------------------------------------------------------------- helpers
def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _short(value: str, n: int = 48) -> str:
    return repr(value if len(value) <= n else value[:n] + "…")


async def _read_fields(request: Request, uploads: tuple[str, ...]) -> Fields:
    """The request's fields: a JSON object, or form fields plus the named file uploads."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPProblem(400, f"The request body is not valid JSON ({exc})") from None
        if not isinstance(body, dict):
            raise HTTPProblem(422, f"Expected a JSON object, got {type(body).__name__}")
        return Fields(values=body)
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=len(uploads), max_fields=32)
        values: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in uploads:
                    raise HTTPProblem(422, f"Unexpected file field {key!r}; expected uploads named "
                                           f"{', '.join(map(repr, uploads))}")
                if key in files:
                    raise HTTPProblem(422, f"More than one file in field {key!r}")
                files[key] = await value.read()
            else:
                values.setdefault(key, []).append(value)
        return Fields(values={k: v[0] if len(v) == 1 else v for k, v in values.items()},
                      uploads=files, form=True)
    raise HTTPProblem(
        415, f"Expected Content-Type multipart/form-data or application/json, got {ctype or 'none'!r}"
    )


def index_summary(cnn: CompNN, *, patchmatch_error: str | None) -> dict:
    """What ``GET /v1/index`` answers: everything a client needs to form queries."""
    store, man = cnn.store, cnn.store.manifest
    names = list(store.image_names)
    meta = list(getattr(store, "image_meta", None) or [{} for _ in names])
    values: dict[str, set] = {}
    floats: set = set()
    for m in meta:
        for k, v in (m or {}).items():
            if isinstance(v, float):
                floats.add(k)
            elif isinstance(v, (str, int, bool)):
                values.setdefault(k, set()).add(str(v))
    model = man.get("model", {}) or {}
    return {
        "task": cnn.task,
        "num_classes": cnn.num_classes,
        "num_images": cnn.num_images,
        "image_size": list(store.image_size),
        "layers": cnn.layers,
        "default_layer": cnn.layers[0],
        "specs": {layer: store.spec(layer).to_dict() for layer in cnn.layers},
        "global_layer": cnn.global_tap,
        "searches": ["exact"] + ([] if patchmatch_error else ["patchmatch"]),
        "patchmatch_error": patchmatch_error,
        "palette": man.get("palette"),
        "model": {k: model.get(k) for k in ("arch", "config", "hash") if k in model},
        "dataset": man.get("dataset"),
        "format_version": man.get("format_version", man.get("version")),
        "images": [{"id": i, "name": n, "meta": meta[i] if i < len(meta) else {}}
                   for i, n in enumerate(names)],
        # meta keys worth a restrict switch: few distinct values (materials, floors, flags)
        "meta_values": {k: sorted(v) for k, v in values.items()
                        if k not in floats and 1 < len(v) <= min(32, max(2, len(names) // 2))},
    }


def _patchmatch_error() -> str | None:
    """Why HyperPatch-Match cannot run here: never — the native kernel or its NumPy fallback runs."""
    return None


# ---------------------------------------------------------------------------- the app
def create_app(
    index_dir: Union[str, Path],
    *,
    workers: int = 2,
    threads: int | None = None,
    cache_size: int = 64,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    cnn: CompNN | None = None,
    cluster: str | None = None,
) -> FastAPI:
    """Build the ASGI app over one index store.

    Parameters
    ----------
    index_dir : index store folder (``compnn build``'s output); opened memory-mapped, read-only.
    workers : queries computed at once (worker threads, each with its own model replica).
    threads : compute threads per query (default: cores // workers).
    cache_size : query results kept for their pictures (least recently used evicted).
    max_upload_bytes : request bodies over this are refused with 413.
    cnn : an already loaded :class:`CompNN` to serve instead of loading ``index_dir``.
    cluster : Ray cluster whose actors search a sharded store's shards (``CompNN.load``'s).

    Raises
    ------
    IndexStoreError, ModelError
        If the store or its model cannot be loaded.
    ValueError
        For ``workers``, ``threads``, ``cache_size`` or ``max_upload_bytes`` out of range.
    """
    if isinstance(max_upload_bytes, bool) or not isinstance(max_upload_bytes, int) or max_upload_bytes < 1024:
        raise ValueError(f"Expected max_upload_bytes >= 1024, but max_upload_bytes = {max_upload_bytes!r}")
    if cnn is None:
        cnn = CompNN.load(index_dir, mmap=True, cluster=cluster)
    pool = EnginePool(cnn, workers=workers, threads=threads)
    cache = ResultCache(cache_size)
    pm_error = _patchmatch_error()
    summary = index_summary(cnn, patchmatch_error=pm_error)
    image_size = tuple(summary["image_size"])
    db_pngs: "OrderedDict[tuple[int, str], bytes]" = OrderedDict()

    app = FastAPI(
        title="compnn-index", version="1", docs_url=None, redoc_url=None,
        description="Compositional Nearest Neighbors: explain a pixel-level CNN's output by "
                    "the training patches its layer embedding matches.",
    )
    app.state.cnn, app.state.pool, app.state.cache = cnn, pool, cache
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)
    app.add_middleware(SecurityHeaders)  # outermost: every answer carries the headers

    # ------------------------------------------------------------ errors → {"error": ...}
    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, exc: HTTPProblem):
        return _error(exc.status, exc.message)

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

    # ------------------------------------------------------------ pages and metadata
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def viewer() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/health")
    async def health() -> dict:
        """Liveness: answers while queries compute."""
        return {"status": "ok", "images": cnn.num_images, "workers": pool.workers,
                "queries_in_flight": pool.in_flight, "queries_completed": pool.completed,
                "results_cached": len(cache)}

    @app.get("/v1/index")
    async def index_info() -> dict:
        """Layers, LayerSpecs, image count and size, images with meta, model and dataset."""
        return summary

    @app.get("/v1/images/{image_id}", responses=_PNG, response_class=Response)
    async def database_image(image_id: int, kind: Literal["input", "target", "output"] = "input"):
        """A database image as PNG (labels drawn with the manifest palette)."""
        if not 0 <= image_id < cnn.num_images:
            raise HTTPProblem(404, f"image id {image_id} does not exist; "
                                   f"expected 0 <= id < {cnn.num_images}")
        key = (image_id, kind)
        data = db_pngs.get(key)
        if data is None:
            data = await anyio.to_thread.run_sync(lambda: png_bytes(database_rgb(cnn, image_id, kind)))
            db_pngs[key] = data
            while len(db_pngs) > 4 * cache_size:
                db_pngs.popitem(last=False)
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    # ------------------------------------------------------------ queries
    def _image(ref: ImageRef):
        if ref.data is not None:
            return decode_upload(ref.data, name=ref.field, image_size=image_size)
        return ref.image_id

    @app.post("/v1/query", openapi_extra=_QUERY_BODY)
    async def query(request: Request) -> dict:
        """Explain an image: NN field, shortlist, timings and links to the pictures."""
        t0 = time.perf_counter()
        fields = await _read_fields(request, ("image",))
        p = parse_query(fields, layers=cnn.layers, num_images=cnn.num_images, patchmatch_error=pm_error)
        def job(engine: CompNN):
            kwargs = p.api_kwargs()
            if kwargs["top_k"] is None:  # default: 16, or all candidates when fewer
                kwargs["top_k"] = min(DEFAULT_TOP_K, len(engine.candidates(p.restrict)))
            return engine.query(_image(p.image), **kwargs)

        result, waited = await pool.run(job)
        stored = cache.put(StoredResult("query", result))
        doc = result.to_json()
        doc["timings"].update(queued=round(waited, 6), server=round(time.perf_counter() - t0, 6))
        return {"query_id": stored.id, "image": p.image.describe(), "image_size": list(image_size),
                **doc, "links": stored.links()}

    @app.post("/v1/correspond", openapi_extra=_CORRESPOND_BODY)
    async def correspond(request: Request) -> dict:
        """Semantic correspondences: each hyperpatch of image A matched to its most similar in B."""
        t0 = time.perf_counter()
        fields = await _read_fields(request, ("image_a", "image_b"))
        p = parse_correspond(fields, layers=cnn.layers, num_images=cnn.num_images)
        res: Correspondence
        res, waited = await pool.run(
            lambda engine: engine.correspond(_image(p.image_a), _image(p.image_b), layer=p.layer))
        stored = cache.put(StoredResult("correspond", res))
        timings = {k: round(float(v), 6) for k, v in res.timings.items()}
        timings.update(queued=round(waited, 6), server=round(time.perf_counter() - t0, 6))
        return {"query_id": stored.id, "layer": res.layer, "spec": res.spec.to_dict(),
                "image_a": p.image_a.describe(), "image_b": p.image_b.describe(),
                "nn_field": res.field.to_dict(), "timings": timings, "links": stored.links()}

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

    return app


def is_loopback(host: str) -> bool:
    """Whether ``host`` names the loopback interface (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    index_dir: Union[str, Path],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 2,
    threads: int | None = None,
    cache_size: int = 64,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    cluster: str | None = None,
) -> None:
    """Load ``index_dir`` and serve it with uvicorn until interrupted.

    Listens on loopback by default; another ``host`` exposes the service (which has no
    authentication) to that network, and a warning says so.
    """
    import uvicorn

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"Expected 0 <= port <= 65535, but port = {port!r}")
    if not is_loopback(host):
        log.warning("serving on %s: the service has no authentication; anyone who can reach "
                    "this address can query the index", host)
    app = create_app(index_dir, workers=workers, threads=threads, cache_size=cache_size,
                     max_upload_bytes=max_upload_bytes, cluster=cluster)
    print(f"compnn serve: {index_dir} on http://{host}:{port}/ ({workers} query workers)")
    uvicorn.run(app, host=host, port=port, log_level="info", workers=None)
