"""``compnn demo``: the whole job on synthetic facades, no downloads, one HTML report.

Generates data, trains a labels→photo and a photo→labels U-Net, builds their index stores,
explains held-out images, runs property control (the database restricted to one wall material),
the evaluate tables and a small exact-vs-approximate comparison, and writes ``<out>/report.html``
from the jinja2 template ``templates/report.html.j2``.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import QueryError

MATERIAL_KEY = "material"
#: The demo's defaults (the CLI shows these). Sized so that ``make demo`` stays under 90 s on a
#: quiet 2-core machine and its two stores under 200 MB: two ngf-16 U-Nets, 12 epochs each on
#: 96 synthetic 96×96 facades.
DEMO_DEFAULTS = {"size": 96, "train_images": 96, "test_images": 6, "epochs": 12}
#: Layers indexed per model. labels→photo (the store ``compnn serve`` shows in the README) gets
#: decoder3 and decoder4 (strides 4 and 8) for the viewer's layer switch; photo→labels decoder3
#: only. decoder2 (stride 2) would quadruple a store.
DEMO_LAYERS = {"labels2photo": ("decoder3", "decoder4"), "photo2labels": ("decoder3",)}
#: Pictures in the report are drawn at this many screen pixels per image pixel (128 → 256 px).
SCALE = 2


def _env():
    import jinja2

    from .labels import header, value

    env = jinja2.Environment(loader=jinja2.PackageLoader("compnn_index.jobs", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["header"] = header
    env.filters["cell"] = lambda v, key: value(key, v)
    env.filters["pct"] = lambda v: "" if v is None else f"{100 * v:.1f}"
    return env


class _Pictures:
    """Saves the report's pictures under ``img/`` and describes them for the template."""

    def __init__(self, img_dir: Path) -> None:
        self.dir = img_dir
        self.dir.mkdir(parents=True, exist_ok=True)

    def save(self, img, name: str, caption: str, *, scale: int = SCALE, legend: bool = False) -> dict:
        from PIL import Image

        pic = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))
        pic.save(self.dir / name)
        entries = getattr(img, "legend", None) or []
        return {"src": f"img/{name}", "caption": caption, "width": pic.width * scale,
                "height": pic.height * scale, "legend": [e.label for e in entries] if legend else []}


def _explain_section(cnn, ds, title: str, pics: _Pictures, prefix: str, *, queries: int,
                     top_k: int, property_control: bool) -> dict:
    """Per held-out query: input, CNN output, CompNN reconstructions, global NN, map, control."""
    from ..pictures import beside, label_picture, to_rgb

    ctx = cnn.context()
    seg = cnn.task == "segment"

    def out_pic(arr, name, caption):  # label maps with their class legend beside them
        if seg:
            return pics.save(label_picture(np.asarray(arr), ctx.palette, ctx.class_names,
                                           num_classes=cnn.num_classes, scale=SCALE), name, caption, scale=1)
        return pics.save(to_rgb(np.asarray(arr), None), name, caption)

    def in_pic(arr, name, caption):
        rgb = to_rgb(np.asarray(arr), None)
        if ctx.input_legend:  # the input is a label map (labels → photo): its class legend
            from PIL import Image

            big = Image.fromarray(rgb).resize((rgb.shape[1] * SCALE, rgb.shape[0] * SCALE), Image.NEAREST)
            return pics.save(beside(big, ctx.input_legend), name, caption, scale=1)
        return pics.save(rgb, name, caption)

    materials = sorted({m.get(MATERIAL_KEY) for m in cnn.store.image_meta if m.get(MATERIAL_KEY)})
    items = []
    for q in range(min(queries, len(ds))):
        s = ds[q]
        res = cnn.explain(s.input, top_k=top_k, sources=("target", "input"))
        g = cnn.global_nn(s.input, by="bottleneck")
        tag = f"{prefix}_q{q}"
        figs = [
            in_pic(s.input, f"{tag}_input.png", "query input (held out)"),
            out_pic(res.output, f"{tag}_cnn.png", "network output"),
            out_pic(res.reconstructions["target"], f"{tag}_compnn.png",
                    f"CompNN: training outputs pasted (top-{top_k} images)"),
            pics.save(to_rgb(res.reconstructions["input"], None), f"{tag}_compnn_input.png",
                      "CompNN: training inputs pasted"),
            out_pic(np.asarray(cnn.array("targets")[g.image]), f"{tag}_global.png",
                    f"global NN (bottleneck): training image #{g.image}"),
        ]
        cmap = res.correspondence_map()
        item = {
            "name": ds.names[q], "material": str(ds.meta(q).get(MATERIAL_KEY, "")), "layer": res.layer,
            "search_seconds": res.timings["search"], "figures": figs,
            "map": pics.save(cmap, f"{tag}_map.png", "correspondence map", scale=1, legend=True),
            "sources": [{"id": e.key, "label": e.label, "share": e.share} for e in cmap.legend
                        if e.kind == "source"],
            "control": [],
        }
        if property_control and materials:
            for mat in materials:
                r = cnn.explain(s.input, top_k=min(top_k, _count(cnn, mat)),
                                restrict={MATERIAL_KEY: mat}, sources=("target",))
                item["control"].append(out_pic(r.reconstructions["target"], f"{tag}_only_{mat}.png",
                                               f"database: only {mat} walls"))
        items.append(item)
    return {"title": title, "queries": items, "task": cnn.task}


def _count(cnn, material: str) -> int:
    return sum(1 for m in cnn.store.image_meta if m.get(MATERIAL_KEY) == material)


def _evaluation(ev: dict, title: str, pics: _Pictures, name: str, examples: Path, cnn) -> dict:
    """The evaluate document as the template's tables: human headers, named methods, per-class IoU."""
    from PIL import Image

    from ..pictures import class_legend

    seg = ev["task"] == "segment"
    columns = (["method", "top_k", "source", "vs", "pixel_accuracy", "mean_iou"] if seg else
               ["method", "top_k", "source", "vs", "pixel_accuracy", "l1", "psnr"])
    rows = ev["rows"]
    per_class = None
    if seg:
        names = ev.get("class_names") or []
        shown = [r for r in rows if r["vs"] == "cnn" or r["method"] == "cnn"]
        present = [c for c in range(len(names)) if any(r["class_iou"][c] is not None for r in shown)]
        per_class = {"classes": [names[c] for c in present],
                     "rows": [{"row": r, "iou": [r["class_iou"][c] for c in present]} for r in shown]}
    from .labels import value

    cells = [[{"text": value(c, r.get(c)), "num": isinstance(r.get(c), float)} for c in columns] for r in rows]
    doc = {"title": title, "images": ev["images"], "layer": ev["layer"], "columns": columns, "cells": cells,
           "per_class": per_class, "examples": None, "legend": None}
    if examples.exists():
        doc["examples"] = pics.save(Image.open(examples), f"{name}_examples.png",
                                    "evaluation examples: input, ground truth, CNN output, CompNN, global NN")
        if seg or cnn.context().input_legend:
            from ..pictures import legend_panel

            entries = class_legend(cnn.context().palette, cnn.context().class_names) if seg else cnn.context().input_legend
            doc["legend"] = pics.save(legend_panel(entries, max_height=140), f"{name}_classes.png", "classes", scale=1)
    return doc


def _comparison(cnn, index_dir: Path, out: Path, pics: _Pictures, *, direction: str, size: int,
                top_k: int, threads: int | None) -> dict:
    """A small exact vs HyperPatch-Match vs FAISS comparison (one held-out query) and its plot."""
    from .compare import compare

    doc = compare(index_dir, data="synthetic", split="test", direction=direction, size=size, limit=1,
                  top_k=[top_k], iterations=(1, 2, 4, 8, 16), init=("staged",), baselines=("hnsw",),
                  threads=threads, out=out, cnn=cnn, progress=False)
    from PIL import Image

    return {"plot": pics.save(Image.open(out / "comparison.png"), "comparison.png",
                              "quality vs throughput", scale=1),
            "exact": doc["exact"], "settings": doc["settings"], "layer": doc["layer"]}


def _store_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_demo(*, out: str | Path = "indexes/demo", size: int = DEMO_DEFAULTS["size"],
             train_images: int = DEMO_DEFAULTS["train_images"], test_images: int = DEMO_DEFAULTS["test_images"],
             epochs: int | None = DEMO_DEFAULTS["epochs"], threads: int | None = None, queries: int = 2,
             top_k: int = 8, ngf: int = 16, lr: float = 1e-3) -> Path:
    """Run the demo end to end and return the report's path."""
    from ..api import CompNN
    from ..data import open_dataset
    from .evaluate import evaluate
    from .workflows import build, train

    if train_images < 4:
        raise QueryError(f"Expected --train-images >= 4, but --train-images = {train_images}")
    if test_images < 1:
        raise QueryError(f"Expected --test-images >= 1, but --test-images = {test_images}")
    top_k = min(top_k, train_images)
    eval_top_k = sorted({k for k in (1, top_k, 4 * top_k) if k <= train_images})
    t0 = time.perf_counter()
    out = Path(out)
    pics = _Pictures(out / "img")
    # ngf 16 at 128x128 with a raised learning rate: recognisable outputs in a few seconds of
    # training per epoch on 2 cores (photo->labels reaches ~0.8 pixel accuracy on held-out images).
    epochs = epochs or DEMO_DEFAULTS["epochs"]
    sections, tables, stages, stores = [], [], [], []
    comparison = None
    jobs = [
        ("labels2photo", "translate", "BtoA", "Labels → photo (output reconstruction, property control)"),
        ("photo2labels", "segment", "AtoB", "Photo → labels (label transfer)"),
    ]
    for name, task, direction, title in jobs:
        print(f"== {title}")
        t = time.perf_counter()
        ckpt = out / f"{name}.pt"
        train(data="synthetic", split="train", direction=direction, size=size, limit=train_images,
              seed=0, task=task, arch="unet", ngf=ngf, epochs=epochs, batch_size=8, lr=lr,
              threads=threads, out=ckpt)
        stages.append((f"{name}: train", time.perf_counter() - t))
        t = time.perf_counter()
        index_dir = out / f"index_{name}"
        build(model=ckpt, data="synthetic", split="train", direction=direction, size=size,
              limit=train_images, layers=list(DEMO_LAYERS[name]), out=index_dir, overwrite=True,
              threads=threads)
        stages.append((f"{name}: build", time.perf_counter() - t))
        stores.append({"name": index_dir.name, "mb": _store_bytes(index_dir) / 1e6,
                       "layers": list(DEMO_LAYERS[name])})
        t = time.perf_counter()
        cnn = CompNN.load(index_dir, threads=threads)
        test = open_dataset("synthetic", split="test", direction=direction, task=task, size=size,
                            limit=test_images)
        sections.append(_explain_section(cnn, test, title, pics, name, queries=queries,
                                         top_k=top_k, property_control=(task == "translate")))
        ev = evaluate(index_dir, data="synthetic", split="test", direction=direction, size=size,
                      limit=test_images, top_k=eval_top_k, out=out / f"eval_{name}",
                      cnn=cnn, progress=False)
        tables.append(_evaluation(ev, title, pics, name, out / f"eval_{name}" / "examples.png", cnn))
        if task == "segment":
            comparison = _comparison(cnn, index_dir, out / f"compare_{name}", pics, direction=direction,
                                     size=size, top_k=top_k, threads=threads)
        stages.append((f"{name}: explain, evaluate" + (", compare" if task == "segment" else ""),
                       time.perf_counter() - t))
    elapsed = time.perf_counter() - t0
    doc = _env().get_template("report.html.j2").render(
        train_images=train_images, size=size, layers=sorted({n for v in DEMO_LAYERS.values() for n in v}),
        elapsed=elapsed, stages=stages,
        stores=stores, sections=sections, tables=tables, comparison=comparison, top_k=top_k,
        epochs=epochs)
    report = out / "report.html"
    tmp = out / "report.html.tmp"
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(report)
    print(f"\nreport: {report.resolve()}  ({elapsed:.0f}s; stores {sum(s['mb'] for s in stores):.0f} MB)")
    return report
