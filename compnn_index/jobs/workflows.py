"""The command line's jobs: train a model, build an index store, answer queries into files.

Each function is what one ``compnn`` sub-command does, callable from Python too.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from ..checks import is_int_text, thread_limit
from ..errors import ModelError
from ..index.screen import WIDTH as SCREEN_WIDTH
from ..options import QueryOptions


def train(
    *, data: str, split: str = "train", direction: str = "AtoB", size: int | tuple[int, int] | None = None,
    limit: int | None = None, seed: int = 0, sample: str = "first", data_args: dict | None = None,
    ignore_index: int | None = None, task: str, arch: str = "unet", ngf: int = 64,
    depth: int | None = None, epochs: int = 10, batch_size: int = 4, lr: float = 2e-4,
    gan: bool = False, threads: int | None = None, out: str | Path, progress: bool = True,
    resume: str | Path | None = None, minutes: float | None = None,
):
    """Train a network on a dataset and write its checkpoint. Returns the model.

    After every epoch three files are (re)written beside ``out``, each atomically: the checkpoint
    itself (``out``, what build and query load), the training state ``m.train.pt`` (weights,
    optimizer moments, epoch, random streams: what ``resume`` continues from, exactly) and the
    loss curve ``m.loss.csv`` / ``m.loss.png``. ``epochs`` is the total, resumed epochs included;
    ``minutes`` stops after the first whole epoch at which the training minutes (summed over the
    resumed runs) reach it — so a run can be stopped, or killed, and resumed at any time.
    """
    from ..data import open_dataset
    from ..models import build_model, save_checkpoint, train_model
    from ..models.resume import load_training_state, save_training_state, training_options, training_state_path

    if arch == "segnet" and task != "segment":
        raise ModelError(f"--arch segnet is a segmentation network; expected --task segment, got --task {task}")
    if epochs < 1:
        raise ModelError(f"Expected --epochs >= 1, but --epochs = {epochs}")
    ds = open_dataset(data, split=split, direction=direction, task=task, size=size, limit=limit,
                      seed=seed, sample=sample, data_args=data_args, ignore_index=ignore_index)
    h, w = ds.image_size
    if depth is None and arch == "unet":  # as deep as *both* sides allow (64×96: 5 levels, not 6)
        from ..models.unet import default_depth

        depth = min(default_depth(h), default_depth(w))
    model = build_model(arch, task=task, in_channels=ds.in_channels, out_channels=ds.out_channels,
                        ngf=ngf, depth=depth, size=min(h, w))
    model.check_input_size(h, w)
    if minutes is not None and not (isinstance(minutes, (int, float)) and minutes > 0):
        raise ModelError(f"Expected --minutes > 0, but --minutes = {minutes}")
    state = None
    if resume is not None:
        state = load_training_state(resume, expect=training_options(model, ds, batch_size=batch_size, lr=lr,
                                                                    gan=gan, seed=seed))
        if state.epoch >= epochs:
            raise ModelError(f"--resume {str(resume)!r}: {state.epoch} epochs are done already; expected "
                             f"--epochs > {state.epoch} (the total), but --epochs = {epochs}")
        if minutes is not None and state.minutes and state.minutes[-1] >= minutes:
            raise ModelError(f"--resume {str(resume)!r}: {state.minutes[-1]:.1f} training minutes are done "
                             f"already; expected --minutes > {state.minutes[-1]:.1f}, but --minutes = {minutes}")
    out = Path(out)
    state_path = training_state_path(out)

    def on_epoch(st) -> None:
        save_training_state(state_path, st)
        save_checkpoint(out, model, dataset=ds.identity, losses=[float(x) for x in st.losses],
                        minutes=[round(float(x), 3) for x in st.minutes], training_state=state_path.name)
        write_loss_curve(out, st.losses, st.minutes)

    with thread_limit(threads):
        losses = train_model(model, ds, epochs=epochs, batch_size=batch_size, lr=lr, gan=gan,
                             seed=seed, progress=progress, resume=state, minutes=minutes, on_epoch=on_epoch)
    if progress:
        stop = "" if len(losses) == epochs else f", stopped at the --minutes {minutes} budget"
        print(f"wrote {out} ({arch}, {task}, {len(losses)}/{epochs} epochs{stop}, final loss {losses[-1]:.4f}); "
              f"resume with --resume {state_path}")
    return model


def loss_curve_paths(out: str | Path) -> tuple[Path, Path]:
    """The loss curve beside a checkpoint: ``m.pt`` -> ``m.loss.csv``, ``m.loss.png``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.loss.csv"), out.with_name(f"{out.stem}.loss.png")


def write_loss_curve(out: str | Path, losses: Sequence[float], minutes: Sequence[float]) -> tuple[Path, Path]:
    """Write the CSV (``epoch,loss,minutes``) and the PNG of a training's loss curve, atomically."""
    import os

    from ..pictures.plots import loss_curve

    csv_path, png_path = loss_curve_paths(out)
    rows = ["epoch,loss,minutes"] + [f"{i + 1},{float(v):.6f},{float(m):.3f}"
                                    for i, (v, m) in enumerate(zip(losses, minutes))]
    tmp = csv_path.with_name(f".{csv_path.name}.tmp")
    tmp.write_text("\n".join(rows) + "\n")
    os.replace(tmp, csv_path)
    tmp = png_path.with_name(f".{png_path.stem}.tmp.png")
    loss_curve(losses, minutes, tmp, title=f"{Path(out).name} training loss")
    os.replace(tmp, png_path)
    return csv_path, png_path


def build(
    *, model: str | Path | None = None, data: str, split: str = "train", direction: str | None = None,
    size: int | tuple[int, int] | None = None, limit: int | None = None, seed: int = 0,
    sample: str = "first", data_args: dict | None = None, ignore_index: int | None = None,
    layers: Sequence[str] | None = None, global_layer: str | None = None, batch_size: int = 8,
    threads: int | None = None, out: str | Path, overwrite: bool = False, progress: bool = True,
    model_factory: str | None = None, factory_args: dict | str | None = None,
    weights: str | Path | None = None, task: str | None = None, codec: str = "fp32",
    pairs: Sequence[str] | None = None, shards: int | None = None, cluster: str | None = None,
    screen: int = SCREEN_WIDTH,
) -> Path:
    """Build an index store for ``model`` over a dataset split (layers stored with ``codec``; ``pairs``:
    activation-prediction tap pairs ``"source:target[:k]"``, see :mod:`compnn_index.index.pairs`;
    ``shards``/``cluster``: a sharded store, its shards built as Ray tasks on ``cluster``).

    ``model`` is a compnn checkpoint (``compnn train`` / ``compnn import-pix2pix``, or a
    ``model.pt`` an earlier factory build wrote). Or the user's own network:
    ``model_factory`` (``package.module:function``), ``factory_args``, ``weights`` and ``task``;
    its checkpoint, recording the factory and its arguments, is written as ``OUT/model.pt``
    and named in the manifest, so later commands load it by themselves. ``layers`` items are
    tap names or ``NAME=MODULE.PATH[:input|output]``; strides and regions are inferred by
    probing.
    """
    from ..data import open_dataset, open_like
    from ..features import LayerSpec
    from ..api import build_store
    from ..models import factory_model, load_checkpoint, save_checkpoint

    if (model is None) == (model_factory is None):
        raise ModelError("give either --model (a compnn checkpoint) or --model-factory "
                         "(package.module:function), not both or neither")
    if model_factory is None and (factory_args is not None or weights is not None):
        raise ModelError("--factory-args and --weights go with --model-factory")
    if model_factory is not None:
        if task is None:
            raise ModelError("--task (translate or segment) is required with --model-factory")
        if not layers:
            raise ModelError("--layers is required with --model-factory: NAME=MODULE.PATH[:input|output],... "
                             "(module paths as in model.named_modules())")
        ds = open_dataset(data, split=split, direction=direction or "AtoB", task=task, size=size,
                          limit=limit, seed=seed, sample=sample, data_args=data_args, ignore_index=ignore_index)
        net = factory_model(model_factory, factory_args, weights=weights, task=task,
                            in_channels=ds.in_channels)
        model_path = Path(out).resolve() / "model.pt"
    else:
        net = load_checkpoint(model)
        trained_on = getattr(net, "checkpoint_extra", {}).get("dataset", {}) or {}
        if task is not None and task != net.config.get("task", "translate"):
            raise ModelError(f"--task {task}: the checkpoint {model} is a "
                             f"{net.config.get('task', 'translate')} network")
        task = net.config.get("task", "translate")
        ds = open_like(data, trained_on, task=task, split=split, direction=direction, size=size, limit=limit,
                       seed=seed, sample=sample, data_args=data_args, ignore_index=ignore_index)
        model_path = Path(model).resolve()
    if layers is None:
        taps = net.layer_taps() if callable(getattr(net, "layer_taps", None)) else {}
        if not taps:
            raise ModelError("--layers is required for this network: NAME=MODULE.PATH[:input|output],...")
        layers = ["decoder2"] if "decoder2" in taps else [next(iter(taps))]
    specs = [LayerSpec.parse(x) if isinstance(x, str) and "=" in x else x for x in layers]
    path = build_store(net, ds, layers=specs, global_layer=global_layer, out=out,
                       batch_size=batch_size, threads=threads, progress=progress,
                       model_path=str(model_path), overwrite=overwrite, codec=codec, pairs=pairs,
                       shards=shards, cluster=cluster, screen=screen)
    if model_factory is not None:
        save_checkpoint(path / "model.pt", net, dataset=ds.identity,
                        weights=None if weights is None else str(Path(weights).resolve()))
    if progress:
        print(f"wrote index store {path}")
    return path


def compress(*, index: str | Path, codec: str, out: str | Path, overwrite: bool = False,
             progress: bool = True, screen: int = SCREEN_WIDTH) -> Path:
    """Re-encode an index store's layers with ``codec`` into a new store (streaming, atomic)."""
    from ..index import compress_store

    path = compress_store(index, out, codec=codec, overwrite=overwrite, progress=progress, screen=screen)
    if progress:
        print(f"wrote index store {path} ({codec})")
    return path


def upgrade(*, index: str | Path, screen: int = SCREEN_WIDTH, progress: bool = True) -> str:
    """Bring a store up to what this version writes: add missing screening sidecars in place
    (they follow from the stored vectors), then check the norms sidecar, which cannot be
    recovered (:func:`~compnn_index.index.manifest.upgrade_store` names the rebuild command)."""
    from ..index.manifest import upgrade_store
    from ..index.screen import check_screen_width
    from ..index.screen_store import upgrade_screens

    lines = upgrade_screens(index, width=check_screen_width(screen), progress=progress) if screen else []
    for line in lines:
        print(line)
    return upgrade_store(index)


def import_pix2pix(*, weights: str | Path, size: int = 256, norm: str | None = None,
                   task: str = "translate", out: str | Path, progress: bool = True):
    """``compnn import-pix2pix``: a pix2pix reference generator as a compnn checkpoint."""
    from ..models import import_pix2pix as load_reference, save_checkpoint
    from ..models.pix2pix_import import GENERATORS

    model = load_reference(weights, size=size, norm=norm, task=task)
    save_checkpoint(out, model, imported_from={"format": "pix2pix", "weights": str(Path(weights).resolve())},
                    dataset={"size": size})
    if progress:
        c = model.config
        name = GENERATORS.get(model.depth, f"{model.depth}-level U-Net")
        print(f"wrote {out} (pix2pix {name}, ngf {c['ngf']}, {model.norm} norm, "
              f"{c['in_channels']}→{c['out_channels']} channels, {task})")
    return model


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
    threads: int | None = None, progress: bool = True, verify: bool = False, fit: str | None = None,
    exclude: Sequence = (), keep_self: bool = False, cluster: str | None = None,
) -> list[dict]:
    """Answer each query image (file or database id) and write its pictures and JSON.

    A database id is left out of its own explanation (leave-one-out) unless ``keep_self``;
    ``exclude`` (ids or names) is left out of every query.

    ``fit`` (``"resize"`` or ``"crop"``) brings image files of another size than the store's
    to its size: bilinear resize, or a centred crop (refused when the file is smaller).
    """
    from ..api import CompNN
    from ..data.query_image import fit_image, load_image

    with CompNN.load(index, threads=threads, verify=verify, cluster=cluster) as cnn:
        return _query(cnn, images=images, out=out, layer=layer, options=options, restrict=restrict,
                      sources=sources, progress=progress, fit=fit, exclude=exclude, keep_self=keep_self,
                      fit_image=fit_image, load_image=load_image)


def _query(cnn, *, images, out, layer, options, restrict, sources, progress, fit, exclude, keep_self,
           fit_image, load_image) -> list[dict]:
    options = options or QueryOptions()
    out = Path(out)
    docs = []
    used: set[str] = set()  # two files with one stem must not overwrite each other's results
    for item in images:
        image = int(item) if is_int_text(str(item)) else item
        if fit is not None and not isinstance(image, int):  # the dataset's own files: its rule
            native = cnn.dataset_image(image)
            image = native if native is not None else fit_image(
                load_image(image, name=str(item)), tuple(cnn.store.image_size), fit, name=str(item))
        own = [image] if isinstance(image, int) and not keep_self else []
        res = cnn.explain(image, layer=layer, options=options, restrict=restrict, sources=tuple(sources),
                          exclude=[*exclude, *own])
        name = _unique_name(
            f"id{image}" if isinstance(image, int) else _SAFE.sub("_", Path(item).stem), used)
        target = out if len(images) == 1 else out / name
        docs.append(cnn.save(res, target, name=name))
        if progress:
            left_out = f" (left out: {', '.join(map(str, res.exclude))})" if len(res.exclude) else ""
            how = res.params.get("exact_method", "")
            if "bounded_pruned" in res.params:  # which exact method ran, and how much it had to score
                how += f", {res.params['bounded_pruned']['scored']:.2%} of pairs scored"
            print(f"{item}: {res.layer} {res.search} top-{len(res.shortlist)} in {res.timings['total']:.2f}s "
                  f"(search {res.timings['search']:.2f}s{'; ' + how if how else ''}) -> {target}{left_out}")
    return docs
