"""``compnn compress``: re-encode an index store's layers with another codec, streaming, atomically.

Each layer is read block by block (``LayerVectors.blocks``: zero-copy fp32 views, or decoded
tiles of another codec) and appended to the new codec's streaming writer, so at most one block
(:data:`COMPRESS_ROWS` vectors) is in RAM. ``sq8`` first trains its ranges on
:data:`~compnn_index.index.codecs.SQ_TRAIN_ROWS` vectors taken as 32 contiguous chunks spread
over the layer (sequential reads, not random ones). The global descriptors, sidecar arrays and
everything else are copied unchanged; the manifest records the new codec per layer and where the
store was compressed from.

Atomicity, as for a build: everything is written into a temporary folder beside ``out``
(``.<name>.compressing-XXXX``, holding an ``OWNER`` file with the writer's host and pid), the
manifest last, then renamed to ``out``. Any exception, ``KeyboardInterrupt`` included, removes the
folder; a run killed outright (SIGKILL, power loss) leaves it behind without a manifest — nothing
loadable — and the next ``compress`` (or ``build``) to the same ``out`` removes such folders
whose owner process is gone.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import IndexStoreError
from . import integrity
from .codecs import SQ_TRAIN_ROWS, check_codec, file_bytes, layer_writer, n_trained, roundtrip, train_codec
from .manifest import FORMAT_VERSION, MANIFEST_NAME, write_manifest
from .screen import WIDTH as SCREEN_WIDTH, ScreenWriter, check_screen_width
from .screen_store import screen_files
from .memory import StoreSize, check_disk
from .store import IndexStore

#: Vectors per block read and written while compressing (16384 × 512 float32 = 32 MiB).
COMPRESS_ROWS = 16384
_TMP_TAG = ".compressing-"
_OWNER = "OWNER"


def _sample(lv, rows: int = SQ_TRAIN_ROWS, chunks: int = 32) -> np.ndarray:
    """Up to ``rows`` vectors of ``lv`` as ``chunks`` contiguous runs spread over the ids."""
    n = lv.ntotal
    per = max(1, min(n, rows) // chunks)
    starts = np.unique(np.linspace(0, max(n - per, 0), chunks).astype(np.int64))
    parts = []
    for a in starts:
        for _, block in lv.blocks(int(a), int(min(a + per, n))):
            parts.append(np.array(block, dtype=np.float32))
    return np.concatenate(parts)


def _owner_alive(folder: Path) -> bool:
    try:
        host, pid = (folder / _OWNER).read_text().split()
    except (OSError, ValueError):
        return False  # no owner file: written by nobody alive (or not by us)
    if host != socket.gethostname():
        return True  # another machine's run: leave it alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def clean_stale(out: Path, tag: str = _TMP_TAG) -> list[Path]:
    """Remove temporary folders of earlier runs to ``out`` that were killed; return them."""
    removed = []
    for folder in out.parent.glob(f".{out.name}{tag}*"):
        if folder.is_dir() and not (folder / MANIFEST_NAME).exists() and not _owner_alive(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def compress_store(src: str | os.PathLike, out: str | os.PathLike, *, codec: str,
                   overwrite: bool = False, progress: bool = True, screen: int = SCREEN_WIDTH,
                   rows: int = COMPRESS_ROWS, _interrupt_after: int | None = None) -> Path:
    """Write a copy of the store ``src`` whose layers use ``codec``; return ``out``.

    Parameters
    ----------
    src : path-like
        An index store (any codec).
    out : path-like
        The new store's folder (must differ from ``src``).
    codec : {"fp32", "fp16", "sq8"}
    overwrite : bool, default False
        Replace an existing ``out`` (only once the new store is complete).
    screen : int, default 16
        Width of each layer's screening sidecar, computed anew from the re-encoded vectors
        (:mod:`.screen`; the source's is not copied); 0 writes none.
    rows : int
        Vectors per streamed block.
    """
    from .build import _current_umask, _move_into_place

    codec = check_codec(codec)
    screen = check_screen_width(screen)
    src, out = Path(src), Path(out)
    store = IndexStore.open(src)
    if out.resolve() == src.resolve():
        raise IndexStoreError(f"compress: --out {os.fspath(out)!r} is the source store; write a new folder")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise IndexStoreError(
            f"index store {os.fspath(out)!r} already exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    stale = clean_stale(out)
    if stale and progress:
        print(f"removed {len(stale)} stale temporary folder(s) of an interrupted run: "
              + ", ".join(p.name for p in stale))
    man = json.loads(json.dumps(store.manifest))
    layer_bytes = {name: file_bytes(codec, e["dim"], e["ntotal"]) for name, e in man["layers"].items()}
    other = sum(f.stat().st_size for f in src.rglob("*") if f.is_file()) - sum(
        (src / e["file"]).stat().st_size for e in man["layers"].values())
    check_disk(StoreSize(layers=layer_bytes, global_bytes=0, arrays={"other": other}), out.parent)

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{_TMP_TAG}", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_current_umask())
    (tmp / _OWNER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    try:
        written = 0
        for name, entry in man["layers"].items():
            lv = store.layer(name)
            sample = _sample(lv) if (screen or n_trained(codec, lv.dim)) else None
            trained = train_codec(codec, sample) if n_trained(codec, lv.dim) else None
            (tmp / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
            # the screen of the re-encoded vectors, written in the same pass (not the source's)
            sw = ScreenWriter(tmp, *screen_files(name), lv.ntotal, roundtrip(codec, sample, trained),
                              screen) if screen else None
            bar = tqdm(total=lv.ntotal, unit="vec", unit_scale=True, desc=f"compress {name} → {codec}",
                       disable=not progress, dynamic_ncols=True)
            try:
                with bar, layer_writer(tmp / entry["file"], lv.dim, codec, trained) as w:
                    for a in range(0, lv.ntotal, rows):
                        for _, block in lv.blocks(a, min(a + rows, lv.ntotal), rows=rows):
                            w.add(block)
                            if sw is not None:
                                sw.add(roundtrip(codec, block, trained))
                        bar.update(min(rows, lv.ntotal - a))
                        written += 1
                        if _interrupt_after is not None and written >= _interrupt_after:
                            raise KeyboardInterrupt("compress interrupted (test)")
                entry["screen"] = sw.close() if sw is not None else None
            finally:
                if sw is not None:
                    sw.abort()
            entry["codec"] = codec
        layer_files = {os.path.normpath(e["file"]) for e in man["layers"].values()}
        layer_files |= {os.path.normpath(rel) for e in store.manifest["layers"].values()
                        for key, rel in (e.get("screen") or {}).items() if key in ("rows", "basis")}
        for f in sorted(src.rglob("*")):
            rel = f.relative_to(src)
            if f.is_file() and os.path.normpath(rel) not in layer_files and rel.name != MANIFEST_NAME:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, tmp / rel)
        man["format_version"] = FORMAT_VERSION
        man["compressed"] = {
            "from": os.fspath(src.resolve()), "codec": codec,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 3),
        }
        (tmp / _OWNER).unlink()
        man["checksums"] = integrity.compute_checksums(tmp)  # of the new files, not the source's
        write_manifest(tmp, man)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
