"""Training a built-in model on a paired dataset (pix2pix objective or cross-entropy)."""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from compnn_index.checks import check_int, check_number, check_threads, thread_limit
from compnn_index.errors import DataError, ModelError
from compnn_index.models.patchgan import PatchDiscriminator
from compnn_index.models.resume import TrainingState, check_same_options, restore, snapshot, training_options

#: Weight of the L1 term against the GAN term (pix2pix's lambda).
L1_WEIGHT = 100.0


def train_model(
    model: nn.Module,
    dataset: Sequence[Any],
    *,
    epochs: int,
    batch_size: int = 4,
    lr: float = 2e-4,
    gan: bool = False,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
    resume: TrainingState | None = None,
    minutes: float | None = None,
    on_epoch: Callable[[TrainingState], None] | None = None,
) -> list[float]:
    """Train ``model`` in place with Adam (betas 0.5, 0.999), then leave it in eval mode.

    ``translate`` datasets use the L1 loss (plus, with ``gan=True``, pix2pix's conditional
    PatchGAN term with the L1 term weighted by 100); ``segment`` datasets use cross-entropy that
    skips ``dataset.ignore_index``. Shuffling, dropout and the discriminator's initialisation
    come from ``seed`` (the global RNG is restored afterwards), so a run is repeatable.

    Parameters
    ----------
    model : nn.Module
        A network mapping ``(B, C, H, W)`` inputs to ``(B, out_channels, H, W)``; built-in
        models are checked against the dataset's task and image size.
    dataset : sequence of Sample
        ``dataset[i].input`` float32 ``(C, H, W)`` in [-1, 1]; ``dataset[i].target`` float32
        ``(C', H, W)`` (translate) or int64 ``(H, W)`` (segment); attributes ``task`` and
        ``ignore_index``.
    epochs : int
        Passes over the dataset.
    batch_size : int, default 4
        Images per step (the last batch of an epoch may be smaller).
    lr : float, default 2e-4
        Adam learning rate (generator and discriminator).
    gan : bool, default False
        Add the PatchGAN adversarial term (translate only).
    seed : int, default 0
        Seed of shuffling, dropout and discriminator initialisation.
    threads : int, optional
        Thread limit of the training (:func:`compnn_index.checks.thread_limit`, restored
        afterwards); None keeps the limit in force (the caller's, e.g. ``compnn train``'s).
    progress : bool, default True
        Show a tqdm bar with the running loss and the time left (to the last epoch, or to the
        ``minutes`` budget when that comes first).
    resume : TrainingState, optional
        Continue a stopped training (:func:`~compnn_index.models.resume.load_training_state`):
        weights, optimizer moments, epoch count and random streams are restored, so the result
        equals an uninterrupted run of ``epochs`` epochs. Its recorded options must equal this
        call's (architecture, config, batch size, lr, gan, seed, dataset identity).
    minutes : float, optional
        Time budget: stop after the first whole epoch at which the training minutes, summed over
        the resumed runs, reach it (so a budget of 90 trains at least 90 minutes, or ``epochs``).
    on_epoch : callable, optional
        Called with the :class:`~compnn_index.models.resume.TrainingState` after every epoch
        (``compnn train`` writes it atomically, so a stopped run resumes from its last epoch).

    Returns
    -------
    list of float
        Mean reconstruction loss (L1 or cross-entropy, without the GAN term) of each epoch,
        the resumed epochs included.

    Raises
    ------
    ModelError
        For invalid options or a model whose task or size does not fit the dataset.
    DataError
        For an empty dataset or samples of the wrong dtype or shape.
    """
    _check_options(epochs=epochs, batch_size=batch_size, lr=lr, threads=threads, minutes=minutes)
    done = 0 if resume is None else int(resume.epoch)
    if done >= epochs:
        raise ModelError(f"the training state has {done} epochs done already; expected epochs > {done}, "
                         f"but epochs = {epochs}")
    task = getattr(dataset, "task", None)
    if task not in ("translate", "segment"):
        raise DataError(f"Expected dataset.task to be 'translate' or 'segment', but task = {task!r}")
    if gan and task != "translate":
        raise ModelError(f"gan=True needs a translate dataset, but the dataset's task = {task!r}")
    config = getattr(model, "config", None)
    if isinstance(config, dict) and config.get("task") not in (None, task):
        raise ModelError(
            f"model task {config.get('task')!r} does not match the dataset's task {task!r}"
        )
    n = len(dataset)
    if n == 0:
        raise DataError("cannot train on an empty dataset (0 samples)")
    first = dataset[0]
    in_shape, target_shape = _check_sample(first, task, 0, None, None)
    if hasattr(model, "check_input_size"):
        model.check_input_size(in_shape[1], in_shape[2])
    ignore_index = getattr(dataset, "ignore_index", None)
    ignore_index = -100 if ignore_index is None else int(ignore_index)
    target_dtype = np.float32 if task == "translate" else np.int64

    options = training_options(model, dataset, batch_size=batch_size, lr=lr, gan=gan, seed=seed)
    if resume is not None:
        check_same_options(resume.options, options, where="resume")
    losses: list[float] = [] if resume is None else [float(x) for x in resume.losses]
    elapsed: list[float] = [] if resume is None else [float(x) for x in resume.minutes]
    try:
        with thread_limit(threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            disc = opt_d = None
            if gan:
                out_channels = target_shape[0]
                disc = PatchDiscriminator(in_shape[0] + out_channels, ndf=_disc_width(model))
                opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
                disc.train()
            opt_g = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999))
            if resume is not None:
                restore(resume, model=model, optimizer=opt_g, shuffle=gen, disc=disc, disc_optimizer=opt_d)
            model.train()
            steps_per_epoch = (n + batch_size - 1) // batch_size
            bar = tqdm(
                total=epochs * steps_per_epoch, initial=done * steps_per_epoch, disable=not progress,
                unit="batch", desc=f"train {getattr(model, 'arch', type(model).__name__)}",
            )
            t0, before = time.perf_counter(), (elapsed[-1] if elapsed else 0.0)
            with bar:
                for epoch in range(done, epochs):
                    order = torch.randperm(n, generator=gen).tolist()
                    total, count = 0.0, 0
                    for start in range(0, n, batch_size):
                        ids = order[start : start + batch_size]
                        x = np.empty((len(ids), *in_shape), dtype=np.float32)
                        y = np.empty((len(ids), *target_shape), dtype=target_dtype)
                        for j, i in enumerate(ids):
                            sample = first if i == 0 else dataset[i]
                            _check_sample(sample, task, i, in_shape, target_shape)
                            x[j], y[j] = sample.input, sample.target
                        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
                        rec, adv = _step(model, xt, yt, task, ignore_index, disc, opt_g, opt_d)
                        total += rec * len(ids)
                        count += len(ids)
                        postfix = {"epoch": epoch + 1, "loss": f"{total / count:.4f}"}
                        if adv is not None:
                            postfix["gan"] = f"{adv:.3f}"
                        if minutes is not None:  # the budget may end the run before the bar's ETA
                            used = before + (time.perf_counter() - t0) / 60
                            postfix["budget left"] = f"{max(0.0, minutes - used):.1f} min"
                        bar.set_postfix(postfix, refresh=False)
                        bar.update(1)
                    losses.append(total / count)
                    elapsed.append(before + (time.perf_counter() - t0) / 60)
                    if on_epoch is not None:
                        on_epoch(snapshot(epoch=epoch + 1, losses=losses, minutes=elapsed, options=options,
                                          model=model, optimizer=opt_g, shuffle=gen, disc=disc,
                                          disc_optimizer=opt_d))
                    if minutes is not None and elapsed[-1] >= minutes:
                        break
    finally:
        model.eval()
    return losses


def _step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    task: str,
    ignore_index: int,
    disc: nn.Module | None,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer | None,
) -> tuple[float, float | None]:
    """One optimisation step; returns (reconstruction loss, generator GAN loss or None)."""
    out = model(x)
    if out.shape[-2:] != x.shape[-2:]:
        raise ModelError(
            f"model output size {tuple(out.shape[-2:])} differs from input size "
            f"{tuple(x.shape[-2:])}; expected a pixel-level network"
        )
    if task == "segment":
        labels = y[y != ignore_index]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= out.shape[1]):
            raise DataError(
                f"class labels must lie in [0, {out.shape[1] - 1}] (the model's out_channels) or "
                f"equal ignore_index = {ignore_index}, but found labels from {int(labels.min())} "
                f"to {int(labels.max())}"
            )
        rec = F.cross_entropy(out, y, ignore_index=ignore_index)
    else:
        rec = F.l1_loss(out, y)
    adv_value = None
    if disc is None:
        loss_g = rec
    else:
        assert opt_d is not None
        # Discriminator: real pairs -> 1, generated pairs -> 0 (pix2pix's halved objective).
        opt_d.zero_grad(set_to_none=True)
        real = disc(torch.cat([x, y], 1))
        fake = disc(torch.cat([x, out.detach()], 1))
        loss_d = 0.5 * (
            F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        )
        loss_d.backward()
        opt_d.step()
        pred = disc(torch.cat([x, out], 1))
        adv = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred))
        loss_g = adv + L1_WEIGHT * rec
        adv_value = float(adv.detach())
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    return float(rec.detach()), adv_value


def _check_sample(
    sample: Any,
    task: str,
    i: int,
    in_shape: tuple[int, ...] | None,
    target_shape: tuple[int, ...] | None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate one sample against the data contract (and the first sample's shapes)."""
    name = getattr(sample, "name", i)
    inp, tgt = getattr(sample, "input", None), getattr(sample, "target", None)
    if not isinstance(inp, np.ndarray) or inp.dtype != np.float32 or inp.ndim != 3:
        raise DataError(
            f"sample {name!r}: expected input to be a float32 (C, H, W) array, got "
            f"{_describe(inp)}"
        )
    want_dtype, want_ndim = (np.float32, 3) if task == "translate" else (np.int64, 2)
    if not isinstance(tgt, np.ndarray) or tgt.dtype != want_dtype or tgt.ndim != want_ndim:
        layout = "(C, H, W)" if task == "translate" else "(H, W)"
        raise DataError(
            f"sample {name!r}: expected a {np.dtype(want_dtype).name} {layout} target for "
            f"task {task!r}, got {_describe(tgt)}"
        )
    if tgt.shape[-2:] != inp.shape[-2:]:
        raise DataError(
            f"sample {name!r}: target size {tgt.shape[-2:]} differs from input size {inp.shape[-2:]}"
        )
    if in_shape is not None and (inp.shape != in_shape or tgt.shape != target_shape):
        raise DataError(
            f"sample {name!r}: input {inp.shape} / target {tgt.shape} differ from the first "
            f"sample's {in_shape} / {target_shape}; all images must have one size"
        )
    return inp.shape, tgt.shape


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def _disc_width(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    if isinstance(config, dict) and isinstance(config.get("ngf"), int):
        return config["ngf"]
    return 64


def _check_options(*, epochs: int, batch_size: int, lr: float, threads: int | None,
                   minutes: float | None) -> None:
    check_int(epochs, "epochs", low=1, error=ModelError)
    check_int(batch_size, "batch_size", low=1, error=ModelError)
    if check_number(lr, "lr", error=ModelError) <= 0:
        raise ModelError(f"Expected lr > 0, but lr = {lr!r}")
    if minutes is not None and check_number(minutes, "minutes", error=ModelError) <= 0:
        raise ModelError(f"Expected minutes > 0, but minutes = {minutes!r}")
    check_threads(threads, error=ModelError)
