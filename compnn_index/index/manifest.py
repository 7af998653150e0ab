"""The index store's ``manifest.json``: what was built, from what, with which libraries.

Layout (``FORMAT_VERSION`` 2)::

    {
      "format_version": 2,
      "created": "2026-01-01T12:00:00+00:00", "build_seconds": 12.3,
      "model":   {"arch": "unet", "config": {...}, "hash": "<sha256>", "checkpoint": "/abs/path.pt" | null},
      "dataset": {...dataset.identity...},
      "task": "translate" | "segment", "num_classes": int | null, "ignore_index": int | null,
      "palette": [[r, g, b], ...] | null, "class_names": [str, ...] | null (e.g. from classes.txt),
      "image_size": [H, W],
      "images":  [{"id": 0, "name": "1", "height": H, "width": W, "meta": {...}}, ...],
      "layers":  {"decoder2": {"spec": {...LayerSpec.to_dict()...}, "grid": [Hp, Wp], "dim": D,
                               "ntotal": n * Hp * Wp, "file": "layers/decoder2.faiss"}, ...},
      "global":  {"layer": "encoder8", "spec": {...}, "descriptor": "flatten-l2", "dim": Dg,
                  "ntotal": n, "file": "global.faiss"},
      "arrays":  {"inputs": {"file": "arrays/inputs.npy", "dtype": "float32", "shape": [...]}, ...},
      "versions": {"compnn_index": ..., "faiss": ..., "torch": ..., "numpy": ..., "python": ...}
    }

Every layer index is an ``IndexFlatIP`` of L2-normalised hyperpatches; image ``i``'s positions
occupy ids ``sum(n_j for j < i) ...`` row-major over its grid.

Versions. There is one format version. Each change of the layout adds fields and bumps it once;
:func:`read_manifest` still reads every version in :data:`READABLE_VERSIONS`, filling the fields
an older version lacks with the values that describe it (:func:`upgrade_manifest`: a version-1
layer is ``"codec": "fp32"`` without a norms sidecar, the store is unsharded and carries no
checksums), and refuses any other version with a message saying which command rebuilds it.
Version 2 adds, per layer, ``"codec"`` (``"fp32"`` | ``"fp16"`` | ``"sq8"``) and ``"norms"``
(the file of the hyperpatch-norm sidecar — ``layers/<layer>.norms.npy``, float32
``(ntotal,)``, each stored hyperpatch's norm before normalisation, written by every build since
fused exact search — or null: such a store must be rebuilt to get one, since norms cannot be
recovered from the normalised vectors in general); at the top, ``"shards"`` (null, or the shard
list of a sharded store) and ``"checksums"`` (null, or ``{relative file: sha256}``).
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from ..checks import load_json
from ..errors import IndexStoreError
from .integrity import check_manifest_shape

#: Version of the on-disk layout this code writes.
FORMAT_VERSION = 2
#: Versions this code reads (older ones are upgraded in memory by :func:`upgrade_manifest`).
READABLE_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
GLOBAL_FILE = "global.faiss"
LAYER_DIR = "layers"
ARRAY_DIR = "arrays"

_REQUIRED = ("format_version", "model", "dataset", "task", "images", "layers", "global", "arrays")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the stored vectors (recorded in the manifest)."""
    import faiss
    import numpy
    import torch

    from .. import __version__

    return {
        "compnn_index": __version__,
        "faiss": faiss.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` into ``directory`` (UTF-8, indented); return its path."""
    path = Path(directory) / MANIFEST_NAME
    text = json.dumps(manifest, indent=1, sort_keys=False, allow_nan=False)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return path


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and check the manifest of the index store in ``directory``.

    Raises
    ------
    IndexStoreError
        If the folder or its manifest is missing, not JSON, of another format version, or lacks
        a required key (the message names the file).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise IndexStoreError(f"index store {os.fspath(directory)!r} is not a directory")
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise IndexStoreError(
            f"{os.fspath(path)!r} is missing: {os.fspath(directory)!r} is not a (complete) index store"
        )
    try:  # nesting deeper than MAX_JSON_DEPTH is refused (IndexStoreError), never a RecursionError
        manifest = load_json(path.read_text(encoding="utf-8"), f"{os.fspath(path)!r}", error=IndexStoreError)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexStoreError(f"{os.fspath(path)!r} is not a readable JSON manifest: {exc}") from None
    if not isinstance(manifest, dict):
        raise IndexStoreError(
            f"{os.fspath(path)!r}: expected a JSON object, but found {type(manifest).__name__}"
        )
    version = manifest.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise IndexStoreError(
            f"{os.fspath(path)!r}: format_version = {version!r}, but this version of compnn-index "
            f"reads format versions {', '.join(map(str, READABLE_VERSIONS))}; rebuild the store with "
            "`compnn build` (or open it with the compnn-index release that wrote it)"
        )
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise IndexStoreError(f"{os.fspath(path)!r} lacks required keys {missing}")
    if not isinstance(manifest["layers"], dict) or not manifest["layers"]:
        raise IndexStoreError(f"{os.fspath(path)!r} lists no layers")
    manifest = upgrade_manifest(manifest)
    check_manifest_shape(manifest, repr(os.fspath(path)))
    return manifest


def upgrade_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """Fill the fields an older format version lacks (in place and returned); see the module doc."""
    for entry in manifest["layers"].values():
        if isinstance(entry, dict):
            entry.setdefault("codec", "fp32")
            entry.setdefault("norms", None)
    manifest.setdefault("shards", None)
    manifest.setdefault("checksums", None)
    return manifest


def rebuild_command(directory: str | os.PathLike, manifest: dict[str, Any]) -> str:
    """The ``compnn build`` command line that rebuilds the store in ``directory`` in place."""
    ds = manifest.get("dataset") or {}
    parts = ["compnn build", f"--model {(manifest.get('model') or {}).get('checkpoint') or 'MODEL.pt'}",
             f"--data {ds.get('path') or ds.get('kind') or 'DATA'}"]
    if ds.get("split") not in (None, "train"):
        parts.append(f"--split {ds['split']}")
    if ds.get("direction"):
        parts.append(f"--direction {ds['direction']}")
    if ds.get("size"):
        parts.append(f"--size {ds['size'][0]}")
    if ds.get("limit"):
        parts.append(f"--limit {ds['limit']}")
    codecs = {e.get("codec", "fp32") for e in manifest["layers"].values()}
    if codecs != {"fp32"}:  # a compressed store is rebuilt with its codec
        parts.append(f"--codec {sorted(codecs)[0]}")
    parts += [f"--layers {','.join(manifest['layers'])}", f"--out {os.fspath(directory)}", "--overwrite"]
    return " ".join(parts)


def upgrade_store(directory: str | os.PathLike) -> str:
    """Bring a store up to what this version writes, or say why it must be rebuilt.

    The only thing an older store can lack is the per-layer norms sidecar (format version 1, or
    version 2 built before fused exact search). It cannot be added in place: the store keeps
    only L2-normalised hyperpatches, and normalisation discards each window's norm (within an
    image the norms are fixed only up to ratios of overlapping windows, and not at all where a
    window is zero), so such a store is refused with the command that rebuilds it. Returns a
    one-line summary when there is nothing to do.

    Raises
    ------
    IndexStoreError
        A layer has no norms sidecar (the message names the rebuild command), or the store is
        unreadable.
    """
    manifest = read_manifest(directory)
    if manifest.get("shards"):  # the layers live in the shards: each is an ordinary store
        for shard in manifest["shards"]:
            upgrade_store(Path(directory) / shard["path"])
        return (f"index store {os.fspath(directory)!r} is up to date (format version "
                f"{manifest['format_version']}, {len(manifest['shards'])} shards, norms for layers "
                f"{', '.join(manifest['layers'])} in every shard)")
    missing = [name for name, entry in manifest["layers"].items() if not entry.get("norms")]
    if missing:
        raise IndexStoreError(
            f"index store {os.fspath(directory)!r}: layers {', '.join(missing)} have no norms sidecar, "
            "and the norms cannot be recovered from the stored L2-normalised vectors in general "
            "(normalisation discards each window's norm), so the store must be rebuilt; exact search "
            "uses FAISS on it meanwhile. Rebuild with: " + rebuild_command(directory, manifest))
    return (f"index store {os.fspath(directory)!r} is up to date (format version "
            f"{manifest['format_version']}, norms for layers {', '.join(manifest['layers'])})")
