"""The learned-inversion baseline (Dosovitskiy & Brox, "Inverting Visual Representations with
Convolutional Networks", CVPR 2016): an up-convolutional decoder from a layer's activation back
to the network's input.

Architecture, in the style of their networks for convolutional features: three 3×3
convolutions at the layer's resolution (the first maps the layer's ``C`` channels to ``width``),
then ``log2(stride)`` stride-2 5×5 up-convolutions, each halving the channels (not below
``min_width``), until the input resolution, with a leaky ReLU (0.2) after each; then a 3×3
convolution to the output: RGB through ``tanh`` (photos in [-1, 1], trained with an L2 loss) or
class logits (label maps, cross-entropy).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from compnn_index.errors import ModelError

OUTPUTS = ("image", "labels")


class InversionNet(nn.Module):
    """Up-convolutional inversion network for one layer tap.

    Parameters
    ----------
    in_channels : channels of the layer's activation.
    stride : input pixels per activation cell (a power of two, 1 allowed).
    out_channels : 3 for RGB, the number of classes for label maps.
    output : ``"image"`` (tanh RGB) or ``"labels"`` (logits).
    width : channels of the three 3×3 convolutions (default ``min(in_channels, 256)``).
    min_width : the up-convolutions halve the channels down to this.
    layer : the tap name (recorded in :attr:`config`).
    """

    arch = "inversion"

    def __init__(self, *, in_channels: int, stride: int, out_channels: int, output: str = "image",
                 width: int | None = None, min_width: int = 16, layer: str = "") -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("stride", stride), ("out_channels", out_channels),
                        ("min_width", min_width)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ModelError(f"inversion network: expected {name} to be a positive integer, got {v!r}")
        if stride & (stride - 1):
            raise ModelError(f"inversion network: expected the layer's stride to be a power of two, got {stride}")
        if output not in OUTPUTS:
            raise ModelError(f"inversion network: expected output in {list(OUTPUTS)}, got {output!r}")
        width = min(in_channels, 256) if width is None else int(width)
        self.config = {"in_channels": in_channels, "stride": stride, "out_channels": out_channels,
                       "output": output, "width": width, "min_width": min_width, "layer": layer}
        act = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(3):
            layers += [nn.Conv2d(c, width, 3, padding=1), act()]
            c = width
        s = stride
        while s > 1:
            nxt = max(c // 2, min_width)
            layers += [nn.ConvTranspose2d(c, nxt, 5, stride=2, padding=2, output_padding=1), act()]
            c, s = nxt, s // 2
        layers.append(nn.Conv2d(c, out_channels, 3, padding=1))
        if output == "image":
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, act: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` activations → ``(B, out_channels, h*stride, w*stride)``."""
        return self.net(act)


def save_inversion(path: str | os.PathLike, net: InversionNet, **extra) -> Path:
    """Write ``{"arch": "inversion", "config", "state_dict", "extra"}`` atomically."""
    from compnn_index.models.checkpoint import save_checkpoint

    return save_checkpoint(path, net, **extra)


def load_inversion(path: str | os.PathLike) -> InversionNet:
    """Rebuild an :class:`InversionNet` from :func:`save_inversion`'s file (eval mode, CPU);
    ``net.checkpoint_extra`` holds what was saved with it (layer, store, losses, ...)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"inversion checkpoint {os.fspath(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"inversion checkpoint {os.fspath(path)!r} could not be read: {type(exc).__name__}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("arch") != "inversion":
        raise ModelError(f"{os.fspath(path)!r} is not an inversion checkpoint (written by `compnn invert train`)")
    try:
        net = InversionNet(**ckpt["config"])
        net.load_state_dict(ckpt["state_dict"])
    except (TypeError, RuntimeError, KeyError) as exc:
        raise ModelError(f"inversion checkpoint {os.fspath(path)!r}: {exc}") from exc
    net.checkpoint_extra = dict(ckpt.get("extra") or {})
    return net.eval()
