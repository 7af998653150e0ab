"""``compnn demo``: the whole job on synthetic facades, no downloads, one HTML report.

Generates data, trains a labels→photo and a photo→labels U-Net, builds their index stores,
explains held-out images, runs property control (the database restricted to one wall material)
and the evaluate tables, and writes ``<out>/report.html``.
"""
from __future__ import annotations

import html
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import QueryError
from ..pictures import to_rgb
from .workflows import build, train

MATERIAL_KEY = "material"


def _save(img, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(path)
    return path.name


def _fig(src: str, caption: str) -> str:
    return (f'<figure><img src="img/{html.escape(src)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _explain_section(cnn, ds, title: str, img_dir: Path, prefix: str, *, queries: int,
                     top_k: int, property_control: bool) -> str:
    """Per held-out query: input, CNN output, CompNN reconstructions, global NN, map, control."""
    from ..pictures import correspondence_map

    palette = cnn.store.manifest.get("palette")
    inputs = cnn.array("inputs")
    targets = cnn.array("targets")
    db = lambda i: to_rgb(np.asarray(inputs[i], dtype=np.float32), None)  # noqa: E731
    materials = sorted({m.get(MATERIAL_KEY) for m in cnn.store.image_meta if m.get(MATERIAL_KEY)})
    parts = [f"<h2>{html.escape(title)}</h2>"]
    for q in range(min(queries, len(ds))):
        s = ds[q]
        res = cnn.explain(s.input, top_k=top_k, sources=("target", "input"))
        g = cnn.global_nn(s.input, by="bottleneck")
        tag = f"{prefix}_q{q}"
        figs = [
            _fig(_save(to_rgb(s.input, None), img_dir / f"{tag}_input.png"), "query input"),
            _fig(_save(to_rgb(res.output, palette), img_dir / f"{tag}_cnn.png"), "network output"),
            _fig(_save(to_rgb(res.reconstructions["target"], palette), img_dir / f"{tag}_compnn.png"),
                 f"CompNN output reconstruction (top-{top_k})"),
            _fig(_save(to_rgb(res.reconstructions["input"], None), img_dir / f"{tag}_compnn_input.png"),
                 "CompNN input reconstruction"),
            _fig(_save(to_rgb(np.asarray(targets[g.image]), palette), img_dir / f"{tag}_global.png"),
                 f"global NN (bottleneck): train #{g.image}"),
        ]
        cmap = correspondence_map(res.field, stride=res.spec.stride, region=res.spec.region,
                                  out_size=s.input.shape[1:], db_images=db,
                                  query_image=to_rgb(s.input, None))
        parts.append(f"<h3>held-out image {html.escape(ds.names[q])} "
                     f"<small>({html.escape(str(ds.meta(q).get(MATERIAL_KEY, '')))}; "
                     f"layer {res.layer}, exact search {res.timings['search']:.2f}s)</small></h3>")
        parts.append('<div class="row">' + "".join(figs) + "</div>")
        parts.append('<div class="row">' + _fig(_save(cmap, img_dir / f"{tag}_map.png"),
                     "correspondence map: each output pixel coloured by the training image it came "
                     "from; right, those images with the used regions outlined") + "</div>")
        if property_control and materials:
            row = []
            for mat in materials:
                r = cnn.explain(s.input, top_k=min(top_k, _count(cnn, mat)),
                              restrict={MATERIAL_KEY: mat}, sources=("target",))
                row.append(_fig(_save(to_rgb(r.reconstructions["target"], palette),
                                      img_dir / f"{tag}_only_{mat}.png"),
                                f"database: only {mat} walls"))
            parts.append("<p>Property control: the same query against databases restricted to "
                         "one wall material.</p>")
            parts.append('<div class="row">' + "".join(row) + "</div>")
    return "\n".join(parts)


def _count(cnn, material: str) -> int:
    return sum(1 for m in cnn.store.image_meta if m.get(MATERIAL_KEY) == material)


CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
.row{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 18px}
figure{margin:0;text-align:center}
figure img{image-rendering:pixelated;border:1px solid #ccc;max-height:260px}
figcaption{font-size:12px;color:#555;max-width:300px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px}
"""


def _md_to_html(md: str) -> str:
    lines = [ln for ln in md.strip().splitlines() if ln.startswith("|")]
    if len(lines) < 2:
        return ""
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    th = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><tr>{th}</tr>{trs}</table>"


def run_demo(*, out: str | Path = "indexes/demo", size: int = 128, train_images: int = 160,
             test_images: int = 8, epochs: int | None = None, threads: int | None = None,
             queries: int = 3, top_k: int = 8, ngf: int = 16, lr: float = 1e-3) -> Path:
    """Run the demo end to end and return the report's path."""
    from ..api import CompNN
    from ..data import open_dataset
    from .evaluate import evaluate

    if train_images < 4:
        raise QueryError(f"Expected --train-images >= 4, but --train-images = {train_images}")
    if test_images < 1:
        raise QueryError(f"Expected --test-images >= 1, but --test-images = {test_images}")
    top_k = min(top_k, train_images)
    eval_top_k = sorted({k for k in (1, top_k, 4 * top_k) if k <= train_images})
    t0 = time.perf_counter()
    out = Path(out)
    img_dir = out / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    # ngf 16 at 128x128 with a raised learning rate: about 40 s of training per model on 2 cores,
    # enough for recognisable outputs (photo->labels reaches ~0.8 pixel accuracy on held-out images).
    epochs = epochs or 12
    sections, tables = [], []
    jobs = [
        ("labels2photo", "translate", "BtoA", "Labels → photo (output reconstruction, property control)"),
        ("photo2labels", "segment", "AtoB", "Photo → labels (label transfer)"),
    ]
    for name, task, direction, title in jobs:
        print(f"== {title}")
        ckpt = out / f"{name}.pt"
        train(data="synthetic", split="train", direction=direction, size=size, limit=train_images,
              seed=0, task=task, arch="unet", ngf=ngf, epochs=epochs, batch_size=8, lr=lr,
              threads=threads, out=ckpt)
        index_dir = out / f"index_{name}"
        build(model=ckpt, data="synthetic", split="train", direction=direction, size=size,
              limit=train_images, layers=["decoder2", "decoder3"], out=index_dir,
              overwrite=True, threads=threads)
        cnn = CompNN.load(index_dir, threads=threads)
        test = open_dataset("synthetic", split="test", direction=direction, task=task, size=size,
                            limit=test_images)
        sections.append(_explain_section(cnn, test, title, img_dir, name, queries=queries,
                                         top_k=top_k, property_control=(task == "translate")))
        ev = evaluate(index_dir, data="synthetic", split="test", direction=direction, size=size,
                      limit=test_images, top_k=eval_top_k, out=out / f"eval_{name}",
                      cnn=cnn, progress=True)
        ex = out / f"eval_{name}" / "examples.png"
        ex_html = _fig(_save(Image.open(ex), img_dir / f"{name}_examples.png"), "evaluation examples") if ex.exists() else ""
        tables.append(f"<h2>Evaluation: {html.escape(title)}</h2>"
                      f"<p>{ev['images']} held-out images, layer {html.escape(ev['layer'])}.</p>"
                      + _md_to_html(ev["markdown"]) + ex_html)
    elapsed = time.perf_counter() - t0
    doc = ("<!doctype html><html><head><meta charset='utf-8'><title>CompNN demo</title>"
           f"<style>{CSS}</style></head><body><h1>Compositional Nearest Neighbors: demo on synthetic facades</h1>"
           f"<p>{train_images} training images, {size}×{size}; every output pixel below is copied from a "
           f"training image whose hyperpatch (layer decoder2) is most similar to the query's. "
           f"Built in {elapsed:.0f}s.</p>" + "\n".join(sections) + "\n".join(tables) + "</body></html>")
    report = out / "report.html"
    tmp = out / "report.html.tmp"
    tmp.write_text(doc)
    tmp.replace(report)
    print(f"\nreport: {report.resolve()}  ({elapsed:.0f}s)")
    return report
