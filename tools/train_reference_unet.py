"""Train a generator laid out like the pix2pix reference's (nested skip blocks, reference key
names) and save its state dict as ``latest_net_G.pth`` — the input of ``compnn import-pix2pix``.

For the end-to-end check of route 1 in docs/own_network.md, where the reference code itself is
not at hand. L1 loss only (no GAN), Adam(2e-4, betas 0.5/0.999) as pix2pix, dropout on.

    python tools/train_reference_unet.py --data ../shared/data/facades --direction BtoA \\
        --ngf 32 --epochs 1 --out /work/stores/ownnet/latest_net_G.pth
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pix2pix_reference import ReferenceUnet  # noqa: E402

from compnn_index.data import open_dataset  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--direction", default="BtoA")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--ngf", type=int, default=32)
    p.add_argument("--norm", default="batch", choices=["batch", "instance"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ds = open_dataset(a.data, split="train", direction=a.direction, size=a.size, limit=a.limit)
    depth = {256: 8, 128: 7}[a.size]
    net = ReferenceUnet(3, 3, depth, a.ngf, norm=a.norm, dropout=True)
    for m in net.modules():  # pix2pix init: N(0, 0.02) convs, N(1, 0.02) norm weights
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
        elif isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(m.weight, 1.0, 0.02)
            torch.nn.init.zeros_(m.bias)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999))
    net.train()
    t0 = time.perf_counter()
    for epoch in range(a.epochs):
        order = np.random.default_rng(epoch).permutation(len(ds))
        total = 0.0
        for start in range(0, len(ds), a.batch_size):
            ids = order[start:start + a.batch_size]
            x = torch.from_numpy(np.stack([ds[int(i)].input for i in ids]))
            y = torch.from_numpy(np.stack([ds[int(i)].target for i in ids]))
            loss = F.l1_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(ids)
            if (start // a.batch_size) % 10 == 0:
                print(f"  {start + len(ids)}/{len(ds)} images, L1 {float(loss.detach()):.4f}, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
        print(f"epoch {epoch + 1}: L1 {total / len(ds):.4f} ({time.perf_counter() - t0:.0f} s, {len(ds)} images)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), a.out)  # the reference's keys: model.model.1.model.3.model...
    print(f"wrote {a.out} ({len(net.state_dict())} keys)")


if __name__ == "__main__":
    main()
