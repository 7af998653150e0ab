"""Per-image results of ``evaluate`` kept on disk, so a stopped evaluation continues where it was.

A full-scale table (106 test images, exact top-64 search) takes hours on a CPU; an evaluation
killed after image 60 must not search images 1–60 again. Each image's record — the confusion
matrices and metrics of every table row for that image, plus a small picture strip for the
examples figure — is one JSON file (and PNG) in the cache folder, written atomically (temp file
+ ``os.replace``) when the image is done. A record is reused only when its ``fingerprint`` — a
hash of everything that decides its numbers (store, model, layer, search options, top-k, rows,
test data) — equals the run's; any other record is recomputed and overwritten.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

#: Bumped when the record layout or what a record's rows mean changes.
CACHE_VERSION = 1


def fingerprint(parts: Mapping[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of the JSON of ``parts`` plus :data:`CACHE_VERSION`."""
    text = json.dumps({"cache_version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(name)) or "_"


class ImageCache:
    """One folder of per-image records of one evaluation (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike, fingerprint: str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self.hits = 0
        self.computed = 0

    def path(self, name: str) -> Path:
        return self.folder / f"{_safe(name)}.json"

    def get(self, name: str) -> dict | None:
        """The image's record if it is there and of this run's fingerprint, else None."""
        path = self.path(name)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("fingerprint") != self.fingerprint or record.get("image") != name:
            return None
        self.hits += 1
        return record

    def put(self, name: str, record: dict, example: list[np.ndarray] | None = None) -> None:
        """Write the image's record (and its example strip) atomically; the JSON goes last."""
        record = dict(record, fingerprint=self.fingerprint, image=name)
        if example is not None:
            from PIL import Image

            png = self.folder / f"{_safe(name)}.example.png"
            tmp = png.with_name(f".{png.stem}.tmp.png")
            Image.fromarray(np.concatenate(example, axis=1)).save(tmp)
            os.replace(tmp, png)
            record["example_panels"] = len(example)
        path = self.path(name)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)
        self.computed += 1

    def example(self, name: str, record: dict) -> list[np.ndarray] | None:
        """The example strip written with the record, split back into its panels."""
        panels = record.get("example_panels")
        png = self.folder / f"{_safe(name)}.example.png"
        if not panels or not png.is_file():
            return None
        from PIL import Image

        with Image.open(png) as im:
            strip = np.asarray(im.convert("RGB"))
        return list(np.split(strip, int(panels), axis=1))
