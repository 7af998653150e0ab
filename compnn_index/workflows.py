"""The command line's jobs: train a model, build an index store, answer queries into files.

Each function is what one ``compnn`` sub-command does, callable from Python too.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import ModelError, QueryError


def _set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(int(threads))


def train(
    *, data: str, split: str = "train", direction: str = "AtoB", size: int | None = None,
    limit: int | None = None, seed: int = 0, task: str, arch: str = "unet", ngf: int = 64,
    depth: int | None = None, epochs: int = 10, batch_size: int = 4, lr: float = 2e-4,
    gan: bool = False, threads: int | None = None, out: str | Path, progress: bool = True,
):
    """Train a network on a dataset and write its checkpoint. Returns the model."""
    from .data import open_dataset
    from .models import build_model, save_checkpoint, train_model

    if arch == "segnet" and task != "segment":
        raise ModelError(f"--arch segnet is a segmentation network; expected --task segment, got --task {task}")
    if epochs < 1:
        raise ModelError(f"Expected --epochs >= 1, but --epochs = {epochs}")
    _set_threads(threads)
    ds = open_dataset(data, split=split, direction=direction, task=task, size=size, limit=limit, seed=seed)
    h, w = ds.image_size
    model = build_model(arch, task=task, in_channels=ds.in_channels, out_channels=ds.out_channels,
                        ngf=ngf, depth=depth, size=min(h, w))
    model.check_input_size(h, w)
    losses = train_model(model, ds, epochs=epochs, batch_size=batch_size, lr=lr, gan=gan,
                         seed=seed, threads=threads, progress=progress)
    save_checkpoint(out, model, dataset=ds.identity, losses=[float(x) for x in losses])
    if progress:
        print(f"wrote {out} ({arch}, {task}, final loss {losses[-1]:.4f})")
    return model


def build(
    *, model: str | Path, data: str, split: str = "train", direction: str | None = None,
    size: int | None = None, limit: int | None = None, seed: int = 0,
    layers: Sequence[str] | None = None, batch_size: int = 8, threads: int | None = None,
    out: str | Path, overwrite: bool = False, progress: bool = True,
) -> Path:
    """Build an index store for ``model`` over a dataset split."""
    from .data import open_dataset
    from .index import build_index
    from .models import load_checkpoint

    _set_threads(threads)
    net = load_checkpoint(model)
    trained_on = getattr(net, "checkpoint_extra", {}).get("dataset", {}) or {}
    task = net.config.get("task", "translate")
    ds = open_dataset(
        data, split=split, direction=direction or trained_on.get("direction", "AtoB"), task=task,
        size=size or trained_on.get("size"), limit=limit, seed=seed,
    )
    if layers is None:
        layers = ["decoder2"] if "decoder2" in net.layer_taps() else [next(iter(net.layer_taps()))]
    path = build_index(net, ds, layers=list(layers), out=out, batch_size=batch_size,
                       threads=threads, progress=progress, model_path=str(Path(model).resolve()),
                       overwrite=overwrite)
    if progress:
        print(f"wrote index store {path}")
    return path


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def to_rgb(arr: np.ndarray, palette: np.ndarray | None) -> np.ndarray:
    """A float (3, H, W) image in [-1, 1] or an int (H, W) label map → uint8 (H, W, 3)."""
    from .pictures import image_to_uint8, label_to_rgb

    if arr.ndim == 2:
        if palette is None:
            raise QueryError("cannot draw a label map: the index has no palette")
        return label_to_rgb(arr, np.asarray(palette, dtype=np.uint8))
    return image_to_uint8(arr)


def save_result(cnn, result, out_dir: Path, *, name: str = "query") -> dict:
    """Write a query's PNGs and ``result.json`` into ``out_dir``; return the JSON written.

    Everything is rendered into a temporary folder first, then moved into ``out_dir`` file by
    file with ``result.json`` last, so a crash mid-way changes nothing and ``result.json`` never
    describes pictures that are not there. Reconstructions from an earlier run with other
    sources are removed.
    """
    from .pictures import correspondence_map

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    palette = cnn.store.manifest.get("palette")
    files: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix=".compnn-query-", dir=out_dir) as tmp_name:
        tmp = Path(tmp_name)

        def put(fname: str, rgb: np.ndarray | Image.Image) -> None:
            img = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
            img.save(tmp / fname)
            files[fname.rsplit(".", 1)[0]] = fname

        put("input.png", to_rgb(result.query_input, None))
        put("output.png", to_rgb(result.output, palette))
        for src, arr in result.reconstructions.items():
            put(f"reconstruction_{src}.png", to_rgb(arr, palette))
        inputs = cnn.array("inputs")
        db = lambda i: to_rgb(np.asarray(inputs[i], dtype=np.float32), None)  # noqa: E731
        cmap = correspondence_map(result.field, stride=result.spec.stride, region=result.spec.region,
                                  out_size=result.query_input.shape[1:], db_images=db,
                                  query_image=to_rgb(result.query_input, None))
        put("correspondence_map.png", cmap)
        doc = {"name": name, **result.to_json(), "files": files}
        (tmp / "result.json").write_text(json.dumps(doc))
        for stale in out_dir.glob("reconstruction_*.png"):
            if stale.name not in files.values():
                stale.unlink()
        for fname in [*files.values(), "result.json"]:
            os.replace(tmp / fname, out_dir / fname)
    return doc


def _unique_name(name: str, used: set[str]) -> str:
    out, n = name, 2
    while out in used:
        out, n = f"{name}_{n}", n + 1
    used.add(out)
    return out


def query(
    *, index: str | Path, images: Sequence[str], out: str | Path, layer: str | None = None,
    search: str = "exact", top_k: int | None = None, restrict=None, sources: Sequence[str] = ("target", "input"),
    iterations: int = 32, samples: int = 8, jumps: int = 4, init: str = "staged", seed: int = 0,
    threads: int | None = None, progress: bool = True,
) -> list[dict]:
    """Answer each query image (file or database id) and write its pictures and JSON."""
    from .api import CompNN

    cnn = CompNN.load(index, threads=threads)
    out = Path(out)
    docs = []
    used: set[str] = set()  # two files with one stem must not overwrite each other's results
    for item in images:
        image = int(item) if str(item).isdigit() else item
        res = cnn.query(image, layer=layer, search=search, top_k=top_k, restrict=restrict,
                        sources=tuple(sources), iterations=iterations, samples=samples, jumps=jumps,
                        seed=seed, init=init)
        name = _unique_name(
            f"id{image}" if isinstance(image, int) else _SAFE.sub("_", Path(item).stem), used)
        target = out if len(images) == 1 else out / name
        docs.append(save_result(cnn, res, target, name=name))
        if progress:
            print(f"{item}: {res.layer} {res.search} top-{len(res.shortlist)} in {res.timings['total']:.2f}s "
                  f"(search {res.timings['search']:.2f}s) -> {target}")
    return docs
