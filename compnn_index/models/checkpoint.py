"""Saving and loading built-in models, and a content hash that identifies their weights."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

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
    try:
        model = build_model(ckpt["arch"], **config)
        model.load_state_dict(ckpt["state_dict"])
    except (ModelError, TypeError, ValueError, KeyError, RuntimeError, OverflowError) as exc:
        raise ModelError(f"checkpoint file {os.fspath(path)!r}: {exc}") from exc
    model.checkpoint_extra = dict(ckpt.get("extra") or {})
    return model.eval()


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
