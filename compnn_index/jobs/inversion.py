"""``compnn invert train | apply``: the learned-inversion baseline (Dosovitskiy & Brox) next to
CompNN's input reconstruction.

Training reads the explained CNN and its training images from an index store (the ``inputs``
array: the training split the store was built on) and computes the layer's activations on the
fly, batch by batch, so the inversion needs no layer store of its own. Inputs are photos (L2
loss, ``tanh`` RGB output) or label maps (cross-entropy over the classes of the store's input
palette: ``classes.txt``'s colours or the Facades palette, recorded in the checkpoint); by
default a store's inputs are label maps when they are drawn in that palette (labels → photo),
photos otherwise.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..checks import check_choice, check_int, thread_limit
from ..errors import ModelError

INPUT_KINDS = ("photo", "labels")


def input_kind(cnn, kind: str | None = None) -> str:
    """``photo`` or ``labels``: what the store's network inputs are. By default ``labels`` when
    the store's inputs are label maps (:meth:`CompNN.input_labels`: a labels → photo network,
    in ``classes.txt``'s colours or Facades'), ``photo`` otherwise; ``labels`` asked of a store
    whose inputs are not label maps is refused, saying why."""
    found = cnn.input_labels()
    if kind is None:
        return "labels" if found.palette is not None else "photo"
    kind = check_choice(kind, "input kind", INPUT_KINDS)
    if kind == "labels" and found.palette is None:
        raise ModelError(f"--kind labels: this store's inputs are not label maps ({found.reason}); "
                         "use --kind photo")
    return kind


def net_palette(net) -> np.ndarray:
    """The label palette a ``labels`` inversion was trained with (its checkpoint records it;
    older checkpoints: the Facades palette, the only one they knew)."""
    from ..data import FACADES_PALETTE

    pal = net.checkpoint_extra.get("palette")
    return FACADES_PALETTE if pal is None else np.asarray(pal, dtype=np.uint8)


def input_labels(image: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """A label-map input (colours, float (3, H, W)) → int64 class indices (nearest ``palette`` colour)."""
    from ..data import labels_from_colors
    from ..data.pix2pix import network_rgb

    return labels_from_colors(network_rgb(image), palette)


def _tap(cnn, layer: str):
    from ..features import LayerSpec

    taps = cnn.model.layer_taps()
    if layer not in taps:
        raise ModelError(f"unknown layer {layer!r}: the network has taps {', '.join(taps)}")
    return LayerSpec(layer, *taps[layer])


def activations(cnn, images: np.ndarray, layer: str) -> torch.Tensor:
    """The layer's activations ``(B, C, h, w)`` for a batch of network inputs."""
    from ..features import capture

    _, acts = capture(cnn.model, np.asarray(images, dtype=np.float32), [_tap(cnn, layer)])
    return acts[layer]


def build_inversion(cnn, layer: str, kind: str, width: int | None = None):
    """A fresh :class:`~compnn_index.models.InversionNet` for ``layer`` of the store's network
    (``labels``: one output per class of the store's input palette)."""
    from ..models import InversionNet

    h = int(cnn.store.image_size[0])
    a = activations(cnn, np.zeros((1, 3, *cnn.store.image_size), np.float32), layer)
    out = len(cnn.input_labels().palette) if kind == "labels" else 3
    return InversionNet(in_channels=int(a.shape[1]), stride=h // int(a.shape[2]), out_channels=out,
                        output="labels" if kind == "labels" else "image", width=width, layer=layer)


def train_inversion(
    store: str | Path, layer: str, *, out: str | Path, epochs: int = 1, limit: int | None = None,
    batch_size: int = 4, lr: float = 1e-3, width: int | None = None, minutes: float | None = None,
    kind: str | None = None, seed: int = 0, threads: int | None = None, progress: bool = True, cnn=None,
) -> dict:
    """Train an inversion network for ``layer`` on the store's training images; write its
    checkpoint after every epoch (and when ``minutes`` run out). Returns the training record."""
    from ..api import CompNN
    from ..models import save_inversion

    cnn = cnn or CompNN.load(store, threads=threads)
    kind = input_kind(cnn, kind)
    epochs = check_int(epochs, "--epochs", low=1)
    batch_size = check_int(batch_size, "--batch-size", low=1)
    inputs = cnn.array("inputs")
    n = len(inputs) if limit is None else min(check_int(limit, "--limit", low=1), len(inputs))
    labels: dict[int, np.ndarray] = {}
    t0, losses, seen, stopped = time.perf_counter(), [], 0, False
    with thread_limit(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_inversion(cnn, layer, kind, width)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        steps = epochs * -(-n // batch_size)
        record = {"layer": layer, "kind": kind, "store": str(Path(cnn.store.path).resolve()),
                  "model_hash": cnn.store.manifest["model"]["hash"], "images": n, "lr": lr,
                  "batch_size": batch_size}
        if kind == "labels":  # the classes it predicts, for apply and evaluate
            palette = cnn.input_labels().palette
            record.update(palette=palette.astype(int).tolist(), class_names=list(cnn.input_labels().names or ()))
        bar = tqdm(total=steps, unit="batch", desc=f"invert {layer}", disable=not progress)
        with bar:
            for epoch in range(epochs):
                net.train()
                total, count = 0.0, 0
                perm = torch.randperm(n, generator=gen).tolist()
                for start in range(0, n, batch_size):
                    ids = sorted(perm[start:start + batch_size])
                    x = np.asarray(inputs[ids], dtype=np.float32)
                    act = activations(cnn, x, layer)
                    pred = net(act)
                    if kind == "labels":
                        for i in ids:
                            if i not in labels:
                                labels[i] = input_labels(inputs[i], palette)
                        loss = F.cross_entropy(pred, torch.from_numpy(np.stack([labels[i] for i in ids])))
                    else:
                        loss = F.mse_loss(pred, torch.from_numpy(x))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(ids)
                    count += len(ids)
                    seen += len(ids)
                    bar.set_postfix({"epoch": epoch + 1, "loss": f"{total / count:.4f}"}, refresh=False)
                    bar.update(1)
                    if minutes is not None and time.perf_counter() - t0 > 60 * minutes:
                        stopped = True
                        break
                losses.append(total / max(count, 1))
                net.eval()
                record.update(epochs=round(epoch + count / n, 3),
                              losses=losses, images_seen=seen,
                              train_minutes=round((time.perf_counter() - t0) / 60, 2), stopped_early=stopped)
                save_inversion(out, net, **record)
                if stopped:
                    break
    if progress:
        print(f"wrote {out} (layer {layer}, {kind}, loss {losses[-1]:.4f}, {record['train_minutes']} min)")
    return record


def invert(cnn, net, image: np.ndarray) -> np.ndarray:
    """The learned inversion of one network input: float (3, H, W) image or int64 (H, W) labels."""
    layer = net.config["layer"]
    with torch.no_grad():
        out = net(activations(cnn, np.asarray(image, np.float32)[None], layer))[0]
    if net.config["output"] == "labels":
        return out.argmax(0).numpy().astype(np.int64)
    return out.numpy().astype(np.float32)


def apply_inversion(checkpoint: str | Path, images: Sequence[str], *, out: str | Path,
                    store: str | Path | None = None, threads: int | None = None,
                    progress: bool = True) -> list[Path]:
    """Reconstruct each image (file or database id) from its layer activation; write PNGs."""
    from PIL import Image

    from ..api import CompNN
    from ..checks import is_int_text
    from ..models import load_inversion
    from ..pictures import to_rgb

    net = load_inversion(checkpoint)
    cnn = CompNN.load(store or net.checkpoint_extra.get("store"), threads=threads)
    if cnn.store.manifest["model"]["hash"] != net.checkpoint_extra.get("model_hash"):
        raise ModelError(f"{checkpoint}: the inversion was trained on another network than the store's")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with thread_limit(threads):
        for item in images:
            img = cnn.resolve_image(int(item) if is_int_text(str(item)) else item)
            rec = invert(cnn, net, img)
            name = f"id{item}" if is_int_text(str(item)) else Path(item).stem
            path = out / f"{name}_inversion_{net.config['layer']}.png"
            Image.fromarray(to_rgb(rec, net_palette(net) if rec.ndim == 2 else None)).save(path)
            written.append(path)
            if progress:
                print(f"{item}: {path}")
    return written
