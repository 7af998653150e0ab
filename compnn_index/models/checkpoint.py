"""Saving and loading built-in models, and a content hash that identifies their weights."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from compnn_index.errors import ModelError
from compnn_index.models.base import TapModel
from compnn_index.models.registry import build_model

_REQUIRED_KEYS = ("arch", "config", "state_dict")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra: object) -> Path:
    """Write ``{"arch", "config", "state_dict", "extra"}`` atomically (temp file + rename).

    Parameters
    ----------
    path : str or PathLike
        Destination file; parent folders are created.
    model : nn.Module
        A built-in model (it must have ``arch`` and ``config``).
    **extra
        JSON-like values (numbers, strings, lists, dicts, tensors) stored under ``"extra"``,
        e.g. training epochs or the dataset identity.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ModelError
        If the model has no ``arch`` / ``config``.
    """
    arch = getattr(model, "arch", None)
    config = getattr(model, "config", None)
    if not isinstance(arch, str) or not isinstance(config, dict):
        raise ModelError(
            f"cannot save {type(model).__name__} to {os.fspath(path)!r}: expected a model built by "
            "build_model (with .arch and .config)"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"arch": arch, "config": dict(config), "state_dict": state, "extra": dict(extra)}
    return atomic_torch_save(payload, path)


def atomic_torch_save(payload: object, path: str | os.PathLike) -> Path:
    """``torch.save(payload)`` into a temp file beside ``path``, then ``os.replace`` it there.

    A reader (or a rerun after a kill) sees the previous file or the new one, never a half-written
    one: training writes its checkpoint every epoch and may be stopped at any moment.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> TapModel:
    """Rebuild a model from :func:`save_checkpoint`'s file, in eval mode on the CPU.

    The saved ``extra`` values are available as ``model.checkpoint_extra``.

    Parameters
    ----------
    path : str or PathLike
        Checkpoint file.

    Returns
    -------
    TapModel
        The model, in eval mode.

    Raises
    ------
    ModelError
        If the file is missing or unreadable, is not a compnn checkpoint, names an unknown
        architecture, or its weights do not fit the architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint file {os.fspath(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise ModelError(
            f"checkpoint file {os.fspath(path)!r} could not be read as a torch checkpoint: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _REQUIRED_KEYS):
        found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelError(
            f"checkpoint file {os.fspath(path)!r} is not a compnn checkpoint: expected keys "
            f"{list(_REQUIRED_KEYS)}, found {found}"
        )
    if not isinstance(ckpt["arch"], str) or not isinstance(ckpt["config"], dict) or \
            not all(isinstance(k, str) for k in ckpt["config"]) or not isinstance(ckpt["state_dict"], dict):
        raise ModelError(
            f"checkpoint file {os.fspath(path)!r} is not a compnn checkpoint: expected a string "
            f"'arch', a dict 'config' and a dict 'state_dict', found {type(ckpt['arch']).__name__}, "
            f"{type(ckpt['config']).__name__} and {type(ckpt['state_dict']).__name__}"
        )
    config = dict(ckpt["config"])
    config.pop("arch", None)
    if ckpt["arch"] == "factory":  # the user's own network, rebuilt by the factory it records
        from compnn_index.models.factory import factory_model

        try:
            model = factory_model(config.pop("factory", None), config.pop("factory_args", None),
                                  **config)
            load_weights(model, ckpt["state_dict"], source=os.fspath(path))
        except ModelError as exc:
            raise ModelError(f"checkpoint file {os.fspath(path)!r}: {exc}") from exc
        model.checkpoint_extra = dict(ckpt.get("extra") or {})
        return model.eval()
    try:
        model = build_model(ckpt["arch"], **config)
        model.load_state_dict(ckpt["state_dict"])
    except (ModelError, TypeError, ValueError, KeyError, RuntimeError, OverflowError) as exc:
        raise ModelError(f"checkpoint file {os.fspath(path)!r}: {exc}") from exc
    model.checkpoint_extra = dict(ckpt.get("extra") or {})
    return model.eval()


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """``model.load_state_dict(state)`` (strict), refusing with the first key that does not fit.

    Raises
    ------
    ModelError
        Naming the first missing or unexpected key, or the first key whose shape differs
        (both shapes).
    """
    ours = model.state_dict()
    for key, want in ours.items():
        if key not in state:
            raise ModelError(f"{source}: key {key!r} (shape {tuple(want.shape)}) is missing"
                             f" ({len(set(ours) - set(state))} missing in all)")
        got = state[key]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ModelError(f"{source}: key {key!r} has shape {shape}, but the model needs "
                             f"{tuple(want.shape)}")
    extra = [k for k in state if k not in ours]
    if extra:
        raise ModelError(f"{source}: unexpected key {extra[0]!r} ({len(extra)} in all); the "
                         "weights are not for this model (check the factory arguments)")
    model.load_state_dict(state)


def strip_module_prefix(state: object, source: str) -> dict[str, torch.Tensor]:
    """A plain ``{key: tensor}`` dict; a ``module.`` prefix on every key (DataParallel) is removed."""
    if not isinstance(state, Mapping):
        raise ModelError(
            f"{source}: expected a state dict (a mapping of keys to tensors), got "
            f"{type(state).__name__}"
        )
    state = dict(state)
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A weights file's state dict: ``torch.load(path, weights_only=True)``, errors naming the file.

    A dict holding the weights under ``"state_dict"`` (a training checkpoint) is unwrapped; a
    ``module.`` prefix on every key is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {os.fspath(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelError(
            f"weights file {os.fspath(path)!r} could not be read with torch.load(weights_only=True): "
            f"{type(exc).__name__}: {first}"
        ) from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    return strip_module_prefix(state, os.fspath(path))


def model_hash(model: nn.Module) -> str:
    """SHA-256 of the model's configuration and weights.

    The state dict is hashed in sorted-key order (name, dtype, shape and raw bytes of every
    tensor), preceded by ``arch`` and ``config`` when the model has them, so the hash is the same
    before and after a save/load round trip and differs for, e.g., a 3-class segmenter and a
    translator with identical weights.

    Parameters
    ----------
    model : nn.Module
        Any module.

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    h = hashlib.sha256()
    identity = {"arch": getattr(model, "arch", None), "config": getattr(model, "config", None)}
    h.update(json.dumps(identity, sort_keys=True, default=str).encode())
    state = model.state_dict()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
