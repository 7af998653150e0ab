"""The command line's jobs: train a model, build an index store, answer queries into files.

Each function is what one ``compnn`` sub-command does, callable from Python too.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from ..checks import is_int_text, thread_limit
from ..errors import ModelError
from ..options import QueryOptions


def train(
    *, data: str, split: str = "train", direction: str = "AtoB", size: int | None = None,
    limit: int | None = None, seed: int = 0, task: str, arch: str = "unet", ngf: int = 64,
    depth: int | None = None, epochs: int = 10, batch_size: int = 4, lr: float = 2e-4,
    gan: bool = False, threads: int | None = None, out: str | Path, progress: bool = True,
):
    """Train a network on a dataset and write its checkpoint. Returns the model."""
    from ..data import open_dataset
    from ..models import build_model, save_checkpoint, train_model

    if arch == "segnet" and task != "segment":
        raise ModelError(f"--arch segnet is a segmentation network; expected --task segment, got --task {task}")
    if epochs < 1:
        raise ModelError(f"Expected --epochs >= 1, but --epochs = {epochs}")
    ds = open_dataset(data, split=split, direction=direction, task=task, size=size, limit=limit, seed=seed)
    h, w = ds.image_size
    model = build_model(arch, task=task, in_channels=ds.in_channels, out_channels=ds.out_channels,
                        ngf=ngf, depth=depth, size=min(h, w))
    model.check_input_size(h, w)
    with thread_limit(threads):
        losses = train_model(model, ds, epochs=epochs, batch_size=batch_size, lr=lr, gan=gan,
                             seed=seed, progress=progress)
    save_checkpoint(out, model, dataset=ds.identity, losses=[float(x) for x in losses])
    if progress:
        print(f"wrote {out} ({arch}, {task}, final loss {losses[-1]:.4f})")
    return model


def build(
    *, model: str | Path, data: str, split: str = "train", direction: str | None = None,
    size: int | None = None, limit: int | None = None, seed: int = 0,
    layers: Sequence[str] | None = None, batch_size: int = 8, threads: int | None = None,
    out: str | Path, overwrite: bool = False, progress: bool = True,
    shards: int | None = None, cluster: str | None = None,
) -> Path:
    """Build an index store for ``model`` over a dataset split (``shards`` sub-stores, built on
    the Ray ``cluster`` when given)."""
    from ..api import build_store
    from ..data import open_dataset
    from ..models import load_checkpoint

    net = load_checkpoint(model)
    trained_on = getattr(net, "checkpoint_extra", {}).get("dataset", {}) or {}
    task = net.config.get("task", "translate")
    ds = open_dataset(
        data, split=split, direction=direction or trained_on.get("direction", "AtoB"), task=task,
        size=size or trained_on.get("size"), limit=limit, seed=seed,
    )
    if layers is None:
        layers = ["decoder2"] if "decoder2" in net.layer_taps() else [next(iter(net.layer_taps()))]
    path = build_store(net, ds, layers=list(layers), out=out, batch_size=batch_size,
                       threads=threads, progress=progress, model_path=str(Path(model).resolve()),
                       overwrite=overwrite, shards=shards, cluster=cluster)
    if progress:
        print(f"wrote index store {path}")
    return path


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _unique_name(name: str, used: set[str]) -> str:
    out, n = name, 2
    while out in used:
        out, n = f"{name}_{n}", n + 1
    used.add(out)
    return out


def query(
    *, index: str | Path, images: Sequence[str], out: str | Path, layer: str | None = None,
    options: QueryOptions | None = None, restrict=None, sources: Sequence[str] = ("target", "input"),
    threads: int | None = None, progress: bool = True, cluster: str | None = None,
) -> list[dict]:
    """Answer each query image (file or database id) and write its pictures and JSON."""
    from ..api import CompNN

    with CompNN.load(index, threads=threads, cluster=cluster) as cnn:
        return _query(cnn, images=images, out=out, layer=layer, options=options, restrict=restrict,
                      sources=sources, progress=progress)


def _query(cnn, *, images, out, layer, options, restrict, sources, progress) -> list[dict]:
    options = options or QueryOptions()
    out = Path(out)
    docs = []
    used: set[str] = set()  # two files with one stem must not overwrite each other's results
    for item in images:
        image = int(item) if is_int_text(str(item)) else item
        res = cnn.explain(image, layer=layer, options=options, restrict=restrict, sources=tuple(sources))
        name = _unique_name(
            f"id{image}" if isinstance(image, int) else _SAFE.sub("_", Path(item).stem), used)
        target = out if len(images) == 1 else out / name
        docs.append(cnn.save(res, target, name=name))
        if progress:
            print(f"{item}: {res.layer} {res.search} top-{len(res.shortlist)} in {res.timings['total']:.2f}s "
                  f"(search {res.timings['search']:.2f}s) -> {target}")
    return docs
