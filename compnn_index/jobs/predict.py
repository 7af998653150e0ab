"""``compnn predict``: predict a layer's activations by compositional nearest neighbours.

For each query image: :meth:`CompNN.predict_activations` (the stored pair's windows matched, the
matched target blocks pasted), then ``prediction.json`` (scores vs the true activations and the
output agreement of the network fed the predicted activations, CompNN vs global NN) and
``figure3.png`` — the paper's Figure 3 layout: one row each for the CNN's true activations,
CompNN's prediction and global NN's, every column a group of three channels drawn as RGB on the
CNN's colour scale; then the network's output from each.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..checks import is_int_text
from ..options import QueryOptions


def figure3(cnn, result, *, groups: int = 4):
    """The paper's Figure 3 layout for one prediction (PIL image)."""
    from ..activations import channel_groups_rgb
    from ..pictures import grid, to_rgb

    palette = cnn.store.manifest.get("palette")
    rows, captions = [], []
    for name, act in (("CNN", result.true), ("CompNN", result.compnn), ("global NN", result.global_nn)):
        f = result.outputs["cnn"].shape[-1] // act.shape[-1]  # draw every cell at the output's size
        pics = [p.repeat(f, 0).repeat(f, 1) for p in channel_groups_rgb(act, groups, reference=result.true)]
        key = {"CNN": "cnn", "CompNN": "compnn", "global NN": "global"}[name]
        rows.append(pics + [to_rgb(result.outputs[key], palette)])
        captions.append([f"{name}: ch {3 * g}-{3 * g + 2}" for g in range(len(pics))] + [f"{name}: output"])
    return grid(rows, captions, scale=max(1.0, 128 / result.outputs["cnn"].shape[-1]))


def predict(*, index: str | Path, images: Sequence[str], out: str | Path, source: str = "decoder4",
            target: str = "decoder3", k: int | None = None, options: QueryOptions | None = None,
            exclude_self: bool = False, threads: int | None = None, progress: bool = True,
            restrict=None, verify: bool = False, cluster: str | None = None) -> list[dict]:
    """Answer each image (file or database id); write ``<out>/<name>/prediction.json`` and
    ``figure3.png``. ``exclude_self``: a database id is not matched to itself (leave-one-out);
    ``restrict`` limits the database as in ``compnn query``; ``verify`` and ``cluster`` as in
    :meth:`CompNN.load`."""
    from ..api import CompNN

    cnn = CompNN.load(index, threads=threads, verify=verify, cluster=cluster)
    out = Path(out)
    docs = []
    for item in images:
        image = int(item) if is_int_text(str(item)) else item
        exclude = [image] if exclude_self and isinstance(image, int) else []
        res = cnn.predict_activations(image, source_layer=source, target_layer=target, k=k,
                                      options=options, exclude=exclude, restrict=restrict)
        name = f"id{image}" if isinstance(image, int) else Path(str(item)).stem
        target_dir = out / name
        target_dir.mkdir(parents=True, exist_ok=True)
        figure3(cnn, res).save(target_dir / "figure3.png")
        doc = {"name": name, **res.to_json()}
        (target_dir / "prediction.json").write_text(json.dumps(doc, indent=1))
        docs.append(doc)
        if progress:
            s = res.scores
            print(f"{item}: cosine CompNN {s['compnn']['cosine']:.4f} vs global NN "
                  f"{s['global']['cosine']:.4f}; output agreement {res.output_agreement} -> {target_dir}")
    return docs
