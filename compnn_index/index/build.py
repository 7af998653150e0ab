"""``build_index``: extract every training image's hyperpatches once and store them on disk.

Memory: the build streams. Each batch's hyperpatches are appended straight to the layer's
``.faiss`` file by :class:`~compnn_index.index.flatfile.FlatIPWriter` (the exact
``faiss.write_index`` format), and the sidecar arrays to their ``.npy`` files by
:class:`~compnn_index.index.npyfile.NpyWriter`, so peak RAM is about one batch of activations whatever the number of images. The store's
size is estimated from a one-image probe before anything is written, and a build that would not
fit on the disk is refused.

Atomicity: everything is written into a hidden temporary folder beside ``out``
(``.<name>.building-XXXX``), the manifest last; only after a complete build is the folder renamed
to ``out`` (``os.replace``). Any exception, ``KeyboardInterrupt`` included, removes the temporary
folder and leaves ``out`` as it was; a build killed outright leaves its folder with a lock file
naming its PID, and the next build beside it removes it (:mod:`.integrity`). The manifest records
every file's SHA-256 (``"checksums"``), computed in one pass before the rename.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checks import check_threads, thread_limit
from ..data import as_paired_dataset
from ..data.pix2pix import input_label_palette
from ..errors import IndexStoreError, ModelError
from ..features import FeatureExtractor, LayerSpec, default_layer_specs, infer_layer_specs, smallest_tap
from ..models import model_hash
from .codecs import check_codec, layer_writer, roundtrip
from . import integrity
from .flatfile import FlatIPWriter
from .manifest import ARRAY_DIR, FORMAT_VERSION, GLOBAL_FILE, LAYER_DIR, library_versions, write_manifest
from .memory import batch_bytes, check_disk, check_memory, store_size
from .npyfile import NpyWriter
from .pairs import manifest_entries, parse_pairs, plan_pairs
from .fit import BuildFit, SamplePass, check_fit, fit_sample
from .screen import WIDTH as SCREEN_WIDTH, ScreenWriter, check_screen_width
from .screen_store import screen_files

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def _layer_file(layer: str) -> str:
    """Relative path of a layer's FAISS file (the tap name, made file-system safe)."""
    return f"{LAYER_DIR}/{_SAFE_NAME.sub('_', layer)}.faiss"


def _norms_file(layer: str) -> str:
    """Relative path of a layer's hyperpatch-norm sidecar (float32 ``(ntotal,)`` .npy)."""
    return f"{LAYER_DIR}/{_SAFE_NAME.sub('_', layer)}.norms.npy"


def _resolve_specs(
    model: torch.nn.Module, layers: Sequence[str | LayerSpec], specs: Mapping[str, LayerSpec] | None,
    image_size: tuple[int, int],
) -> dict[str, LayerSpec]:
    """The LayerSpec of every requested layer, in request order, strides inferred by probing."""
    if not isinstance(layers, str) and any(isinstance(x, LayerSpec) for x in layers or ()):
        specs = {**(specs or {}), **{x.name: x for x in layers if isinstance(x, LayerSpec)}}
        layers = [x.name if isinstance(x, LayerSpec) else x for x in layers]
    if isinstance(layers, str) or not layers:
        raise IndexStoreError(
            f"Expected layers to be a non-empty list of layer names, but layers = {layers!r}"
        )
    if len(set(layers)) != len(layers):
        raise IndexStoreError(f"Expected distinct layer names, but layers = {list(layers)}")
    available = dict(specs) if specs is not None else default_layer_specs(model, image_size)
    unknown = [name for name in layers if name not in available]
    if unknown:
        raise ModelError(
            f"unknown layers {unknown}: expected names among {', '.join(available)}"
        )
    return infer_layer_specs(model, [available[name] for name in layers], image_size)


def _global_tap(model: torch.nn.Module, global_layer: str | LayerSpec | None,
                layer_specs: Mapping[str, LayerSpec], image_size: tuple[int, int]):
    """``global_layer``, else the model's bottleneck, else the indexed tap of smallest map."""
    if global_layer is None and not callable(getattr(model, "bottleneck_tap", None)):
        return smallest_tap(model, list(layer_specs.values()), image_size)
    return global_layer


def _array_layouts(dataset: Any, sample: Any, output_shape: tuple[int, ...]) -> dict[str, tuple[tuple, np.dtype]]:
    """Shape and dtype of the sidecar arrays ``inputs``, ``targets``, ``outputs``."""
    n = len(dataset)
    target = np.asarray(sample.target)
    target_dtype = np.dtype(np.int64) if np.issubdtype(target.dtype, np.integer) else np.dtype(np.float32)
    if dataset.task == "segment":
        outputs = ((n,) + tuple(output_shape[1:]), np.dtype(np.int64))  # argmax over classes
    else:
        outputs = ((n,) + tuple(output_shape), np.dtype(np.float32))
    return {
        "inputs": ((n,) + tuple(sample.input.shape), np.dtype(np.float32)),
        "targets": ((n,) + tuple(target.shape), target_dtype),
        "outputs": outputs,
    }


def _probe(
    extractor: FeatureExtractor, sample: Any
) -> tuple[dict[str, tuple[int, int, int]], int, tuple[int, ...]]:
    """Per-layer (Hp, Wp, D), the global dimension and the output shape, from image 0."""
    outputs, patches, gdesc = extractor(np.asarray(sample.input, dtype=np.float32)[None])
    shapes = {name: tuple(int(s) for s in hp.shape[1:]) for name, hp in patches.items()}
    return shapes, int(gdesc.shape[1]), tuple(outputs.shape[1:])


def _image_record(i: int, sample: Any) -> dict[str, Any]:
    h, w = (int(s) for s in sample.input.shape[1:])
    return {"id": i, "name": str(sample.name), "height": h, "width": w, "meta": dict(sample.meta or {})}


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished temporary store to ``out``, replacing what was there."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def build_index(
    model: torch.nn.Module,
    dataset: Any,
    *,
    layers: Sequence[str],
    out: str | os.PathLike,
    specs: Mapping[str, LayerSpec] | None = None,
    global_layer: str | None = None,
    batch_size: int = 8,
    threads: int | None = None,
    progress: bool = True,
    model_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    codec: str = "fp32",
    pairs: Sequence[Any] | None = None,
    screen: int = SCREEN_WIDTH,
    fitted: BuildFit | None = None,
) -> Path:
    """Build an index store of ``model``'s hyperpatches over every image of ``dataset``.

    Parameters
    ----------
    model : nn.Module
        The network (a built-in model, or any module with ``specs`` given). Every forward runs
        in eval mode (its mode is restored afterwards).
    dataset : PairedDataset or map-style dataset
        Sequence of samples with ``task``, ``num_classes``, ``ignore_index``, ``palette``,
        ``identity`` and ``image_size`` (see ``compnn_index.data``); every image the same size.
        Any other map-style dataset of ``(input, target)`` pairs (a ``torch.utils.data.Dataset``)
        is wrapped by :class:`compnn_index.data.WrappedDataset`.
    layers : list of str or LayerSpec
        Layers to index, each as one ``IndexFlatIP`` of L2-normalised hyperpatches: tap names
        (of ``specs`` or the model's taps), or specs. A spec's stride (and default region) may
        be left out: it is inferred by probing (:func:`compnn_index.features.infer_layer_specs`).
    out : path-like
        Folder to create.
    specs : dict of str to LayerSpec, optional
        Layer geometry; default :func:`compnn_index.features.default_layer_specs`.
    global_layer : str or LayerSpec, optional
        Tap whose flattened, L2-normalised activation is the global descriptor: a tap name or
        any module path of the model. Default ``model.bottleneck_tap()``, or, for a model
        without one, the indexed layer whose map is smallest.
    batch_size : int, default 8
        Images per forward pass (peak RAM grows with it).
    threads : int, optional
        torch / OpenMP / BLAS threads during the build (default: unchanged).
    progress : bool, default True
        Show a tqdm bar (images/s).
    model_path : path-like, optional
        Checkpoint the model came from, recorded (absolute) in the manifest.
    overwrite : bool, default False
        Replace an existing ``out`` (only once the new store is complete).
    codec : {"fp32", "fp16", "sq8"}, default "fp32"
        How layer vectors are stored (:mod:`compnn_index.index.codecs`); ``sq8`` trains its
        ranges on a sample of the layer's vectors first (a forward pass over a few images spread
        across the dataset). The global descriptors stay fp32.
    pairs : list of (source, target, k) or "source:target[:k]", optional
        Activation-prediction pairs: also store each pair's padded source windows and the
        target tap's activations (see :mod:`compnn_index.index.pairs`).
    screen : int, default 16
        Half floats per vector of each layer's screening sidecar (:mod:`compnn_index.index.screen`:
        32 bytes that let HyperPatch-Match skip candidates without changing its result); 0 writes
        none.
    fitted : BuildFit, optional
        The ``sq8`` ranges and screen bases, already fitted (:func:`fit_build`): a sharded build
        fits them once over the whole dataset and every shard uses them, instead of each shard
        sampling and fitting its own (:mod:`compnn_index.index.fit`). Default: fitted here on a
        sample of ``dataset``.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    IndexStoreError
        ``fitted`` was made for another codec, screen width or layers, ``out`` exists (without ``overwrite``), the store would not fit on disk, a batch would
        not fit in RAM, images differ in size, or features are not finite.
    ModelError
        Unknown layer or global layer.

    Notes
    -----
    On disk: ``manifest.json`` (see :mod:`compnn_index.index.manifest`), ``global.faiss``,
    ``layers/<layer>.faiss``, and ``arrays/{inputs,targets,outputs}.npy``: inputs float32
    ``(N, 3, H, W)``; targets float32 ``(N, 3, H, W)`` or int64 ``(N, H, W)``; outputs the
    network's own outputs on the training images, float32 ``(N, C, H, W)`` for ``translate``
    and int64 argmax labels ``(N, H, W)`` for ``segment``.
    """
    out = Path(out)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise IndexStoreError(f"Expected batch_size to be a positive integer, but batch_size = {batch_size!r}")
    threads = check_threads(threads, error=IndexStoreError)
    codec = check_codec(codec)
    screen = check_screen_width(screen)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise IndexStoreError(
            f"index store {os.fspath(out)!r} already exists; pass overwrite=True (--overwrite on the command line) to replace it"
        )
    dataset = as_paired_dataset(dataset)  # a torch Dataset of (input, target) pairs is fine too
    n = len(dataset)
    if n == 0:
        raise IndexStoreError("the dataset is empty: expected at least one image to index")
    image_size = tuple(int(s) for s in dataset.image_size)
    started = time.perf_counter()
    with thread_limit(threads):
        layer_specs = _resolve_specs(model, layers, specs, image_size)
        extractor = FeatureExtractor(
            model, layer_specs, global_tap=_global_tap(model, global_layer, layer_specs, image_size))
        first = dataset[0]
        shapes, gdim, output_shape = _probe(extractor, first)
        arrays = _array_layouts(dataset, first, output_shape)
        geoms, extra = {}, None
        if pairs:
            all_specs = dict(specs) if specs is not None else default_layer_specs(model, image_size)
            geoms, pair_arrays, extra = plan_pairs(model, parse_pairs(pairs), all_specs,
                                                   np.asarray(first.input, dtype=np.float32), n)
            arrays.update(pair_arrays)
        if fitted is not None:
            fitted = check_fit(fitted, codec=codec, screen=screen, shapes=shapes)
        size = store_size(shapes, gdim, n, arrays, codec, screen)
        out.parent.mkdir(parents=True, exist_ok=True)
        check_disk(size, out.parent)
        per_image_arrays = sum(int(np.prod(s[1:])) * d.itemsize for s, d in arrays.values())
        check_memory(batch_bytes(shapes, gdim, per_image_arrays, int(batch_size)),
                     what=f"one batch of {batch_size} images")

        integrity.clean_stale_builds(out.parent, out.name)  # left by builds that were killed
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
        os.chmod(tmp, 0o777 & ~_current_umask())  # mkdtemp makes it private (0700)
        try:
            integrity.claim_build_dir(tmp)  # a lock naming this process, for clean_stale_builds
            reuse = SamplePass()  # the sampled images' features, written without a second pass
            if fitted is None:  # a sharded build fits once in its driver and hands it to every shard
                fitted = fit_sample(dataset, extractor, shapes, batch_size=int(batch_size), codec=codec,
                                    screen=screen, keep=reuse)
            manifest = _write_store(
                tmp, dataset, extractor, shapes, gdim, arrays,
                batch_size=int(batch_size), progress=progress, codec=codec, fit=fitted, extra=extra,
                screen=screen, reuse=reuse,
            )
            manifest.update(
                format_version=FORMAT_VERSION,
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                build_seconds=round(time.perf_counter() - started, 3),
                model={
                    "arch": getattr(model, "arch", type(model).__name__),
                    "config": dict(getattr(model, "config", {}) or {}),
                    "hash": model_hash(model),
                    "checkpoint": os.fspath(Path(model_path).resolve()) if model_path else None,
                },
                dataset=dict(getattr(dataset, "identity", {}) or {}),
                task=dataset.task,
                num_classes=getattr(dataset, "num_classes", None),
                ignore_index=getattr(dataset, "ignore_index", None),
                class_names=list(getattr(dataset, "class_names", None) or []) or None,
                palette=None if getattr(dataset, "palette", None) is None
                else np.asarray(dataset.palette).astype(int).tolist(),
                image_size=list(image_size),
                versions=library_versions(),
            )
            manifest.setdefault("shards", None)
            manifest["checksums"] = None
            order = ["format_version", "created", "build_seconds", "model", "dataset", "task",
                     "num_classes", "ignore_index", "class_names", "palette", "image_size", "images", "layers",
                     "global", "arrays", "shards", "checksums", "versions"]
            if geoms:  # optional field: stores without it load as before
                manifest["predictions"] = manifest_entries(geoms)
                order.append("predictions")
            if dataset.task == "translate" and len(dataset):  # optional: old stores compute it on open
                manifest["input_labels"] = input_labels_record(manifest["dataset"], dataset[0].input)
                order.append("input_labels")
            manifest = {k: manifest[k] for k in order}
            # one sequential pass over the finished files, before the atomic rename
            manifest["checksums"] = integrity.compute_checksums(tmp)
            write_manifest(tmp, manifest)
            integrity.release_build_dir(tmp)
            _move_into_place(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def fit_build(
    model: torch.nn.Module,
    dataset: Any,
    *,
    layers: Sequence[str | LayerSpec],
    specs: Mapping[str, LayerSpec] | None = None,
    global_layer: str | LayerSpec | None = None,
    batch_size: int = 8,
    threads: int | None = None,
    codec: str = "fp32",
    screen: int = SCREEN_WIDTH,
    **_ignored: Any,
) -> BuildFit:
    """What :func:`build_index` would fit over ``dataset`` (the same sample of whole images, the
    same ``sq8`` ranges and screen bases), without building: a sharded build calls it once in
    its driver and passes the result to every shard (``build_index(..., fitted=)``).

    Takes :func:`build_index`'s keywords (the ones that do not change the fit are ignored).
    """
    threads = check_threads(threads, error=IndexStoreError)
    codec = check_codec(codec)
    screen = check_screen_width(screen)
    dataset = as_paired_dataset(dataset)
    if len(dataset) == 0:
        raise IndexStoreError("the dataset is empty: expected at least one image to index")
    image_size = tuple(int(s) for s in dataset.image_size)
    with thread_limit(threads):
        layer_specs = _resolve_specs(model, layers, specs, image_size)
        extractor = FeatureExtractor(
            model, layer_specs, global_tap=_global_tap(model, global_layer, layer_specs, image_size))
        shapes, _, _ = _probe(extractor, dataset[0])
        return fit_sample(dataset, extractor, shapes, batch_size=int(batch_size), codec=codec, screen=screen)


def _extract(extractor: FeatureExtractor, x: np.ndarray, kept: Sequence[tuple | None]) -> tuple:
    """``extractor(x, return_norms=True)``, taking the rows of ``x`` whose results were ``kept``
    (:class:`~compnn_index.index.fit.SamplePass` items) from there and passing only the others."""
    if all(k is None for k in kept):
        return extractor(x, return_norms=True)
    todo = [j for j, k in enumerate(kept) if k is None]
    fresh = extractor(x[todo], return_norms=True) if todo else None
    rows = {}
    for pos, j in enumerate(todo):
        rows[j] = (fresh[0][pos: pos + 1], {k: v[pos: pos + 1] for k, v in fresh[1].items()},
                   fresh[2][pos: pos + 1], {k: v[pos: pos + 1] for k, v in fresh[3].items()})
    for j, k in enumerate(kept):
        if k is not None:
            rows[j] = k[1:]
    order = [rows[j] for j in range(len(kept))]
    return (np.concatenate([r[0] for r in order]),
            {name: np.concatenate([r[1][name] for r in order]) for name in order[0][1]},
            np.concatenate([r[2] for r in order]),
            {name: np.concatenate([r[3][name] for r in order]) for name in order[0][3]})


def _write_store(
    tmp: Path,
    dataset: Any,
    extractor: FeatureExtractor,
    shapes: Mapping[str, tuple[int, int, int]],
    gdim: int,
    arrays: Mapping[str, tuple[tuple, np.dtype]],
    *,
    batch_size: int,
    progress: bool,
    codec: str = "fp32",
    fit: BuildFit | None = None,
    extra: Any = None,
    screen: int = 0,
    reuse: SamplePass | None = None,
) -> dict[str, Any]:
    """Stream every batch into the layer files, global file and sidecar arrays in ``tmp``.

    ``reuse``: images the fit's sample pass already forward-passed (taken from it, not passed again).

    Returns the manifest's ``images``, ``layers``, ``global`` and ``arrays`` entries.
    """
    n = len(dataset)
    trained = {name: f.trained for name, f in fit.layers.items() if np.asarray(f.trained).size} if fit else {}
    (tmp / LAYER_DIR).mkdir()
    (tmp / ARRAY_DIR).mkdir()
    writers = {name: layer_writer(tmp / _layer_file(name), d, codec, (trained or {}).get(name))
               for name, (_, _, d) in shapes.items()}
    norm_writers = {name: NpyWriter(tmp / _norms_file(name), (n * hp * wp,), np.dtype(np.float32))
                    for name, (hp, wp, _) in shapes.items()}
    screens = {name: ScreenWriter(tmp, *screen_files(name), n * hp * wp, width=screen,
                                  basis=fit.layers[name].basis, energy=fit.layers[name].energy)
               for name, (hp, wp, _) in shapes.items()} if screen else {}
    gwriter = FlatIPWriter(tmp / GLOBAL_FILE, gdim)
    arrays_out = {
        name: NpyWriter(tmp / ARRAY_DIR / f"{name}.npy", shape, dtype)
        for name, (shape, dtype) in arrays.items()
    }
    images: list[dict[str, Any]] = []
    expected_size = tuple(arrays["inputs"][0][1:])
    try:
        bar = tqdm(total=n, unit="img", desc="build index", disable=not progress, dynamic_ncols=True)
        with bar:
            for start in range(0, n, batch_size):
                indices = range(start, min(start + batch_size, n))
                kept = {i: reuse.take(i) for i in indices if reuse is not None and i in reuse}
                samples = [kept[i][0] if i in kept else dataset[i] for i in indices]
                for i, s in enumerate(samples, start):
                    if tuple(np.shape(s.input)) != expected_size:
                        raise IndexStoreError(
                            f"image {i} ({s.name!r}) has shape {tuple(np.shape(s.input))}, but every "
                            f"image must have shape {expected_size} like image 0"
                        )
                    images.append(_image_record(i, s))
                x = np.stack([np.asarray(s.input, dtype=np.float32) for s in samples])
                outputs, patches, gdesc, norms = _extract(extractor, x, [kept.get(i) for i in indices])
                for name, hp in patches.items():
                    flat = hp.reshape(-1, hp.shape[-1])
                    if not np.isfinite(flat).all():
                        raise IndexStoreError(
                            f"layer {name!r}: non-finite hyperpatches in images {start}..{start + len(samples) - 1}"
                        )
                    writers[name].add(flat)
                    norm_writers[name].add(norms[name].reshape(-1))
                    if name in screens:  # of the vectors as the layer holds them
                        screens[name].add(roundtrip(codec, flat, (trained or {}).get(name)))
                gwriter.add(gdesc)
                arrays_out["inputs"].add(x)
                arrays_out["targets"].add(np.stack([np.asarray(s.target) for s in samples]))
                arrays_out["outputs"].add(
                    outputs.argmax(axis=1) if dataset.task == "segment" else outputs
                )
                for name, rows in (extra(x) if extra is not None else {}).items():
                    arrays_out[name].add(rows)
                bar.update(len(samples))
        ntotals = {name: w.close() for name, w in writers.items()}
        gtotal = gwriter.close()
        for a in (*arrays_out.values(), *norm_writers.values()):
            a.close()
        screen_entries = {name: w.close() for name, w in screens.items()}
    finally:
        for w in (*writers.values(), gwriter, *arrays_out.values(), *norm_writers.values(), *screens.values()):
            w.abort()

    layers = {}
    for name, (hp, wp, d) in shapes.items():
        if ntotals[name] != n * hp * wp:
            raise IndexStoreError(
                f"layer {name!r}: wrote {ntotals[name]} vectors, expected {n} × {hp} × {wp}"
            )
        layers[name] = {
            "spec": extractor.specs[name].to_dict(), "grid": [hp, wp], "dim": d,
            "ntotal": ntotals[name], "file": _layer_file(name), "codec": codec,
            "norms": _norms_file(name), "screen": screen_entries.get(name),
        }
    return {
        "images": images,
        "layers": layers,
        "global": {
            "layer": extractor.global_spec.name, "spec": extractor.global_spec.to_dict(),
            "descriptor": "flatten-l2", "dim": gdim, "ntotal": gtotal, "file": GLOBAL_FILE,
        },
        "arrays": {
            name: {"file": f"{ARRAY_DIR}/{name}.npy", "dtype": str(dtype), "shape": list(shape)}
            for name, (shape, dtype) in arrays.items()
        },
    }


def input_labels_record(identity: dict, first_input: np.ndarray) -> dict:
    """The manifest's ``input_labels`` of a translation store: the palette and class names its
    inputs are label maps in (null when they are not) and why
    (:func:`compnn_index.data.pix2pix.input_label_palette`), recorded at build so the store does not
    need its dataset folder to know."""
    found = input_label_palette(identity, first_input)
    return {"palette": None if found.palette is None else found.palette.astype(int).tolist(),
            "class_names": None if found.names is None else list(found.names), "reason": found.reason}
