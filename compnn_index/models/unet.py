"""The pix2pix U-Net generator with flat, named encoder and decoder blocks.

Same layers as pix2pix's ``UnetGenerator`` (Isola et al. 2017), but written as
``encoder1 … encoder{depth}`` and ``decoder{depth} … decoder1`` instead of recursive skip blocks,
so every layer the CompNN paper talks about has a module path a forward hook can reach.
"""
from __future__ import annotations

import torch
from torch import nn

from compnn_index.checks import check_choice, check_int
from compnn_index.errors import ModelError
from compnn_index.models.base import TapModel, check_common_options

#: Decoders with an index above this get Dropout(0.5) (pix2pix: decoders 7, 6, 5 at depth 8).
_DROPOUT_ABOVE = 4
#: Normalisation layers: pix2pix's ``--norm batch`` (default) and ``--norm instance``.
NORMS = ("batch", "instance")


def _norm_layer(norm: str, channels: int) -> nn.Module:
    """BatchNorm2d, or pix2pix's InstanceNorm2d (no affine weights, no running statistics)."""
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.BatchNorm2d(channels)


def default_depth(size: int) -> int:
    """Number of down-sampling levels for an image side: log2(size) for powers of two.

    For other sizes it is the number of factors of two in ``size`` (the deepest level at which
    the feature map still has an integer side).

    Parameters
    ----------
    size : int
        Image side in pixels.
    """
    depth = 0
    while size % 2 == 0 and size > 1:
        size //= 2
        depth += 1
    return depth


def _channels(level: int, ngf: int) -> int:
    """Encoder ``level``'s output width: ngf, 2ngf, 4ngf, then 8ngf (pix2pix)."""
    return ngf * min(2 ** (level - 1), 8)


class UNet(TapModel):
    """pix2pix U-Net generator (``unet_256`` at depth 8, ``unet_128`` at depth 7).

    Parameters
    ----------
    task : {"translate", "segment"}
        ``translate``: tanh head with ``out_channels`` image channels; ``segment``: raw class
        logits, ``out_channels`` = number of classes.
    in_channels, out_channels : int
        Input image channels; output channels or classes.
    ngf : int
        Width of the outermost encoder block.
    depth : int
        Number of stride-2 encoder blocks; the input side must be a multiple of ``2**depth``.
    size : int
        Image side the network is meant for (recorded in :attr:`config`).
    norm : {"batch", "instance"}
        pix2pix's normalisation. ``"instance"`` is ``InstanceNorm2d`` without affine weights or
        running statistics, and, as in pix2pix, every convolution then has a bias. Recorded in
        :attr:`config` only when it is not ``"batch"``, so a checkpoint without it (every one
        written before the option existed) is a batch-norm U-Net and its hash is unchanged.
    """

    arch = "unet"

    def __init__(
        self, *, task: str, in_channels: int, out_channels: int, ngf: int, depth: int, size: int,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.depth = depth
        self.norm = norm
        bias = norm == "instance"  # pix2pix: use_bias = norm_layer == InstanceNorm2d
        self.config = {
            "arch": self.arch,
            "task": task,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "ngf": ngf,
            "depth": depth,
            "size": size,
        }
        if norm != "batch":
            self.config["norm"] = norm
        ch = [0] + [_channels(level, ngf) for level in range(1, depth + 1)]
        self.encoder1 = nn.Conv2d(in_channels, ch[1], 4, stride=2, padding=1, bias=bias)
        for level in range(2, depth):
            self.add_module(
                f"encoder{level}",
                nn.Sequential(
                    nn.LeakyReLU(0.2),
                    nn.Conv2d(ch[level - 1], ch[level], 4, stride=2, padding=1, bias=bias),
                    _norm_layer(norm, ch[level]),
                ),
            )
        self.add_module(
            f"encoder{depth}",
            nn.Sequential(
                nn.LeakyReLU(0.2),
                nn.Conv2d(ch[depth - 1], ch[depth], 4, stride=2, padding=1, bias=bias),
            ),
        )
        # decoder{depth} sees only the bottleneck; every other decoder sees cat(decoder, skip).
        for level in range(depth, 1, -1):
            cin = ch[level] if level == depth else 2 * ch[level]
            layers: list[nn.Module] = [
                nn.ReLU(),
                nn.ConvTranspose2d(cin, ch[level - 1], 4, stride=2, padding=1, bias=bias),
                _norm_layer(norm, ch[level - 1]),
            ]
            if _DROPOUT_ABOVE < level < depth:
                layers.append(nn.Dropout(0.5))
            self.add_module(f"decoder{level}", nn.Sequential(*layers))
        head: nn.Module = nn.Tanh() if task == "translate" else nn.Identity()
        self.decoder1 = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(2 * ch[1], out_channels, 4, stride=2, padding=1),
            head,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``."""
        skips = []
        h = x
        for level in range(1, self.depth + 1):
            h = getattr(self, f"encoder{level}")(h)
            skips.append(h)
        h = getattr(self, f"decoder{self.depth}")(h)
        for level in range(self.depth - 1, 0, -1):
            # Tap "decoder{level+1}" is this concatenation: Decoder level+1's output, then
            # Encoder level's output.
            h = getattr(self, f"decoder{level}")(torch.cat([h, skips[level - 1]], dim=1))
        return h

    def layer_taps(self) -> dict[str, tuple[str, str]]:
        """``encoderN`` = output of module ``encoderN``; ``decoderN`` (N >= 2) = input of module
        ``decoder{N-1}``, i.e. cat(Decoder N's output, Encoder N-1's output).

        Returns
        -------
        dict
            ``{name: (module path, "input" | "output")}``, encoder1 … encoder{depth}, then
            decoder{depth} … decoder2.
        """
        taps = {f"encoder{n}": (f"encoder{n}", "output") for n in range(1, self.depth + 1)}
        for n in range(self.depth, 1, -1):
            taps[f"decoder{n}"] = (f"decoder{n - 1}", "input")
        return taps

    def bottleneck_tap(self) -> str:
        """The innermost encoder output (1×1 at 256×256, depth 8)."""
        return f"encoder{self.depth}"

    def size_multiple(self) -> int:
        """``2 ** depth``."""
        return 2**self.depth

    def _size_requirement(self) -> str:
        return f"unet depth {self.depth} (depth option)"


def build_unet(
    *,
    task: str,
    in_channels: int = 3,
    out_channels: int | None = None,
    ngf: int = 64,
    depth: int | None = None,
    size: int = 256,
    norm: str = "batch",
) -> UNet:
    """Validate options and build a :class:`UNet` (weights not yet initialised).

    Raises
    ------
    ModelError
        For a bad task, width, depth or size.
    """
    out_channels = check_common_options(
        "unet", task=task, in_channels=in_channels, out_channels=out_channels, ngf=ngf
    )
    size = check_int(size, "size", low=4, error=ModelError)
    norm = check_choice(norm, "norm", NORMS, error=ModelError)
    if depth is None:
        depth = default_depth(size)
        if depth < 2:
            raise ModelError(
                f"size = {size} allows only {depth} stride-2 level(s) for unet; expected a "
                "size divisible by 4 (e.g. a power of two such as 128 or 256)"
            )
    else:
        depth = check_int(depth, "depth", low=2, error=ModelError)
        if size % 2**depth:
            raise ModelError(
                f"Expected size to be a multiple of 2**depth = {2**depth} for unet, but size = "
                f"{size}, depth = {depth} (the largest depth for this size is {default_depth(size)})"
            )
    return UNet(  # ints, not NumPy ints: the config is written as JSON
        task=task, in_channels=int(in_channels), out_channels=out_channels, ngf=int(ngf),
        depth=depth, size=size, norm=norm,
    )
