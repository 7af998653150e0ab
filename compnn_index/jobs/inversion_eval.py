"""``compnn evaluate --inversion``: CompNN input reconstruction vs the learned inversion, per layer.

For every inversion checkpoint (one layer each) and every test image: CompNN's input
reconstruction at that layer (the run's search options, top-k ``inversion_top_k``) and the
inversion network's reconstruction from the image's activation, both scored against the input:
PSNR and SSIM for photo inputs, pixel accuracy and mean per-class pixel accuracy (``mpa``) for
label-map inputs. The picture is one row per layer: input, CompNN IR, learned inversion (first
test image).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import QueryError
from ..metrics import confusion_matrix, mean_pixel_accuracy, pixel_accuracy, psnr, ssim
from ..options import QueryOptions
from .inversion import input_labels, invert, net_palette


class InversionEval:
    """Accumulates the inversion comparison over the test images of one evaluate run."""

    def __init__(self, cnn, checkpoints: Sequence[str | Path], *, options: QueryOptions):
        from ..models import load_inversion

        self.cnn, self.options = cnn, options
        self.nets = [load_inversion(c) for c in checkpoints]
        for c, net in zip(checkpoints, self.nets):
            if net.checkpoint_extra.get("model_hash") != cnn.store.manifest["model"]["hash"]:
                raise QueryError(f"--inversion {c}: trained on another network than this store's")
        self.layers = [net.config["layer"] for net in self.nets]
        missing = [n for n in self.layers if n not in cnn.layers]
        if missing:
            raise QueryError(f"--inversion: CompNN input reconstruction needs layers {missing} in the "
                             f"index store (it has {', '.join(cnn.layers)}); rebuild with --layers")
        self.kind = self.nets[0].checkpoint_extra.get("kind", "photo")
        if any(net.checkpoint_extra.get("kind", "photo") != self.kind for net in self.nets):
            raise QueryError("--inversion: the checkpoints mix photo and label-map inversions; "
                             "give the ones of one kind")
        self.palette = net_palette(self.nets[0]) if self.kind == "labels" else None
        self.scores: dict[tuple[str, str], list[dict]] = defaultdict(list)
        self.cms: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)  # per test image
        self.picture_rows: list[list] = []

    def add(self, feats, image: np.ndarray) -> None:
        from ..pictures import to_rgb

        truth = input_labels(image, self.palette) if self.kind == "labels" else image
        first = not self.picture_rows
        for net, layer in zip(self.nets, self.layers):
            ir = self.cnn.explain(feats, layer=layer, options=self.options, sources=("input",))
            recs = {"compnn_ir": ir.reconstructions["input"], "learned": invert(self.cnn, net, image)}
            if self.kind == "labels":
                recs["compnn_ir"] = input_labels(recs["compnn_ir"], self.palette)
            for method, rec in recs.items():
                if self.kind == "labels":
                    self.cms[(layer, method)].append(confusion_matrix(rec, truth, len(self.palette)))
                else:
                    self.scores[(layer, method)].append({"psnr": psnr(rec, truth), "ssim": ssim(rec, truth)})
            if first:
                self.picture_rows.append([to_rgb(image, None), to_rgb(recs["compnn_ir"], self.palette),
                                          to_rgb(recs["learned"], self.palette)])

    def rows(self) -> list[dict]:
        """One row per layer: each method's figures, their 95% bootstrap intervals over the test
        images (``ci95``) and the paired difference CompNN IR − learned on the same images
        (``difference``: its interval and p-value, :func:`~compnn_index.jobs.stats.paired_difference`)."""
        from .stats import boot_cm, boot_mean, ci95, paired_difference, resample_weights

        out = []
        for net, layer in zip(self.nets, self.layers):
            row = {"layer": layer, "kind": self.kind, "top_k": self.options.top_k,
                   "search": self.options.search,
                   "training": {k: net.checkpoint_extra.get(k) for k in
                                ("epochs", "images", "images_seen", "train_minutes", "losses")}}
            keys = ("pixel_accuracy", "mpa") if self.kind == "labels" else ("psnr", "ssim")
            per = {m: self.cms[(layer, m)] if self.kind == "labels" else self.scores[(layer, m)]
                   for m in ("compnn_ir", "learned")}
            n = len(per["compnn_ir"])
            weights = resample_weights(n) if n else None
            boots = {}
            for method, items in per.items():
                if self.kind == "labels":
                    cm = np.sum(items, axis=0)
                    row[method] = {"pixel_accuracy": pixel_accuracy(cm), "mpa": mean_pixel_accuracy(cm)}
                    boots[method] = {k: boot_cm(np.stack(items), k, len(self.palette), weights) for k in keys}
                else:
                    finite = [m["psnr"] for m in items if np.isfinite(m["psnr"])]
                    row[method] = {"psnr": float(np.mean(finite)) if finite else float("inf"),
                                   "ssim": float(np.mean([m["ssim"] for m in items]))}
                    boots[method] = {k: boot_mean([m[k] for m in items], weights) for k in keys}
                row[method]["ci95"] = {k: ci95(boots[method][k]) for k in keys}
            row["n_images"] = n
            row["difference"] = {k: {"value": row["compnn_ir"][k] - row["learned"][k],
                                     **paired_difference(boots["compnn_ir"][k], boots["learned"][k], n_images=n,
                                                         paper=None)}
                                 for k in keys}
            out.append(row)
        return out

    def markdown(self) -> str:
        keys = ("pixel_accuracy", "mpa") if self.kind == "labels" else ("psnr", "ssim")
        head = "| layer | " + " | ".join(f"CompNN IR {k} | learned {k}" for k in keys) + " |\n"
        head += "|" + "---|" * (1 + 2 * len(keys)) + "\n"
        lines = []
        for r in self.rows():
            cells = [f"{r['compnn_ir'][k]:.4f} | {r['learned'][k]:.4f}" for k in keys]
            lines.append(f"| {r['layer']} | " + " | ".join(cells) + " |")
        return head + "\n".join(lines) + "\n"

    def picture(self):
        from ..pictures import grid

        captions = [[f"{layer}: input", f"{layer}: CompNN IR", f"{layer}: learned inversion"]
                    for layer in self.layers]
        return grid(self.picture_rows, captions)
