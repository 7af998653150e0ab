"""``build_model``: one entry point for every built-in architecture."""
from __future__ import annotations

from typing import Callable

from compnn_index.checks import check_choice
from compnn_index.errors import ModelError
from compnn_index.models.base import TapModel, init_weights
from compnn_index.models.segnet import build_segnet
from compnn_index.models.unet import build_unet

_BUILDERS: dict[str, Callable[..., TapModel]] = {"unet": build_unet, "segnet": build_segnet}

#: Architecture names :func:`build_model` accepts.
ARCHITECTURES = tuple(_BUILDERS)


def build_model(
    arch: str,
    *,
    task: str,
    in_channels: int = 3,
    out_channels: int | None = None,
    ngf: int = 64,
    depth: int | None = None,
    size: int = 256,
    norm: str = "batch",
    seed: int | None = 0,
) -> TapModel:
    """Build a built-in network with named layer taps.

    Parameters
    ----------
    arch : {"unet", "segnet"}
        Architecture.
    task : {"translate", "segment"}
        ``translate``: tanh image head; ``segment``: class logits.
    in_channels : int, default 3
        Input image channels.
    out_channels : int, optional
        Output image channels (default 3 for ``translate``) or number of classes (required for
        ``segment``).
    ngf : int, default 64
        Width of the outermost block.
    depth : int, optional
        U-Net levels; default follows ``size`` (8 for 256, 7 for 128). SegNet has 5.
    size : int, default 256
        Image side the network is built for (inputs must be a multiple of
        ``model.size_multiple()``).
    norm : {"batch", "instance"}, default "batch"
        U-Net normalisation (pix2pix's ``--norm``); SegNet has batch norm only.
    seed : int or None, default 0
        Seed of the pix2pix weight initialisation (N(0, 0.02)); ``None`` uses the global RNG.
        Not part of :attr:`config`: a checkpoint's weights replace the initial ones.

    Returns
    -------
    TapModel
        The network in training mode, with ``arch``, ``config`` (``build_model(**config)``
        rebuilds it), ``layer_taps()``, ``bottleneck_tap()``, ``size_multiple()`` and
        ``check_input_size(h, w)``.

    Raises
    ------
    ModelError
        For an unknown architecture or an invalid option.
    """
    builder = _BUILDERS[check_choice(arch, "arch", ARCHITECTURES, error=ModelError)]
    extra = {}
    if arch == "unet":
        extra["norm"] = norm
    elif norm != "batch":
        raise ModelError(f"norm = {norm!r}: only arch 'unet' has a norm option ({arch} uses batch norm)")
    model = builder(
        task=task, in_channels=in_channels, out_channels=out_channels, ngf=ngf, depth=depth,
        size=size, **extra,
    )
    init_weights(model, seed=seed)
    return model
