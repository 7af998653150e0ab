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

Every refused request is answered 4xx (or 503 when busy) with ``{"error": "..."}`` naming what is
wrong. What the service refuses, and how to expose it deliberately: ``docs/security.md``.
"""
from __future__ import annotations

import ipaddress
import logging
import sys
from pathlib import Path
from typing import Sequence, Union

from fastapi import FastAPI

from ..api import SEARCHES, CompNN, native_available
from ..checks import check_int, check_number
from .engines import EnginePool
from .memory import tune_allocator
from .middleware import BodyLimit, HostGuard, SecurityHeaders
from .protocol import HEADER_TIMEOUT, GuardedH11Protocol
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
    allow_hosts: Sequence[str] = (),
    max_queue: int | None = None,
    queue_timeout: float = 60.0,
    body_timeout: float = 30.0,
    max_buffered_bytes: int | None = None,
    verify: bool = False,
    cluster: str | None = None,
    warm: bool = False,
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
    allow_hosts : host names accepted in ``Host`` besides the loopback names (``"*"``: any);
        also the origins (by host name) allowed to POST, e.g. a reverse proxy's public name.
    max_queue : queries that may wait for a worker (default 16 per worker); more get 503.
    queue_timeout : seconds a query may wait for a worker before it is answered 503.
    body_timeout : seconds a request's body may take to arrive (else 408).
    max_buffered_bytes : request bodies held at once, all requests together (default
        ``max(4 * max_upload_bytes, 32 MiB)``); beyond, 503.
    verify : check every store file against its checksum on open (reads the whole store).
    cluster : Ray cluster whose actors search a sharded store's shards (``CompNN.load``'s).
    warm : read every layer into the page cache before serving (:meth:`CompNN.warm`).

    Raises
    ------
    IndexStoreError, ModelError
        If the store or its model cannot be loaded.
    ValueError
        For ``workers``, ``threads``, ``cache_size`` or ``max_upload_bytes`` out of range.
    """
    check_int(max_upload_bytes, "max_upload_bytes", low=1024)
    check_number(queue_timeout, "queue_timeout", low=0)
    check_number(body_timeout, "body_timeout", low=0)
    if cnn is None:
        cnn = CompNN.load(index_dir, mmap=True, verify=verify, cluster=cluster)
    if warm:
        for w in cnn.warm():
            log.warning("warm %s: %s", w["layer"], w.get("skipped") or
                        f"read {w['read_bytes'] / 1e9:.2f} of {w['bytes'] / 1e9:.2f} GB in {w['seconds']:.1f} s")
    pool = EnginePool(cnn, workers=workers, threads=threads, max_queue=max_queue,
                      queue_timeout=queue_timeout)
    from cachetools import LRUCache

    state = ServiceState(cnn=cnn, pool=pool, cache=ResultCache(cache_size), summary=index_summary(cnn),
                         db_pngs=LRUCache(maxsize=4 * cache_size))
    tune_allocator()

    app = FastAPI(
        title="compnn-index", version="1", docs_url=None, redoc_url=None,
        description="Compositional Nearest Neighbors: explain a pixel-level CNN's output by "
                    "the training patches its layer embedding matches.",
    )
    app.state.cnn, app.state.pool, app.state.cache = cnn, pool, state.cache
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes, read_timeout=body_timeout,
                       max_buffered=max_buffered_bytes)
    app.add_middleware(HostGuard, allowed=tuple(allow_hosts))
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


def uvicorn_config(app, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                   header_timeout: float = HEADER_TIMEOUT, keep_alive: int = 5, **kwargs):
    """The uvicorn configuration the service runs under (``serve`` and ``BackgroundServer``).

    The h11 protocol with a request-header deadline (:mod:`.protocol`), a 16 KiB limit on a
    request's headers, idle keep-alive connections closed after ``keep_alive`` seconds.
    """
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, http=GuardedH11Protocol,
                            timeout_keep_alive=keep_alive, h11_max_incomplete_event_size=16 * 1024,
                            ws="none", lifespan="auto", **kwargs)
    config.compnn_header_timeout = float(header_timeout)
    return config


def serve(
    index_dir: Union[str, Path],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 2,
    threads: int | None = None,
    cache_size: int = 64,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    allow_hosts: Sequence[str] = (),
    max_queue: int | None = None,
    verify: bool = False,
    cluster: str | None = None,
    warm: bool = False,
) -> None:
    """Load ``index_dir`` and serve it with uvicorn until interrupted.

    Listens on loopback by default; another ``host`` exposes the service (which has no
    authentication) to that network, and a warning says so. Requests must name a loopback host
    or one of ``allow_hosts`` (the bind address is added when it is a specific one).
    """
    import uvicorn

    check_int(port, "port", low=0, high=65535)
    allowed = list(allow_hosts)
    if not is_loopback(host):
        log.warning("serving on %s: the service has no authentication; anyone who can reach "
                    "this address can query the index", host)
        if host not in ("0.0.0.0", "::", ""):
            allowed.append(host)
    app = create_app(index_dir, workers=workers, threads=threads, cache_size=cache_size,
                     max_upload_bytes=max_upload_bytes, allow_hosts=allowed, max_queue=max_queue,
                     verify=verify, cluster=cluster, warm=warm)
    print(f"compnn serve: {index_dir} on http://{host}:{port}/ ({workers} query workers)")
    # Worker threads running Python code hand the GIL back to the event loop every 1 ms instead
    # of 5: /health and refusals stay quick while queries compute.
    sys.setswitchinterval(0.001)
    uvicorn.Server(uvicorn_config(app, host=host, port=port)).run()
