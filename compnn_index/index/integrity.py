"""Integrity of an index store: manifest shape, file checksums, array headers, stale builds.

What a store promises, and how it is checked:

- ``manifest.json`` is a JSON object of the documented shape (:func:`check_manifest_shape`):
  a manifest that parses but holds, say, ``"image_size": "big"`` is refused with a message
  naming the key, never with a ``ValueError`` from deep inside a query. Paths it names stay
  inside the store.
- Its top-level ``"checksums"`` maps every other file of the store (relative POSIX path) to its
  SHA-256, computed by the build in one sequential pass before the store is moved into place
  (:func:`compute_checksums`). Opening a store verifies the small files (at most
  :data:`VERIFY_ON_OPEN_BYTES` each: the global index, small sidecars); ``verify=True`` (the
  ``--verify`` flag) and ``compnn verify STORE`` verify every file. Stores written before
  checksums (``"checksums": null``) open unverified.
- ``.npy`` sidecars have a readable header whose dtype and shape agree with the manifest and
  with the file's size (:func:`check_npy_file`): a garbage ``outputs.npy`` is refused on open,
  naming the file and what is wrong.
- A build works in ``.NAME.building-XXXX`` beside its target and leaves in it a lock file with
  its PID (:func:`claim_build_dir`); the next build removes such folders whose builder is dead
  and names the ones it cannot attribute (:func:`clean_stale_builds`).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import warnings
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import IndexStoreError

MANIFEST = "manifest.json"
#: Files at most this large are checksum-verified every time a store is opened.
VERIFY_ON_OPEN_BYTES = 16 * 1024 * 1024
#: The lock file a build keeps in its temporary folder (removed before the folder is renamed).
BUILD_LOCK = ".build.lock"
_CHUNK = 4 * 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


# ---------------------------------------------------------------------------- manifest shape
def _is_int(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _safe_rel(rel: Any) -> bool:
    """A relative path that stays inside the store (no absolute path, no ``..``)."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        return False
    p = PurePosixPath(rel)
    return not p.is_absolute() and ".." not in p.parts


def check_manifest_shape(manifest: dict[str, Any], path: str) -> None:
    """Raise :class:`IndexStoreError` naming the first key whose value has the wrong shape.

    Checks what the readers rely on: ``image_size`` (two positive ints), ``images`` (a list of
    objects with a ``name``), every layer entry (``file``, ``grid``, ``dim``, ``ntotal``,
    ``spec``), ``global``, ``arrays`` (``file``, ``dtype``, ``shape``), ``model`` and
    ``checksums``. Fields it does not know are left alone (newer writers may add some).
    """
    def bad(key: str, expected: str, value: Any) -> IndexStoreError:
        text = repr(value)
        text = text if len(text) <= 60 else text[:57] + "..."
        return IndexStoreError(f"{path}: expected {key} to be {expected}, but found {text}")

    size = manifest.get("image_size")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v, 1) for v in size)):
        raise bad("image_size", "[height, width] (two positive integers)", size)
    images = manifest.get("images")
    if not isinstance(images, list) or not images:
        raise bad("images", "a non-empty list of image records", images)
    for i, im in enumerate(images):
        if not isinstance(im, dict) or not isinstance(im.get("name"), str) or \
                not isinstance(im.get("meta", {}) or {}, dict):
            raise bad(f"images[{i}]", 'an object with a "name" string (and a "meta" object)', im)
    if not isinstance(manifest.get("model"), dict):
        raise bad("model", "an object", manifest.get("model"))
    if manifest.get("task") not in ("translate", "segment"):
        raise bad("task", '"translate" or "segment"', manifest.get("task"))
    layers = manifest.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise bad("layers", "a non-empty object of layer entries", layers)
    entries = [(f"layers[{name!r}]", entry) for name, entry in layers.items()]
    entries.append(("global", manifest.get("global")))
    # A sharded store's top manifest names no layer or array files: its shards hold them.
    sharded = bool(manifest.get("shards"))
    for key, entry in entries:
        if not isinstance(entry, dict):
            raise bad(key, "an object", entry)
        if sharded and key != "global" and entry.get("file") is None:
            pass
        elif not _safe_rel(entry.get("file")):
            raise bad(f"{key}.file", "a relative path inside the store", entry.get("file"))
        if not _is_int(entry.get("dim"), 1):
            raise bad(f"{key}.dim", "a positive integer", entry.get("dim"))
        if not _is_int(entry.get("ntotal"), 0):
            raise bad(f"{key}.ntotal", "a non-negative integer", entry.get("ntotal"))
        if not isinstance(entry.get("spec"), dict):
            raise bad(f"{key}.spec", "an object (a LayerSpec)", entry.get("spec"))
        if key != "global":
            grid = entry.get("grid")
            if not (isinstance(grid, list) and len(grid) == 2 and all(_is_int(v, 1) for v in grid)):
                raise bad(f"{key}.grid", "[Hp, Wp] (two positive integers)", grid)
            norms = entry.get("norms")
            if norms is not None and not _safe_rel(norms):
                raise bad(f"{key}.norms", "null or a relative path inside the store", norms)
            screen = entry.get("screen")
            if screen is not None and not (isinstance(screen, dict) and _safe_rel(screen.get("rows"))
                                           and _safe_rel(screen.get("basis"))
                                           and _is_int(screen.get("width"), 2)):
                raise bad(f"{key}.screen", "null or {rows, basis: relative paths inside the store, "
                          "width: an integer >= 2}", screen)
    if not isinstance(manifest["global"].get("layer"), str):
        raise bad("global.layer", "a layer name", manifest["global"].get("layer"))
    arrays = manifest.get("arrays")
    if not isinstance(arrays, dict):
        raise bad("arrays", "an object of array entries", arrays)
    for name, entry in arrays.items():
        key = f"arrays[{name!r}]"
        if not isinstance(entry, dict):
            raise bad(key, "an object", entry)
        if not (sharded and entry.get("file") is None) and not _safe_rel(entry.get("file")):
            raise bad(f"{key}.file", "a relative path inside the store", entry.get("file"))
        if not isinstance(entry.get("dtype"), str):
            raise bad(f"{key}.dtype", "a NumPy dtype name", entry.get("dtype"))
        shape = entry.get("shape")
        if not (isinstance(shape, list) and all(_is_int(v, 0) for v in shape)):
            raise bad(f"{key}.shape", "a list of non-negative integers", shape)
    sums = manifest.get("checksums")
    if sums is not None:
        if not isinstance(sums, dict):
            raise bad("checksums", "null or an object {file: sha256}", sums)
        for rel, digest in sums.items():
            if not _safe_rel(rel) or not isinstance(digest, str) or not _HEX64.fullmatch(digest):
                raise bad(f"checksums[{rel!r}]", "a SHA-256 (64 hex digits) of a file in the store",
                          digest)


# ---------------------------------------------------------------------------- checksums
def sha256_file(path: str | os.PathLike, progress: Callable[[int], None] | None = None) -> str:
    """SHA-256 of a file, read sequentially in 4 MiB chunks (hashlib releases the GIL)."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            h.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return h.hexdigest()


def store_files(root: str | os.PathLike) -> list[str]:
    """Every regular file under ``root`` but the manifest and a build lock, as sorted POSIX paths."""
    root = Path(root)
    out = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            rel = p.relative_to(root).as_posix()
            if rel in (MANIFEST, BUILD_LOCK) or not p.is_file() or p.is_symlink():
                continue
            out.append(rel)
    return sorted(out)


def compute_checksums(root: str | os.PathLike) -> dict[str, str]:
    """``{relative file: sha256}`` of every file of a (just written) store but its manifest."""
    root = Path(root)
    return {rel: sha256_file(root / rel) for rel in store_files(root)}


def verify_checksums(root: str | os.PathLike, checksums: dict[str, str] | None, *,
                     max_bytes: int | None = VERIFY_ON_OPEN_BYTES) -> list[str]:
    """Check files against the manifest's checksums; return the files verified.

    ``max_bytes``: skip files larger than this (``None``: verify every file). A store without
    checksums (``None``) verifies nothing.

    Raises
    ------
    IndexStoreError
        A listed file is missing or its SHA-256 differs (the message names the file, both
        digests and what to do).
    """
    root = Path(root)
    done: list[str] = []
    for rel, expected in (checksums or {}).items():
        file = root / rel
        if not file.is_file():
            raise IndexStoreError(f"{os.fspath(file)!r} is missing (the manifest lists it with a "
                                  "checksum); the store is incomplete")
        if max_bytes is not None and file.stat().st_size > max_bytes:
            continue
        actual = sha256_file(file)
        if actual != expected:
            raise IndexStoreError(
                f"{os.fspath(file)!r} is corrupt: its SHA-256 is {actual[:16]}…, the manifest "
                f"records {expected[:16]}…; rebuild the store (compnn build --overwrite)"
            )
        done.append(rel)
    return done


# ---------------------------------------------------------------------------- file contents
def check_npy_file(file: Path, dtype: str, shape: Iterable[int]) -> None:
    """The ``.npy`` file's header is readable and agrees with ``dtype``, ``shape`` and its size."""
    shape = tuple(int(s) for s in shape)
    name = os.fspath(file)
    try:
        with open(file, "rb") as f:
            magic = f.read(6)
            if magic != b"\x93NUMPY":
                raise IndexStoreError(f"{name!r} is not a .npy file: it starts with {magic!r}, "
                                      "expected b'\\x93NUMPY'; the store is corrupt")
            f.seek(0)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise IndexStoreError(f"{name!r}: unsupported .npy version {version}")
            offset = f.tell()
    except IndexStoreError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise IndexStoreError(f"{name!r}: the .npy header is unreadable ({exc}); the store is "
                              "corrupt") from None
    if got_dtype.hasobject:
        raise IndexStoreError(f"{name!r} holds Python objects (dtype {got_dtype}); expected {dtype}")
    if str(got_dtype) != dtype or tuple(got_shape) != shape or fortran:
        raise IndexStoreError(f"{name!r}: expected {dtype} {shape} (C order), but its header says "
                              f"{got_dtype} {tuple(got_shape)}{' (Fortran order)' if fortran else ''}")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * got_dtype.itemsize
    actual = file.stat().st_size
    if actual != expected:
        raise IndexStoreError(f"{name!r} has {actual} bytes, expected {expected} for {dtype} "
                              f"{shape}; the file is truncated or corrupt")


def check_finite(values: np.ndarray, what: str) -> None:
    """Raise :class:`IndexStoreError` if ``values`` holds NaN or infinity (``what`` names them)."""
    arr = np.asarray(values)
    if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise IndexStoreError(f"{what}: {bad} of {arr.size} values are NaN or infinite; the "
                              "index store is corrupt (compnn verify STORE names the file)")


# ---------------------------------------------------------------------------- build folders
def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (to tell a PID from a later process reusing it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    now = _process_start(pid)
    return start is None or now is None or now == start


def claim_build_dir(tmp: Path) -> None:
    """Write the lock file naming this builder (host, PID, process start time) into ``tmp``."""
    pid = os.getpid()
    (tmp / BUILD_LOCK).write_text(f"{socket.gethostname()} {pid} {_process_start(pid) or '-'}\n")


def release_build_dir(tmp: Path) -> None:
    """Remove the lock file before the finished folder becomes the store."""
    (tmp / BUILD_LOCK).unlink(missing_ok=True)


def clean_stale_builds(parent: Path, name: str) -> list[Path]:
    """Remove ``.NAME.building-*`` folders in ``parent`` whose builder process is dead.

    A folder whose lock names a live process (a concurrent build) is left alone. A folder
    without a readable lock (a build older than locks, another host) is not removed: a warning
    names it and its size, so the user can delete it. Returns the folders removed.
    """
    removed: list[Path] = []
    try:
        candidates = sorted(parent.glob(f".{glob_escape(name)}.building-*"))
    except OSError:
        return removed
    for d in candidates:
        if not d.is_dir() or d.is_symlink():
            continue
        try:
            host, pid, start = (d / BUILD_LOCK).read_text().split()
            pid_i = int(pid)
        except (OSError, ValueError):
            warnings.warn(f"{os.fspath(d)!r} ({_size_text(d)}) looks like the folder of an "
                          "interrupted build of this store, but has no lock naming its builder; "
                          "delete it if no build is running", stacklevel=3)
            continue
        if host != socket.gethostname():
            warnings.warn(f"{os.fspath(d)!r} ({_size_text(d)}) belongs to a build on host "
                          f"{host!r}; delete it if that build is not running", stacklevel=3)
            continue
        if _alive(pid_i, None if start == "-" else start):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _size_text(d: Path) -> str:
    total = 0
    for dirpath, _, names in os.walk(d):
        for n in names:
            try:
                total += (Path(dirpath) / n).stat().st_size
            except OSError:
                pass
    return f"{total / 1e6:.1f} MB"


# ---------------------------------------------------------------------------- compnn verify
def verify_store(path: str | os.PathLike) -> list[str]:
    """Everything ``compnn verify STORE`` checks; returns its report, one line per file.

    Opens the store (manifest shape, file sizes, ``.npy`` headers), verifies every file against
    the manifest's checksums and, for a store built before checksums, checks that every stored
    vector is finite instead.

    Raises
    ------
    IndexStoreError
        At the first problem, naming the file and what is wrong.
    """
    from .store import IndexStore

    root = Path(path)
    store = IndexStore.open(root, mmap=True)  # shape, sizes, headers, small checksums
    man = store.manifest
    sums = man.get("checksums")
    lines = [f"{os.fspath(root / MANIFEST)}: format version {man['format_version']}, "
             f"{store.num_images} images, layers {', '.join(store.layers)}"]
    if man.get("shards"):
        # a sharded store: opening it checked every shard's manifest hash against the top
        # manifest; each shard is an ordinary store with its own checksums, verified in full
        for shard in man["shards"]:
            lines += [f"{shard['path']}/{line}" if not line.startswith("/") else line
                      for line in verify_store(root / shard["path"])[1:]]
        check_finite(store.global_vectors(), f"global descriptors in {man['global']['file']!r}")
        lines.append(f"{man['global']['file']}: {store.num_images} finite global descriptors")
        lines.append(f"{os.fspath(root)}: ok ({len(man['shards'])} shards)")
        return lines
    if sums:
        for rel in verify_checksums(root, sums, max_bytes=None):
            size = (root / rel).stat().st_size
            lines.append(f"{rel}: sha256 ok ({size / 1e6:.1f} MB)")
        extra = sorted(set(store_files(root)) - set(sums))
        lines += [f"{rel}: not covered by the manifest's checksums (not part of the store?)"
                  for rel in extra]
    else:
        lines.append("no checksums recorded (a store built before checksums): checking that "
                     "every stored vector is finite instead")
        check_finite(store.global_vectors(), f"global descriptors in {man['global']['file']!r}")
        for layer in store.layers:
            lv = store.layer(layer)
            for start, block in lv.blocks(0, lv.ntotal):
                for a in range(0, len(block), 1 << 16):
                    check_finite(block[a: a + (1 << 16)],
                                 f"layer {layer!r} vectors {start + a}.. in {man['layers'][layer]['file']!r}")
            lines.append(f"{man['layers'][layer]['file']}: {lv.ntotal} finite vectors")
        for name in man["arrays"]:
            arr = store.array(name)
            if arr.dtype.kind == "f":
                for a in range(0, len(arr), 64):
                    check_finite(arr[a: a + 64], f"array {name!r} rows {a}.. in {man['arrays'][name]['file']!r}")
            lines.append(f"{man['arrays'][name]['file']}: {arr.dtype} {tuple(arr.shape)} ok")
    lines.append(f"{os.fspath(root)}: ok")
    return lines
