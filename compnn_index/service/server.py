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
import logging
from pathlib import Path
from typing import Union

from fastapi import FastAPI

from ..api import SEARCHES, CompNN, native_available
from ..checks import check_int
from .engines import EnginePool
from .middleware import BodyLimit, SecurityHeaders
from .results import ResultCache
from .routes import ServiceState, add_routes

log = logging.getLogger("compnn.service")

DEFAULT_MAX_UPLOAD = 8 * 1024 * 1024


def index_summary(cnn: CompNN) -> dict:
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
        "searches": list(SEARCHES),  # HyperPatch-Match always runs: native kernel or NumPy
        "native_kernel": native_available(),
        "palette": man.get("palette"),
        "class_names": list(cnn.context().class_names) if cnn.context().class_names else None,
        "model": {k: model.get(k) for k in ("arch", "config", "hash") if k in model},
        "dataset": man.get("dataset"),
        "format_version": man.get("format_version", man.get("version")),
        "images": [{"id": i, "name": n, "meta": meta[i] if i < len(meta) else {}}
                   for i, n in enumerate(names)],
        # meta keys worth a restrict switch: few distinct values (materials, floors, flags)
        "meta_values": {k: sorted(v) for k, v in values.items()
                        if k not in floats and 1 < len(v) <= min(32, max(2, len(names) // 2))},
    }


# ---------------------------------------------------------------------------- the app
def create_app(
    index_dir: Union[str, Path],
    *,
    workers: int = 2,
    threads: int | None = None,
    cache_size: int = 64,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    cnn: CompNN | None = None,
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

    Raises
    ------
    IndexStoreError, ModelError
        If the store or its model cannot be loaded.
    ValueError
        For ``workers``, ``threads``, ``cache_size`` or ``max_upload_bytes`` out of range.
    """
    check_int(max_upload_bytes, "max_upload_bytes", low=1024)
    if cnn is None:
        cnn = CompNN.load(index_dir, mmap=True)
    pool = EnginePool(cnn, workers=workers, threads=threads)
    from cachetools import LRUCache

    state = ServiceState(cnn=cnn, pool=pool, cache=ResultCache(cache_size), summary=index_summary(cnn),
                         db_pngs=LRUCache(maxsize=4 * cache_size))

    app = FastAPI(
        title="compnn-index", version="1", docs_url=None, redoc_url=None,
        description="Compositional Nearest Neighbors: explain a pixel-level CNN's output by "
                    "the training patches its layer embedding matches.",
    )
    app.state.cnn, app.state.pool, app.state.cache = cnn, pool, state.cache
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)
    app.add_middleware(SecurityHeaders)  # outermost: every answer carries the headers
    add_routes(app, state)
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
) -> None:
    """Load ``index_dir`` and serve it with uvicorn until interrupted.

    Listens on loopback by default; another ``host`` exposes the service (which has no
    authentication) to that network, and a warning says so.
    """
    import uvicorn

    check_int(port, "port", low=0, high=65535)
    if not is_loopback(host):
        log.warning("serving on %s: the service has no authentication; anyone who can reach "
                    "this address can query the index", host)
    app = create_app(index_dir, workers=workers, threads=threads, cache_size=cache_size,
                     max_upload_bytes=max_upload_bytes)
    print(f"compnn serve: {index_dir} on http://{host}:{port}/ ({workers} query workers)")
    uvicorn.run(app, host=host, port=port, log_level="info", workers=None)
