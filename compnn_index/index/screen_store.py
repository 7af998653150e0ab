"""Screening sidecars of a store's layers: written by build and compress, added by ``compnn upgrade``.

A layer's screen (:mod:`.screen`) is two files beside its FAISS file, recorded in the manifest:

    "screen": {"rows": "layers/<layer>.screen.npy", "basis": "layers/<layer>.screen-basis.npy",
               "width": 16, "energy": 0.90}

(``null`` or absent: no screen; HyperPatch-Match then reads every candidate). Unlike the norms
sidecar, a screen is a function of the stored vectors, so an older store gains one in place
(:func:`add_screens`): each file is written to a temporary name and renamed, the manifest (with
the new files' checksums) replaced last, so an interrupted run leaves the store as it was.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from ..errors import IndexStoreError
from . import integrity
from .manifest import read_manifest, write_manifest
from .screen import WIDTH, write_screen

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def screen_files(layer: str) -> tuple[str, str]:
    """Relative paths of a layer's screen rows and basis."""
    safe = _SAFE_NAME.sub("_", layer)
    return f"layers/{safe}.screen.npy", f"layers/{safe}.screen-basis.npy"


def add_screens(directory: str | os.PathLike, *, layers: Sequence[str] | None = None,
                width: int = WIDTH, progress: bool = True, checksums: bool = True) -> dict[str, dict]:
    """Write the screen of every layer of the store in ``directory`` that lacks one (or of each
    of ``layers``, replacing theirs) and record them in its manifest.

    ``checksums``: add the new files' SHA-256 to the manifest's checksums (when it keeps any).
    Returns the new manifest entries by layer (empty when every layer had a screen).

    Raises
    ------
    IndexStoreError
        The store cannot be opened, a named layer does not exist, or it is a sharded store
        (each shard carries its own screens: upgrade the shards).
    """
    from .store import IndexStore

    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest.get("shards"):
        raise IndexStoreError(
            f"index store {os.fspath(directory)!r} is sharded: its shards carry their own screens; "
            f"run compnn upgrade on each folder under {os.fspath(directory / 'shards')!r}")
    names = list(manifest["layers"])
    if layers is not None:
        unknown = [n for n in layers if n not in manifest["layers"]]
        if unknown:
            raise IndexStoreError(f"index store {os.fspath(directory)!r} has no layer {unknown[0]!r} "
                                  f"(it has {', '.join(names)})")
        todo = list(layers)
    else:
        todo = [n for n in names if not manifest["layers"][n].get("screen")]
    if not todo:
        return {}
    store = IndexStore.open(directory)
    added: dict[str, dict] = {}
    for name in todo:
        lv = store.layer(name)
        rows_rel, basis_rel = screen_files(name)
        tmp_rows = directory / (rows_rel + ".tmp.npy")
        tmp_basis = directory / (basis_rel + ".tmp.npy")
        bar = tqdm(total=lv.ntotal, unit="vec", unit_scale=True, desc=f"screen {name}",
                   disable=not progress, dynamic_ncols=True)
        try:
            with bar:
                info = write_screen(lv, tmp_rows, tmp_basis, width=width, progress=bar.update)
            os.replace(tmp_rows, directory / rows_rel)
            os.replace(tmp_basis, directory / basis_rel)
        except BaseException:
            for f in (tmp_rows, tmp_basis):
                f.unlink(missing_ok=True)
            raise
        added[name] = {"rows": rows_rel, "basis": basis_rel, "width": int(info["width"]),
                       "energy": round(float(info["energy"]), 6)}
    del store
    for name, entry in added.items():
        manifest["layers"][name]["screen"] = entry
    sums = manifest.get("checksums")
    if checksums and isinstance(sums, dict):
        for entry in added.values():
            for rel in (entry["rows"], entry["basis"]):
                sums[rel] = integrity.sha256_file(directory / rel)
    _replace_manifest(directory, manifest)
    return added


def upgrade_screens(directory: str | os.PathLike, *, width: int = WIDTH, progress: bool = True) -> list[str]:
    """Add the missing screens of a store in place — of each shard of a sharded store, whose
    manifest hashes the top manifest then records anew. Returns one line per layer written."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    lines: list[str] = []
    if not manifest.get("shards"):
        for name, e in add_screens(directory, width=width, progress=progress).items():
            lines.append(f"{name}: wrote screen {e['rows']} (width {e['width']}, energy {e['energy']:.3f})")
        return lines
    for shard in manifest["shards"]:
        folder = directory / shard["path"]
        for name, e in add_screens(folder, width=width, progress=progress).items():
            lines.append(f"{shard['path']} {name}: wrote screen (width {e['width']}, energy {e['energy']:.3f})")
        shard["manifest_sha256"] = integrity.sha256_file(folder / "manifest.json")
    if lines:
        _replace_manifest(directory, manifest)
    return lines


def _replace_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest beside the old one, then rename it over (a reader sees old or new)."""
    tmp = directory / ".manifest.upgrade"
    tmp.mkdir(exist_ok=True)
    try:
        path = write_manifest(tmp, json.loads(json.dumps(manifest)))
        os.replace(path, directory / path.name)
    finally:
        for f in tmp.iterdir():
            f.unlink(missing_ok=True)
        tmp.rmdir()
