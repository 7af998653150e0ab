"""A generator laid out like the pix2pix reference's ``UnetGenerator`` (nested skip blocks,
skip concatenated first, the reference's key names), written here from the facts of
``models/networks.py`` so the importer can be tested against it without the reference code.

Also used by ``tools/train_reference_unet.py`` for the end-to-end run.
"""
from __future__ import annotations

import torch
from torch import nn


class SkipBlock(nn.Module):
    """One level: ``model`` = down layers, the inner block, up layers; returns cat(x, model(x))
    except at the outermost level."""

    def __init__(self, outer: int, inner: int, *, input_nc: int | None = None, sub: nn.Module | None = None,
                 outermost: bool = False, innermost: bool = False, norm: str = "batch",
                 dropout: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        bias = norm == "instance"
        input_nc = outer if input_nc is None else input_nc

        def make_norm(c: int) -> nn.Module:
            if norm == "instance":
                return nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
            return nn.BatchNorm2d(c)

        down_conv = nn.Conv2d(input_nc, inner, 4, 2, 1, bias=bias)
        if outermost:
            layers = [down_conv, sub, nn.ReLU(True), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
        elif innermost:
            layers = [nn.LeakyReLU(0.2, True), down_conv, nn.ReLU(True),
                      nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=bias), make_norm(outer)]
        else:
            layers = [nn.LeakyReLU(0.2, True), down_conv, make_norm(inner), sub, nn.ReLU(True),
                      nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=bias), make_norm(outer)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class ReferenceUnet(nn.Module):
    """``UnetGenerator(input_nc, output_nc, num_downs, ngf, norm, use_dropout)``'s layout."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, num_downs: int = 8, ngf: int = 64,
                 norm: str = "batch", dropout: bool = True) -> None:
        super().__init__()
        block = SkipBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = SkipBlock(ngf * 8, ngf * 8, sub=block, norm=norm, dropout=dropout)
        block = SkipBlock(ngf * 4, ngf * 8, sub=block, norm=norm)
        block = SkipBlock(ngf * 2, ngf * 4, sub=block, norm=norm)
        block = SkipBlock(ngf, ngf * 2, sub=block, norm=norm)
        self.model = SkipBlock(output_nc, ngf, input_nc=input_nc, sub=block, outermost=True, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, biases and BatchNorm statistics, so every key matters to the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.05)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.05)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(1 + 0.2 * torch.rand(m.running_var.shape, generator=gen))
    return net
