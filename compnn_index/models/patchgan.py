"""pix2pix's conditional PatchGAN discriminator (70×70 receptive field with 3 layers)."""
from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """Classifies overlapping patches of ``cat(input, output)`` as real or fake.

    Parameters
    ----------
    in_channels : int
        Channels of the network input plus channels of its output.
    ndf : int, default 64
        Width of the first layer.
    n_layers : int, default 3
        Stride-2 layers after the first; 3 gives pix2pix's 70×70 patches.
    """

    def __init__(self, in_channels: int, *, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        width = ndf
        for n in range(1, n_layers + 1):
            prev, width = width, ndf * min(2**n, 8)
            layers += [
                nn.Conv2d(prev, width, 4, stride=2 if n < n_layers else 1, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Real/fake logits, one per patch: ``(B, 1, h, w)``."""
        return self.net(x)
