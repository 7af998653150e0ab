"""What every built-in network shares: identity, named layer taps, and the input-size rule."""
from __future__ import annotations

import torch
from torch import nn

from compnn_index.checks import check_choice, check_int
from compnn_index.errors import ModelError

TASKS = ("translate", "segment")


class TapModel(nn.Module):
    """Base class of the built-in encoder-decoder networks.

    Subclasses set :attr:`arch` and :attr:`config` and implement :meth:`layer_taps`,
    :meth:`bottleneck_tap` and :meth:`size_multiple`.

    Attributes
    ----------
    arch : str
        Architecture name understood by :func:`compnn_index.models.build_model`.
    config : dict
        JSON-able keyword arguments; ``build_model(**model.config)`` rebuilds the network
        (with fresh weights).
    """

    arch: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.config: dict = {}

    def layer_taps(self) -> dict[str, tuple[str, str]]:
        """Named points whose activations can be read.

        Returns
        -------
        dict
            ``{tap name: (module path, "input" | "output")}`` in network order.
        """
        raise NotImplementedError

    def bottleneck_tap(self) -> str:
        """Name of the tap used as the default global descriptor."""
        raise NotImplementedError

    def size_multiple(self) -> int:
        """Image height and width must be a multiple of this number."""
        raise NotImplementedError

    def check_input_size(self, height: int, width: int) -> None:
        """Raise :class:`ModelError` unless ``height`` and ``width`` suit the network.

        Parameters
        ----------
        height, width : int
            Image size in pixels.
        """
        m = self.size_multiple()
        if height < m or width < m or height % m or width % m:
            from compnn_index.data.images import suggest_size

            sh, sw = suggest_size(height, width, m)
            raise ModelError(
                f"image size {height}×{width} is not a multiple of {m} required by "
                f"{self._size_requirement()}; resize the images (size option), H×W e.g. "
                f"{sh}×{sw} (--size {sh}x{sw})"
            )

    def _size_requirement(self) -> str:
        """Words naming what sets :meth:`size_multiple` (used in error messages)."""
        return self.arch


def init_weights(module: nn.Module, *, seed: int | None) -> None:
    """pix2pix initialisation: conv weights N(0, 0.02), norm weights N(1, 0.02), biases 0.

    Parameters
    ----------
    module : nn.Module
        Network to initialise in place.
    seed : int or None
        Seed for a private generator (the global RNG is left untouched); ``None`` uses the
        global RNG.
    """
    gen = None
    if seed is not None:
        device = next(module.parameters()).device
        if device.type != "meta":
            gen = torch.Generator(device=device).manual_seed(int(seed))
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.normal_(0.0, 0.02, generator=gen)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.normal_(1.0, 0.02, generator=gen)
                m.bias.zero_()


def check_common_options(
    arch: str, *, task: str, in_channels: int, out_channels: int | None, ngf: int
) -> int:
    """Validate the options every architecture shares; return the resolved ``out_channels``.

    Integers and choices are checked by :mod:`compnn_index.checks` (the messages every surface
    shares).

    Raises
    ------
    ModelError
        For an unknown task or a non-positive channel count / width.
    """
    check_choice(task, "task", TASKS, error=ModelError)
    check_int(in_channels, "in_channels", low=1, error=ModelError)
    check_int(ngf, "ngf", low=1, error=ModelError)
    if out_channels is None:
        if task == "segment":
            raise ModelError(
                f"out_channels (the number of classes) is required for a {arch} with "
                "task='segment'"
            )
        out_channels = 3
    out_channels = check_int(out_channels, "out_channels", low=1, error=ModelError)
    if task == "segment" and out_channels < 2:
        raise ModelError(
            f"Expected out_channels >= 2 (classes) for a {arch} with task={task!r}, "
            f"but out_channels = {out_channels!r}"
        )
    return out_channels
