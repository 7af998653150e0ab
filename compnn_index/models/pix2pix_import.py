"""Importing a generator trained with the pix2pix reference code into the built-in U-Net.

The reference (``junyanz/pytorch-CycleGAN-and-pix2pix``, ``models/networks.py``) builds
``unet_256`` / ``unet_128`` as nested skip blocks, so the keys of its ``latest_net_G.pth`` are
positional paths: ``UnetGenerator.model`` is the outermost block, each block keeps its layers in
an ``nn.Sequential`` called ``model``, and the next block sits inside it. Facts this module
relies on (all from that file):

- level 1 (outermost) ``model = [downconv, block2, uprelu, upconv, tanh]``; levels 2 … depth-1
  ``[downrelu, downconv, downnorm, block, uprelu, upconv, upnorm(, dropout)]``; the innermost
  level ``[downrelu, downconv, uprelu, upconv, upnorm]`` (no down norm). So level L's layers
  live under ``model.model.`` (L = 1), ``model.model.1.model.`` (L = 2), and one more
  ``3.model.`` per level below.
- Every block but the outermost returns ``cat([x, block(x)], 1)``: the skip comes *first*. The
  built-in U-Net concatenates ``cat([decoder output, skip])``, so the input-channel halves of
  every up-convolution that reads a concatenation (levels 1 … depth-1) are swapped here.
  ``ConvTranspose2d`` weights are ``(in, out, kH, kW)``: the halves are along dimension 0.
- ``use_bias = norm_layer == InstanceNorm2d``: with ``--norm instance`` every convolution has a
  bias and the norms have no weights (``affine=False``); the outermost up-convolution always
  has a bias. Old instance-norm checkpoints carry ``running_mean`` / ``running_var`` of
  instance norms, which the reference itself deletes on load; so does this importer.

The mapping is explicit (:func:`pix2pix_key_map`), every shape is checked, and the first key
that does not fit is named with both shapes.
"""
from __future__ import annotations

import os
from typing import Mapping

import torch

from compnn_index.checks import check_choice
from compnn_index.errors import ModelError
from compnn_index.models.base import TASKS, init_weights
from compnn_index.models.checkpoint import read_state_dict, strip_module_prefix
from compnn_index.models.unet import NORMS, UNet, build_unet

_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_RUNNING = ("running_mean", "running_var", "num_batches_tracked")
#: Reference generator names by depth (``--netG``).
GENERATORS = {7: "unet_128", 8: "unet_256"}


def block_prefix(level: int) -> str:
    """Key prefix of the reference's nested block at ``level`` (1 = outermost)."""
    if level < 1:
        raise ModelError(f"Expected a block level >= 1, but level = {level}")
    if level == 1:
        return "model.model."
    return "model.model.1.model." + "3.model." * (level - 2)


def pix2pix_key_map(depth: int, *, norm: str = "batch") -> list[tuple[str, str, bool]]:
    """The reference's state-dict keys mapped to the built-in U-Net's, in network order.

    Parameters
    ----------
    depth : int
        Levels (``unet_256`` = 8, ``unet_128`` = 7).
    norm : {"batch", "instance"}
        The reference's ``--norm``.

    Returns
    -------
    list of (reference key, built-in key, swap)
        ``swap`` is True for up-convolution weights whose input-channel halves must be swapped
        (the reference concatenates the skip first, the built-in U-Net second).
    """
    check_choice(norm, "norm", NORMS, error=ModelError)
    bias = norm == "instance"
    out: list[tuple[str, str, bool]] = []

    def conv(ref: str, ours: str, *, swap: bool = False, has_bias: bool = bias) -> None:
        out.append((ref + "weight", ours + "weight", swap))
        if has_bias:
            out.append((ref + "bias", ours + "bias", False))

    def batchnorm(ref: str, ours: str) -> None:
        if norm == "batch":
            out.extend((ref + k, ours + k, False) for k in _BN_KEYS)

    for level in range(1, depth + 1):
        p = block_prefix(level)
        if level == 1:
            conv(p + "0.", "encoder1.")
        elif level < depth:
            conv(p + "1.", f"encoder{level}.1.")
            batchnorm(p + "2.", f"encoder{level}.2.")
        else:
            conv(p + "1.", f"encoder{level}.1.")
    for level in range(depth, 0, -1):
        p = block_prefix(level)
        if level == 1:
            conv(p + "3.", "decoder1.1.", swap=True, has_bias=True)
        elif level < depth:
            conv(p + "5.", f"decoder{level}.1.", swap=True)
            batchnorm(p + "6.", f"decoder{level}.2.")
        else:
            conv(p + "3.", f"decoder{level}.1.")
            batchnorm(p + "4.", f"decoder{level}.2.")
    return out


def _norm_positions(depth: int) -> list[str]:
    """Key prefixes of every norm layer of the reference generator."""
    out = []
    for level in range(2, depth + 1):
        p = block_prefix(level)
        out += [p + "2.", p + "6."] if level < depth else [p + "4."]
    return out


def swap_halves(weight: torch.Tensor) -> torch.Tensor:
    """``cat([w[C:], w[:C]])`` along dimension 0 (the input channels of a ConvTranspose2d)."""
    c = weight.shape[0] // 2
    return torch.cat([weight[c:], weight[:c]], dim=0)


def reference_depth(state: Mapping[str, torch.Tensor]) -> int:
    """Number of nested levels in a reference state dict (0 if it is not a U-Net generator)."""
    if "model.model.0.weight" not in state:
        return 0
    depth = 1
    while block_prefix(depth + 1) + "1.weight" in state:
        depth += 1
    return depth


def _shape(t: object) -> tuple[int, ...] | str:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def _clean(state: object, source: str) -> dict[str, torch.Tensor]:
    return strip_module_prefix(state, source)


def describe_keys(state: Mapping[str, object], limit: int = 6) -> str:
    keys = list(state)
    shown = ", ".join(keys[:limit]) + (", …" if len(keys) > limit else "")
    return f"{shown} ({len(keys)} keys)"


def convert_pix2pix_state_dict(
    state: Mapping[str, torch.Tensor], model: UNet, *, source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """The reference generator's weights as a state dict of ``model``.

    Parameters
    ----------
    state : mapping of str to Tensor
        The reference's ``latest_net_G.pth`` contents.
    model : UNet
        The built-in U-Net to fill (its depth and norm choose the mapping).
    source : str
        Names the state dict in error messages (the file path).

    Raises
    ------
    ModelError
        Naming the first reference key that is missing, has another shape than the built-in
        U-Net needs (both shapes), or is left over.
    """
    state = _clean(state, source)
    norm = getattr(model, "norm", "batch")
    ours = model.state_dict()
    mapping = pix2pix_key_map(model.depth, norm=norm)
    what = f"a {GENERATORS.get(model.depth, f'{model.depth}-level U-Net')} generator with --norm {norm}"
    out: dict[str, torch.Tensor] = {}
    for ref_key, our_key, swap in mapping:
        want = tuple(ours[our_key].shape)
        if ref_key not in state:
            raise ModelError(
                f"{source}: key {ref_key!r} (shape {want}) is missing; expected {what}, found "
                f"{describe_keys(state)}"
            )
        value = state[ref_key]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != want:
            raise ModelError(
                f"{source}: key {ref_key!r} has shape {_shape(value)}, but {what} needs {want} "
                f"(for {our_key!r})"
            )
        value = value.detach().to("cpu", ours[our_key].dtype)
        out[our_key] = swap_halves(value) if swap else value.clone()
    used = {ref for ref, _, _ in mapping}
    dropped = set()
    if norm == "instance":  # the reference deletes instance norms' running statistics too
        for p in _norm_positions(model.depth):
            dropped |= {p + k for k in _RUNNING}
    extra = [k for k in state if k not in used and k not in dropped]
    if extra:
        raise ModelError(
            f"{source}: unexpected key {extra[0]!r} (shape {_shape(state[extra[0]])}) for {what}"
            + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")
        )
    missing = sorted(set(ours) - set(out))
    if missing:  # a bug in the mapping, not the user's fault
        raise ModelError(f"internal: the pix2pix mapping leaves {missing} of the U-Net unset")
    return out


def import_pix2pix(
    weights: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    size: int = 256,
    norm: str | None = None,
    task: str = "translate",
) -> UNet:
    """Load a pix2pix reference generator (``unet_256`` / ``unet_128``) into a built-in U-Net.

    Parameters
    ----------
    weights : path or mapping
        ``latest_net_G.pth`` (read with ``torch.load(weights_only=True)``), or its state dict.
    size : int, default 256
        Image side the network is used at (a multiple of ``2**depth``).
    norm : {"batch", "instance"}, optional
        The reference's ``--norm``; default: read from the weights (instance-norm generators
        have convolution biases and no norm weights).
    task : {"translate", "segment"}, default "translate"
        ``translate`` keeps the reference's tanh head; ``segment`` reads the output channels
        as class scores (the same argmax: tanh is monotonic).

    Returns
    -------
    UNet
        In eval mode: BatchNorm uses its running statistics, dropout is off — the reference's
        ``test.py --eval``. Its width, channels and depth are read from the weights.

    Raises
    ------
    ModelError
        For a file that is not a reference U-Net generator, a size that does not suit its
        depth, or a key whose shape does not fit (named with both shapes).
    """
    source = os.fspath(weights) if isinstance(weights, (str, os.PathLike)) else "state dict"
    state = read_state_dict(weights) if isinstance(weights, (str, os.PathLike)) else _clean(weights, source)
    check_choice(task, "task", TASKS, error=ModelError)
    depth = reference_depth(state)
    if depth < 2 or "model.model.3.weight" not in state:
        raise ModelError(
            f"{source}: not a pix2pix U-Net generator (expected keys model.model.0.weight, "
            f"model.model.3.weight, model.model.1.model.1.weight, …); found {describe_keys(state)}"
        )
    if norm is None:
        norm = "instance" if "model.model.0.bias" in state else "batch"
    norm = check_choice(norm, "norm", NORMS, error=ModelError)
    first, last = state["model.model.0.weight"], state["model.model.3.weight"]
    if first.ndim != 4 or last.ndim != 4:
        raise ModelError(
            f"{source}: expected 4-D convolution weights at model.model.0.weight and "
            f"model.model.3.weight, got shapes {_shape(first)} and {_shape(last)}"
        )
    ngf, in_channels = int(first.shape[0]), int(first.shape[1])
    out_channels = int(last.shape[1])
    if size % 2**depth:
        name = GENERATORS.get(depth, f"{depth}-level U-Net")
        raise ModelError(
            f"{source} holds a {name} generator ({depth} levels): the image size must be a "
            f"multiple of {2**depth}, but size = {size}"
        )
    model = build_unet(task=task, in_channels=in_channels, out_channels=out_channels, ngf=ngf,
                       depth=depth, size=size, norm=norm)
    init_weights(model, seed=0)
    model.load_state_dict(convert_pix2pix_state_dict(state, model, source=source))
    return model.eval()
