"""The user's own code, as ``--model-factory`` / ``--data`` would name it
(``own_network_fixtures:make_net``): a small network with no compnn attributes, one whose tap has
a non-integer stride, and a ``torch.utils.data.Dataset`` over a pix2pix AB folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset


class Stride4Net(nn.Module):
    """Encoder to a stride-4 map (``enc``), a stride-8 middle (``mid``), decoder back to pixels."""

    def __init__(self, width: int = 8, out_channels: int = 3, task: str = "translate") -> None:
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.mid = nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1)
        self.dec = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(2 * width, 2 * width, 3, padding=1),
                                 nn.ReLU())
        self.head = nn.Sequential(nn.Upsample(scale_factor=4), nn.Conv2d(2 * width, out_channels, 3, padding=1))
        self.tanh = task == "translate"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        y = self.head(self.dec(self.mid(e)) + e)
        return torch.tanh(y) if self.tanh else y


def make_net(width: int = 8, out_channels: int = 3, task: str = "translate", seed: int = 0) -> nn.Module:
    """The factory: a seeded :class:`Stride4Net`."""
    torch.manual_seed(seed)
    return Stride4Net(width, out_channels, task)


class OddNet(nn.Module):
    """A 3×3 stride-3 convolution without padding: 32 px → 10 cells (a stride of 3.2)."""

    def __init__(self) -> None:
        super().__init__()
        self.odd = nn.Conv2d(3, 4, 3, stride=3)
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.head(self.odd(x)), size=x.shape[-2:])


def make_odd_net() -> nn.Module:
    return OddNet()


class FolderPairs(Dataset):
    """A pix2pix AB folder read with PIL into tensors: input = left half, target = right half,
    both float (3, H, W) in [-1, 1]; ``names`` are the file names (natural order)."""

    def __init__(self, root: str | Path, split: str = "train") -> None:
        files = sorted((Path(root) / split).glob("*.png"), key=lambda p: int(p.stem))
        self.files = files
        self.names = [f.name for f in files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        ab = np.asarray(Image.open(self.files[i]).convert("RGB"), dtype=np.float32)
        h = ab.shape[0]
        a, b = ab[:, :h], ab[:, h:]
        def to_tensor(x): return torch.from_numpy(x.transpose(2, 0, 1) / 127.5 - 1.0)
        return to_tensor(a), to_tensor(b)


def folder_pairs(root: str, split: str = "train") -> Dataset:
    """``--data own_network_fixtures:folder_pairs --data-args '{"root": ...}'``."""
    return FolderPairs(root, split)
