"""Building a sharded store: one ordinary store per contiguous image range, the global index
and the top manifest last (resumable; an interrupted build leaves nothing that loads)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import IndexStoreError
from .build import _move_into_place, build_index, fit_build
from .fit import BuildFit, store_uses_fit
from .flatfile import FlatIPWriter
from .manifest import FORMAT_VERSION, GLOBAL_FILE, MANIFEST_NAME, write_manifest
from .store import IndexStore

SHARD_DIR = "shards"
PLAN_NAME = "sharded-build.json"
FIT_NAME = "fit.npz"  # the driver's fit, kept while the build runs (resumes reuse it)


# ---------------------------------------------------------------------------- planning

def plan_shards(num_images: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous, balanced image ranges ``[start, stop)``: ``shards`` of them, none empty."""
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1:
        raise IndexStoreError(f"Expected shards to be a positive integer, but shards = {shards!r}")
    if shards > num_images:
        raise IndexStoreError(
            f"Expected at most one shard per image, but shards = {shards} > {num_images} images")
    bounds = [round(i * num_images / shards) for i in range(int(shards) + 1)]
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ShardView:
    """Images ``[start, stop)`` of a dataset, as a dataset (what one shard's build indexes)."""

    def __init__(self, dataset: Any, start: int, stop: int) -> None:
        self.dataset, self.start, self.stop = dataset, int(start), int(stop)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.dataset[self.start + i]

    @property
    def identity(self) -> dict[str, Any]:
        return {**dict(getattr(self.dataset, "identity", {}) or {}), "shard_images": [self.start, self.stop]}

    def __getattr__(self, name: str) -> Any:  # task, num_classes, palette, image_size, ...
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


@dataclass(frozen=True)
class ShardTask:
    """One shard to build: images ``[start, stop)`` of the dataset into ``out`` (picklable)."""

    index: int
    start: int
    stop: int
    out: str
    layers: tuple[str, ...]
    options: dict = field(default_factory=dict)  # build_index keywords (batch_size, specs, ...)


def build_shard(task: ShardTask, model: Any, dataset: Any, *, threads: int | None = None) -> str:
    """Build one shard (an ordinary store, written atomically); returns its folder."""
    opts = dict(task.options, threads=threads if threads is not None else task.options.get("threads"))
    build_index(model, ShardView(dataset, task.start, task.stop), layers=list(task.layers),
                out=task.out, overwrite=True, **opts)
    return task.out


def run_sequentially(tasks: Sequence[ShardTask], model: Any, dataset: Any) -> None:
    """The default runner: build the shards one after another in this process."""
    for task in tasks:
        build_shard(task, model, dataset)


Runner = Callable[[Sequence[ShardTask], Any, Any], None]


def _shard_complete(folder: Path, start: int, stop: int, model_digest: str, layers: Sequence[str],
                    fit: BuildFit | None) -> bool:
    """Whether ``folder`` holds a finished shard of this plan, written with the build's ``fit``
    (so a resumed build keeps it: every shard of a store shares the driver's fit)."""
    if fit is None:
        return False  # the fit is saved before any shard starts: a shard without one is not ours
    try:
        man = IndexStore.open(folder).manifest
    except IndexStoreError:
        return False
    return (len(man["images"]) == stop - start and man["model"].get("hash") == model_digest
            and list(man["layers"]) == list(layers)
            and man["dataset"].get("shard_images") == [start, stop]
            and store_uses_fit(folder, man, fit))


def _driver_fit(work: Path, model: Any, dataset: Any, layers: Sequence[str], build_options: dict,
                progress: bool) -> BuildFit:
    """The fit every shard of this build uses: the one saved in ``work`` by an interrupted run of
    the same plan, else fitted now over the whole dataset (:func:`~.build.fit_build`) and saved."""
    file = work / FIT_NAME
    if file.is_file():
        try:
            return BuildFit.load(file)
        except IndexStoreError:
            file.unlink(missing_ok=True)  # unreadable: fit again (no shard was kept for it)
    t = time.perf_counter()
    fit = fit_build(model, dataset, layers=layers, **build_options)
    fit.save(file)
    if progress:
        print(f"fitted the codec ranges and screen bases once for every shard in {time.perf_counter() - t:.1f} s")
    return fit


def build_sharded(
    model: Any,
    dataset: Any,
    *,
    shards: int,
    layers: Sequence[str],
    out: str | os.PathLike,
    overwrite: bool = False,
    runner: Runner | None = None,
    progress: bool = True,
    **build_options: Any,
) -> Path:
    """Build a sharded index store: ``shards`` sub-stores over contiguous image ranges.

    Parameters
    ----------
    model, dataset, layers, out, overwrite
        As for :func:`~compnn_index.index.build.build_index`.
    shards : int
        Number of shards (``1 <= shards <= len(dataset)``).
    runner : callable, optional
        ``runner(tasks, model, dataset)`` builds the given :class:`ShardTask` s (each with
        :func:`build_shard`); default: one after another in this process.
    build_options
        Passed to every shard's ``build_index`` (``batch_size``, ``specs``, ``global_layer``,
        ``threads``, ``model_path``, ...).

    Returns
    -------
    Path
        ``out``.
    """
    from ..models import model_hash

    out = Path(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise IndexStoreError(
            f"index store {os.fspath(out)!r} already exists; pass overwrite=True (--overwrite on the "
            "command line) to replace it")
    if isinstance(layers, str) or not layers:
        raise IndexStoreError(f"Expected layers to be a non-empty list of layer names, but layers = {layers!r}")
    n = len(dataset)
    if n == 0:
        raise IndexStoreError("the dataset is empty: expected at least one image to index")
    ranges = plan_shards(n, shards)
    started = time.perf_counter()
    digest = model_hash(model)
    plan = {"ranges": [list(r) for r in ranges], "model_hash": digest, "layers": list(layers),
            "dataset": json.loads(json.dumps(dict(getattr(dataset, "identity", {}) or {}), default=str)),
            "options": json.loads(json.dumps({k: v for k, v in build_options.items()
                                              if k not in ("threads", "progress")}, default=str))}
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.sharded-building"
    plan_file = work / PLAN_NAME
    if work.exists():
        try:
            same = json.loads(plan_file.read_text(encoding="utf-8")) == plan
        except (OSError, ValueError):
            same = False
        if not same:  # another build's leftovers: start over
            shutil.rmtree(work)
    (work / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    (work / MANIFEST_NAME).unlink(missing_ok=True)  # never a top manifest before the shards
    plan_file.write_text(json.dumps(plan, indent=1), encoding="utf-8")
    try:
        saved = BuildFit.load(work / FIT_NAME) if (work / FIT_NAME).is_file() else None
    except IndexStoreError:
        saved = None  # unreadable: no shard is kept, the fit is made again
    todo = [(i, a, b) for i, (a, b) in enumerate(ranges)
            if not _shard_complete(work / SHARD_DIR / f"{i:03d}", a, b, digest, layers, saved)]
    if todo:
        # one fit for every shard (not one per shard): the same screen basis and sq8 ranges in
        # each, and the sample pass paid once (see compnn_index.index.fit)
        fit = _driver_fit(work, model, dataset, layers, build_options, progress)
        options = dict(build_options, progress=progress and runner is None, fitted=fit)
        tasks = [ShardTask(i, a, b, os.fspath(work / SHARD_DIR / f"{i:03d}"), tuple(layers), options)
                 for i, a, b in todo]
        (runner or run_sequentially)(tasks, model, dataset)
    t = time.perf_counter()
    assemble(work, ranges, started=started)
    if progress:
        print(f"assembled the global index and the top manifest in {time.perf_counter() - t:.1f} s")
    (work / FIT_NAME).unlink(missing_ok=True)  # every shard holds its copy (its screen basis, sq8 header)
    _move_into_place(work, out)
    return out


def assemble(root: Path, ranges: Sequence[tuple[int, int]], *, started: float | None = None) -> dict[str, Any]:
    """Write the whole global index and, last, the top manifest of the shards under ``root``."""
    parts = []
    for i, (a, b) in enumerate(ranges):
        folder = root / SHARD_DIR / f"{i:03d}"
        store = IndexStore.open(folder)
        if store.num_images != b - a:
            raise IndexStoreError(f"shard {i} at {os.fspath(folder)!r} holds {store.num_images} images, "
                                  f"expected {b - a} (images {a}..{b - 1})")
        parts.append((i, a, b, folder, store))
    first = parts[0][4].manifest
    for i, a, b, folder, store in parts[1:]:
        man = store.manifest
        for key in ("model", "task", "image_size"):
            if man[key] != first[key]:
                raise IndexStoreError(f"shard {i} differs from shard 0 in {key!r}; rebuild the store")
        if list(man["layers"]) != list(first["layers"]) or any(
                man["layers"][k][f] != first["layers"][k][f] for k in first["layers"]
                for f in ("spec", "grid", "dim", "codec")):
            raise IndexStoreError(f"shard {i} has other layers than shard 0; rebuild the store")
    gdim = int(first["global"]["dim"])
    writer = FlatIPWriter(root / GLOBAL_FILE, gdim)
    try:
        for *_, store in parts:
            writer.add(np.ascontiguousarray(store.global_vectors()))
        gtotal = writer.close()
    finally:
        writer.abort()
    n = ranges[-1][1]
    images = []
    for i, a, b, folder, store in parts:
        for j, im in enumerate(store.manifest["images"]):
            images.append({**im, "id": a + j})
    layers = {}
    for name, entry in first["layers"].items():
        total = sum(int(s.manifest["layers"][name]["ntotal"]) for *_, s in parts)
        layers[name] = {**entry, "ntotal": total, "file": None,
                        "norms": None, "screen": None}
    arrays = {name: {"file": None, "dtype": entry["dtype"], "shape": [n] + list(entry["shape"][1:])}
              for name, entry in first["arrays"].items()}
    shards = []
    for i, a, b, folder, store in parts:
        shards.append({
            "index": i, "path": f"{SHARD_DIR}/{i:03d}", "images": [a, b],
            "manifest_sha256": file_sha256(folder / MANIFEST_NAME),
            "layers": {k: int(v["ntotal"]) for k, v in store.manifest["layers"].items()},
            "bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        })
    dataset = dict(first["dataset"])
    dataset.pop("shard_images", None)
    manifest = {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - started, 3) if started is not None
        else round(sum(float(s.manifest.get("build_seconds") or 0) for *_, s in parts), 3),
        "model": first["model"], "dataset": dataset, "task": first["task"],
        "num_classes": first.get("num_classes"), "ignore_index": first.get("ignore_index"),
        "class_names": first.get("class_names"), "palette": first.get("palette"), "image_size": first["image_size"], "images": images,
        "layers": layers,
        "global": {**first["global"], "ntotal": gtotal, "file": GLOBAL_FILE},
        "arrays": arrays, "shards": shards, "checksums": None, "versions": first.get("versions"),
    }
    for optional in ("input_labels",):  # what every shard records alike
        if first.get(optional) is not None:
            manifest[optional] = first[optional]
    write_manifest(root, manifest)
    return manifest


# ---------------------------------------------------------------------------- reading
