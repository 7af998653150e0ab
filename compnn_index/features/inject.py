"""Forward from a tap onwards: run a network with one tap's activation replaced.

``forward_with(model, images, spec, activation)`` runs the model on ``images`` and, at the tap
``spec`` (a module's input or output), substitutes ``activation`` for what the network computed
there; everything after the tap is computed from the substitute, everything before it (including
the skip connections a U-Net takes from its encoder) from the images. Fed the true activation it
reproduces the network's output exactly.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from .spec import LayerSpec
from .taps import ArrayLike, _as_activation, _as_batch, _resolve


def forward_with(model: nn.Module, images: ArrayLike, spec: LayerSpec, activation: ArrayLike) -> torch.Tensor:
    """The model's output on ``images`` with the tap ``spec`` replaced by ``activation``.

    Parameters
    ----------
    model : nn.Module
    images : (B, C, H, W) network inputs.
    spec : the tap to replace (its module's input or output).
    activation : (B, C', h, w), the shape the tap has for these images.

    Returns
    -------
    Tensor (B, out_channels, H, W), computed under ``no_grad`` in eval mode.
    """
    x = _as_batch(images, model)
    module = _resolve(model, spec)
    value = _as_activation(activation).to(x.device)
    seen = []

    def substitute(actual: torch.Tensor) -> torch.Tensor:
        if seen:
            raise ModelError(f"layer {spec.name!r}: module {spec.module!r} ran more than once")
        seen.append(True)
        if tuple(actual.shape) != tuple(value.shape):
            raise ModelError(f"layer {spec.name!r}: the replacement activation has shape "
                             f"{tuple(value.shape)}, the network computes {tuple(actual.shape)}")
        return value.to(actual.dtype)

    if spec.io == "input":
        handle = module.register_forward_pre_hook(lambda m, args: (substitute(args[0]), *args[1:]))
    else:
        def post(m, args, output):
            if isinstance(output, (tuple, list)):
                return type(output)([substitute(output[0]), *output[1:]])
            return substitute(output)
        handle = module.register_forward_hook(post)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(x)
    finally:
        handle.remove()
        model.train(was_training)
    if not seen:
        raise ModelError(f"layer {spec.name!r} was not reached by the forward pass")
    return out[0] if isinstance(out, (tuple, list)) else out
