"""Training that survives being stopped: the training state written every epoch, and read back.

A full-scale training (hours on a shared CPU) must be resumable exactly: the state holds what the
next epoch depends on — weights and batch-norm statistics, the Adam moments and step counts
(generator and, with the PatchGAN term, discriminator), the epoch count and both random streams
(the shuffling generator and torch's global generator, which draws dropout masks) — so a run
stopped after epoch *e* and resumed gives the weights and losses of an uninterrupted run.
The file is written by :func:`save_training_state` atomically (temp file + ``os.replace``): a
kill at any moment leaves the previous epoch's state, never half a file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from compnn_index.errors import ModelError
from compnn_index.models.checkpoint import atomic_torch_save

#: The ``format`` value of a training-state file, and its version.
STATE_FORMAT = "compnn-training-state"
STATE_VERSION = 1

#: Command-line names of the recorded options, for refusals that name the option at fault.
OPTION_FLAGS = {"arch": "--arch", "batch_size": "--batch-size", "lr": "--lr", "gan": "--gan",
                "seed": "--seed", "ngf": "--ngf", "depth": "--depth", "task": "--task",
                "dataset": "--data/--split/--direction/--size/--limit/--sample"}


@dataclass
class TrainingState:
    """Everything the next epoch of :func:`~compnn_index.models.train_model` depends on.

    ``epoch`` epochs are done; ``losses[i]`` and ``minutes[i]`` are epoch *i*'s mean loss and the
    training minutes (summed over every run) when it ended. ``options`` records how the run was
    set up (architecture, model config, batch size, learning rate, GAN, seed, dataset identity),
    so a resume with other options is refused instead of silently mixing two trainings. The
    tensors are the live ones of the running training: save the state during the callback.
    """

    epoch: int
    losses: list[float]
    minutes: list[float]
    options: dict[str, Any]
    model: Mapping[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, torch.Tensor]
    disc: Mapping[str, torch.Tensor] | None = None
    disc_optimizer: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def training_state_path(out: str | os.PathLike) -> Path:
    """Where ``compnn train --out OUT`` keeps its training state: ``m.pt`` -> ``m.train.pt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.train{out.suffix}")


def save_training_state(path: str | os.PathLike, state: TrainingState) -> Path:
    """Write ``state`` to ``path`` atomically (readable by :func:`load_training_state`)."""
    payload = {"format": STATE_FORMAT, "version": STATE_VERSION, "epoch": int(state.epoch),
               "losses": [float(x) for x in state.losses], "minutes": [float(x) for x in state.minutes],
               "options": dict(state.options), "model": dict(state.model), "optimizer": state.optimizer,
               "rng": dict(state.rng), "disc": None if state.disc is None else dict(state.disc),
               "disc_optimizer": state.disc_optimizer, "extra": dict(state.extra)}
    return atomic_torch_save(payload, path)


def load_training_state(path: str | os.PathLike, *, expect: Mapping[str, Any] | None = None) -> TrainingState:
    """Read a training state, refusing a missing, foreign or mismatched file in one line.

    Parameters
    ----------
    path : str or PathLike
        A file written by :func:`save_training_state` (``compnn train`` writes ``OUT.train.pt``
        beside its checkpoint every epoch).
    expect : mapping, optional
        The options of the run that resumes (same keys as ``TrainingState.options``); the first
        that differs from the recorded one is named with both values.

    Raises
    ------
    ModelError
        For a missing or unreadable file, a model checkpoint without training state, or options
        (e.g. another architecture) that differ from the recorded ones.
    """
    where = f"--resume {os.fspath(path)!r}"
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{where}: no such file; expected the training state that compnn train "
                         f"writes beside its checkpoint every epoch ({training_state_path('OUT.pt')})")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelError(f"{where}: could not be read as a training state: {type(exc).__name__}: {first}") from exc
    if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT:
        hint = (f"; it is a model checkpoint: resume from {training_state_path(path).name} beside it"
                if isinstance(raw, dict) and "state_dict" in raw else "")
        raise ModelError(f"{where}: not a compnn training state (expected format {STATE_FORMAT!r}){hint}")
    if raw.get("version") != STATE_VERSION:
        raise ModelError(f"{where}: training-state version {raw.get('version')!r}; this version reads "
                         f"{STATE_VERSION}")
    state = TrainingState(epoch=int(raw["epoch"]), losses=list(raw["losses"]), minutes=list(raw["minutes"]),
                          options=dict(raw["options"]), model=raw["model"], optimizer=raw["optimizer"],
                          rng=dict(raw["rng"]), disc=raw.get("disc"), disc_optimizer=raw.get("disc_optimizer"),
                          extra=dict(raw.get("extra") or {}))
    if expect is not None:
        check_same_options(state.options, expect, where=where)
    return state


def check_same_options(recorded: Mapping[str, Any], given: Mapping[str, Any], *, where: str) -> None:
    """Refuse a resume whose architecture, model config or training options differ from the
    recorded ones, naming the first option at fault and both values."""
    if recorded.get("arch") != given.get("arch"):
        raise ModelError(f"{where}: the checkpoint holds a {recorded.get('arch')!r} network, but this "
                         f"command builds {given.get('arch')!r}; give the --arch it was trained with")
    rc, gc = dict(recorded.get("config") or {}), dict(given.get("config") or {})
    for key in sorted(set(rc) | set(gc)):
        if rc.get(key) != gc.get(key):
            flag = OPTION_FLAGS.get(key, f"model config {key!r}")
            raise ModelError(f"{where}: the checkpoint's {recorded.get('arch')} network has {key} = "
                             f"{rc.get(key)!r}, this command's has {gc.get(key)!r}; give the {flag} "
                             "it was trained with")
    for key in ("batch_size", "lr", "gan", "seed", "dataset"):
        if key in given and recorded.get(key) != given[key]:
            raise ModelError(f"{where}: trained with {OPTION_FLAGS[key]} {recorded.get(key)!r}, but this "
                             f"command gives {given[key]!r}; resume with the options it was trained with")


def restore(state: TrainingState, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            shuffle: torch.Generator, disc: torch.nn.Module | None = None,
            disc_optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load ``state`` into a freshly built training (weights, optimizers, both random streams)."""
    try:
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        if (disc is None) != (state.disc is None):
            raise ModelError("the checkpoint was trained "
                             + ("with" if state.disc is not None else "without") + " --gan")
        if disc is not None and disc_optimizer is not None:
            disc.load_state_dict(state.disc)
            disc_optimizer.load_state_dict(state.disc_optimizer)
        shuffle.set_state(state.rng["shuffle"])
        torch.set_rng_state(state.rng["torch"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"the training state does not fit this network: {first}") from exc


def snapshot(*, epoch: int, losses: list[float], minutes: list[float], options: dict[str, Any],
             model: torch.nn.Module, optimizer: torch.optim.Optimizer, shuffle: torch.Generator,
             disc: torch.nn.Module | None = None,
             disc_optimizer: torch.optim.Optimizer | None = None) -> TrainingState:
    """The training's state now, at the end of an epoch (the live tensors: save it at once)."""
    return TrainingState(
        epoch=epoch, losses=list(losses), minutes=list(minutes), options=dict(options),
        model=model.state_dict(), optimizer=optimizer.state_dict(),
        rng={"shuffle": shuffle.get_state(), "torch": torch.get_rng_state()},
        disc=None if disc is None else disc.state_dict(),
        disc_optimizer=None if disc_optimizer is None else disc_optimizer.state_dict())


def training_options(model: torch.nn.Module, dataset: Any, *, batch_size: int, lr: float, gan: bool,
                     seed: int) -> dict[str, Any]:
    """What a training state records of its run (compared on resume by :func:`check_same_options`)."""
    return {"arch": getattr(model, "arch", type(model).__name__),
            "config": dict(getattr(model, "config", None) or {}), "batch_size": int(batch_size),
            "lr": float(lr), "gan": bool(gan), "seed": int(seed),
            "dataset": dict(getattr(dataset, "identity", None) or {}) or None}
