"""A SegNet-style encoder-decoder (Badrinarayanan et al. 2017): VGG-like encoder, decoder that
up-samples with the encoder's max-pooling indices, no skip concatenation."""
from __future__ import annotations

import torch
from torch import nn

from compnn_index.checks import is_int
from compnn_index.errors import ModelError
from compnn_index.models.base import TapModel, check_common_options

#: Convolutions per level (VGG16: 2, 2, 3, 3, 3) and width multipliers of ngf.
_CONVS = (2, 2, 3, 3, 3)
_WIDTHS = (1, 2, 4, 8, 8)
LEVELS = len(_CONVS)


def _conv_stack(cin: int, cout: int, n: int) -> nn.Sequential:
    """``n`` × (Conv3x3 → BatchNorm → ReLU); the first maps ``cin`` to ``cout``."""
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [
            nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        ]
    return nn.Sequential(*layers)


class SegNetEncoder(nn.Module):
    """Convolutions, then 2×2 max-pooling; returns ``(pooled, indices)``."""

    def __init__(self, cin: int, cout: int, n: int) -> None:
        super().__init__()
        self.convs = _conv_stack(cin, cout, n)
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pool(self.convs(x))


class SegNetDecoder(nn.Module):
    """Max-unpooling with the matching encoder's indices, then convolutions."""

    def __init__(self, cin: int, cout: int, n: int) -> None:
        super().__init__()
        self.unpool = nn.MaxUnpool2d(2, stride=2)
        layers = list(_conv_stack(cin, cin, n - 1)) if n > 1 else []
        layers += list(_conv_stack(cin, cout, 1))
        self.convs = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self.convs(self.unpool(x, indices))


class SegNet(TapModel):
    """SegNet-style network with modules ``encoder1 … encoder5``, ``decoder5 … decoder1``,
    ``classifier``.

    Parameters
    ----------
    task : {"translate", "segment"}
        ``segment``: class logits; ``translate``: tanh image head.
    in_channels, out_channels : int
        Input channels; output channels or number of classes.
    ngf : int
        Width of the first level (levels use ngf, 2ngf, 4ngf, 8ngf, 8ngf).
    size : int
        Image side the network is meant for (recorded in :attr:`config`).
    """

    arch = "segnet"

    def __init__(
        self, *, task: str, in_channels: int, out_channels: int, ngf: int, size: int
    ) -> None:
        super().__init__()
        self.config = {
            "arch": self.arch,
            "task": task,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "ngf": ngf,
            "depth": LEVELS,
            "size": size,
        }
        widths = [ngf * w for w in _WIDTHS]
        cin = in_channels
        for level, (n, width) in enumerate(zip(_CONVS, widths), start=1):
            self.add_module(f"encoder{level}", SegNetEncoder(cin, width, n))
            cin = width
        for level in range(LEVELS, 0, -1):
            cout = widths[level - 2] if level > 1 else widths[0]
            self.add_module(f"decoder{level}", SegNetDecoder(widths[level - 1], cout, _CONVS[level - 1]))
        self.classifier = nn.Conv2d(widths[0], out_channels, 3, padding=1)
        self.head: nn.Module = nn.Tanh() if task == "translate" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``."""
        indices = []
        h = x
        for level in range(1, LEVELS + 1):
            h, idx = getattr(self, f"encoder{level}")(h)
            indices.append(idx)
        for level in range(LEVELS, 0, -1):
            h = getattr(self, f"decoder{level}")(h, indices[level - 1])
        return self.head(self.classifier(h))

    def layer_taps(self) -> dict[str, tuple[str, str]]:
        """Outputs of ``encoder1 … encoder5`` (pooled), ``decoder5 … decoder1``, ``classifier``.

        Returns
        -------
        dict
            ``{name: (module path, "output")}`` in network order.
        """
        names = [f"encoder{n}" for n in range(1, LEVELS + 1)]
        names += [f"decoder{n}" for n in range(LEVELS, 0, -1)]
        names.append("classifier")
        return {name: (name, "output") for name in names}

    def bottleneck_tap(self) -> str:
        """``encoder5`` (H/32 × W/32, 8·ngf channels)."""
        return f"encoder{LEVELS}"

    def size_multiple(self) -> int:
        """``2 ** 5 = 32``."""
        return 2**LEVELS

    def _size_requirement(self) -> str:
        return f"segnet ({LEVELS} pooling levels)"


def build_segnet(
    *,
    task: str,
    in_channels: int = 3,
    out_channels: int | None = None,
    ngf: int = 64,
    depth: int | None = None,
    size: int = 256,
) -> SegNet:
    """Validate options and build a :class:`SegNet` (weights not yet initialised).

    Raises
    ------
    ModelError
        For a bad task or width, a depth other than 5, or a size that is not a multiple of 32.
    """
    out_channels = check_common_options(
        "segnet", task=task, in_channels=in_channels, out_channels=out_channels, ngf=ngf
    )
    if depth is not None and depth != LEVELS:
        raise ModelError(f"segnet has a fixed depth of {LEVELS}, but depth = {depth!r}")
    multiple = 2**LEVELS
    if not is_int(size) or size < multiple or size % multiple:
        raise ModelError(
            f"Expected size to be a positive multiple of {multiple} for segnet, but size = {size!r}"
        )
    return SegNet(task=task, in_channels=int(in_channels), out_channels=out_channels, ngf=int(ngf),
                  size=int(size))  # ints, not NumPy ints: the config is written as JSON
