"""Query results kept for their pictures: a bounded, thread-safe LRU cache.

A result's PNGs are rendered on first request and kept with it; evicted results answer 404.
Picture names come from fixed allow-lists (:data:`QUERY_PICTURES`, :data:`CORRESPOND_PICTURES`),
so a URL can never name anything else.
"""
from __future__ import annotations

import io
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from cachetools import LRUCache
from PIL import Image

from ..api import CompNN, Correspondence, QueryResult
from ..checks import check_int
from ..pictures import to_rgb

QUERY_PICTURES = (
    "input", "output", "reconstruction_target", "reconstruction_input", "reconstruction_self",
    "correspondence_map",
)
CORRESPOND_PICTURES = ("image_a", "image_b", "correspondence")
RESULT_ID = re.compile(r"^[0-9a-f]{32}$")


def png_bytes(rgb: np.ndarray | Image.Image) -> bytes:
    """Encode a uint8 (H, W, 3) array or PIL image as PNG."""
    img = rgb if isinstance(rgb, Image.Image) else Image.fromarray(np.ascontiguousarray(rgb))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def palette_of(cnn: CompNN) -> np.ndarray | None:
    """The manifest's label palette as uint8 (K, 3), or None."""
    pal = cnn.store.manifest.get("palette")
    return None if pal is None else np.asarray(pal, dtype=np.uint8)


def database_rgb(cnn: CompNN, image_id: int, kind: str) -> np.ndarray:
    """A database image as uint8 (H, W, 3): ``kind`` is input, target or output."""
    arr = np.asarray(cnn.array({"input": "inputs", "target": "targets", "output": "outputs"}[kind])[image_id])
    if arr.ndim == 3:
        arr = arr.astype(np.float32)
    return to_rgb(arr, palette_of(cnn))


def _query_picture(cnn: CompNN, res: QueryResult, name: str) -> np.ndarray | Image.Image | None:
    """One of the result's pictures, drawn as :meth:`QueryResult.images` draws it."""
    ctx = res.context or cnn.context()
    if name == "input":
        return to_rgb(res.query_input, None)
    if name == "output":
        return ctx.picture(res.output)
    if name.startswith("reconstruction_"):
        src = name[len("reconstruction_"):]
        arr = res.reconstructions.get(src)
        if arr is None:
            return None
        return to_rgb(arr, None) if src == "input" else ctx.picture(arr)
    return res.correspondence_map()


def _correspond_picture(cnn: CompNN, res: Correspondence, name: str) -> np.ndarray | Image.Image:
    if name == "image_a":
        return to_rgb(res.image_a, None)
    if name == "image_b":
        return to_rgb(res.image_b, None)
    from ..pictures import correspondence_pairs

    return correspondence_pairs(to_rgb(res.image_a, None), to_rgb(res.image_b, None), res.field,
                                stride=res.spec.stride, region=res.spec.region)


@dataclass
class StoredResult:
    """A query or correspondence result and its rendered pictures."""

    kind: str  # "query" | "correspond"
    result: QueryResult | Correspondence
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    _pngs: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def picture_names(self) -> tuple[str, ...]:
        """The pictures this result has (allow-listed names)."""
        if self.kind == "correspond":
            return CORRESPOND_PICTURES
        res = self.result
        recon = tuple(f"reconstruction_{s}" for s in res.reconstructions)  # type: ignore[union-attr]
        return ("input", "output", *recon, "correspondence_map")

    def links(self, prefix: str = "/v1/results") -> dict[str, str]:
        """URL of each picture."""
        return {n: f"{prefix}/{self.id}/{n}.png" for n in self.picture_names}

    def png(self, cnn: CompNN, name: str) -> bytes | None:
        """The PNG called ``name`` (rendered once), or None if this result has no such picture."""
        if name not in self.picture_names:
            return None
        with self._lock:
            if name not in self._pngs:
                render: Callable = _correspond_picture if self.kind == "correspond" else _query_picture
                pic = render(cnn, self.result, name)
                if pic is None:
                    return None
                self._pngs[name] = png_bytes(pic)
            return self._pngs[name]


class ResultCache:
    """At most ``capacity`` results, least recently used evicted first (thread-safe).

    A :class:`cachetools.LRUCache` under a lock (cachetools' caches are not thread-safe).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = check_int(capacity, "cache_size", low=1)  # QueryError is a ValueError
        self._items: LRUCache = LRUCache(maxsize=self.capacity)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def put(self, item: StoredResult) -> StoredResult:
        with self._lock:
            self._items[item.id] = item
        return item

    def get(self, result_id: str) -> StoredResult | None:
        """The result, marked recently used; None if unknown, evicted or not a valid id."""
        if not RESULT_ID.match(result_id):
            return None
        with self._lock:
            return self._items.get(result_id)
