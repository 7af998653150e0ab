"""``compnn evaluate``: the papers' tables on a dataset split, in one run.

Segmentation models (Table 1 of both papers): pixel accuracy, mean IoU and per-class IoU of the
CNN, of CompNN output reconstruction (per top-k; the original labels and the network's own
"self-supervised" labels as source; exact search and HyperPatch-Match) and of global NN (from
the bottleneck, the network's output, the penultimate layer's whole activation and the searched
layer's aligned hyperpatches), each against the ground truth and against the CNN output.

Translation models (Table 2 of "Patch Correspondences"): input-reconstruction accuracy against
the input label map (``pixel_accuracy`` and ``mpa``, per top-k), and output reconstruction L1 /
PSNR against the CNN output.

Exact search (``exact_method``, default ``auto``: the fastest exact method the store supports)
runs once per top-k, smallest first, each exact field seeding the next (its matches lie in the
larger shortlist, so the bounded method starts from the previous answer). With
``exact_method="faiss"`` it runs once per query over the largest top-k's shortlist, keeping every
position's best match in every shortlisted image
(:func:`~compnn_index.search.exact_search_per_image`), and the smaller top-k fields are derived
from it: the API's top-k shortlist is the first k of a larger one (a stable sort of global
cosine), so one top-64 pass serves top-1/16/32. Row keys and method ids: :mod:`.tables`; the
papers' figures beside them: :mod:`.papers`.

Every image's rows are one per-image record (confusion matrices / metrics); the tables pool the
records and give each figure a bootstrap interval over the test images (``ci95``, :mod:`.stats`)
and each paper claim a paired test. With ``cache`` the records are kept on disk
(:mod:`.image_cache`), so a stopped evaluation continues without recomputing finished images.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..errors import QueryError
from ..metrics import l1, psnr
from ..options import DEFAULTS, EXACT_METHODS, QueryOptions
from .image_cache import ImageCache, fingerprint
from .papers import PaperContext, claims, paper_figures
from .stats import N_BOOT, resample_weights
from .tables import (SegAccumulator, add_deltas, claim_results, delta_intervals, key_text, mean_rows, pooled_rows, render_per_class,
                     render_table)

SOURCE_TAGS = (("target", "original"), ("self", "self_supervised"))


def search_fields(cnn, feats, layer: str, top_ks: Sequence[int], options: QueryOptions, *,
                  hpm: bool = True, info: dict | None = None) -> dict[tuple[str, int], object]:
    """NN fields per (method, top-k): ``compnn`` with ``options.search`` (exact: see the module
    docstring), plus ``compnn_hpm`` when searching exactly. ``info`` receives ``exact_method``
    (which exact method ran) and, for the bounded method, its pruned fractions."""
    from ..search import best_of, exact_search, exact_search_per_image

    out = {}
    info = {} if info is None else info
    all_ids = np.arange(cnn.num_images, dtype=np.int64)
    if options.search == "exact":
        ids, _ = cnn.shortlist(feats.global_descriptor, all_ids, max(top_ks))
        lv = cnn.layer(layer)
        q = feats.hyperpatches[layer]
        if options.exact_method == "faiss":
            sims, idx = exact_search_per_image(q, lv, ids)
            for k in top_ks:
                out[("compnn", k)] = best_of(lv, sims, idx, k)
            info["exact_method"] = "faiss"
        else:
            field = None
            for k in sorted(top_ks):  # each exact field seeds the next: its matches lie in the larger shortlist
                field = exact_search(q, lv, ids[:k], method=options.exact_method, seed=field,
                                     query_norms=(feats.hyperpatch_norms or {}).get(layer), info=info)
                out[("compnn", k)] = field
    methods = [("compnn", options)] if options.search != "exact" else []
    if hpm and options.search == "exact":
        methods.append(("compnn_hpm", options.with_(search="patchmatch")))
    for method, opts in methods:
        for k in top_ks:
            out[(method, k)] = cnn.explain(feats, layer=layer, options=opts, top_k=k, sources=()).field
    return out


def penultimate_tap(model) -> str:
    """The tap feeding the network's last module (U-Net: decoder2; SegNet: decoder1)."""
    names = list(model.layer_taps())
    return names[-2] if names[-1] == "classifier" else names[-1]


class PenultimateNN:
    """Global NN from the penultimate layer's whole activation ("GR (FC7)"): every database
    image's flattened, L2-normalised activation (float16, computed once by a forward pass over
    the store's inputs), ranked by cosine similarity with the query's."""

    def __init__(self, cnn, *, batch_size: int = 4):
        from ..features import LayerSpec, capture, global_descriptor

        self.cnn, self.tap = cnn, penultimate_tap(cnn.model)
        self.spec = LayerSpec(self.tap, *cnn.model.layer_taps()[self.tap])
        self._capture, self._describe = capture, global_descriptor
        inputs = cnn.array("inputs")
        rows = [self.describe(np.array(inputs[a:a + batch_size], np.float32))  # a writable copy for torch
                for a in range(0, len(inputs), batch_size)]
        self.db = torch.from_numpy(np.concatenate(rows))

    def describe(self, images: np.ndarray) -> np.ndarray:
        _, acts = self._capture(self.cnn.model, images, [self.spec])
        return self._describe(acts[self.tap]).astype(np.float16)

    def best(self, image: np.ndarray) -> int:
        q = torch.from_numpy(self.describe(image[None])[0].astype(np.float32))
        return int(torch.argmax(torch.cat([b.float() @ q for b in self.db.split(64)])))


def global_images(cnn, feats, layer: str, penultimate: PenultimateNN | None, *, layer_nn: bool = True) -> dict[str, int]:
    """The global NN baselines' database images for one query."""
    all_ids = np.arange(cnn.num_images, dtype=np.int64)
    out = {"global_bottleneck": int(cnn.shortlist(feats.global_descriptor, all_ids, 1)[0][0]),
           "global_last": int(all_ids[np.argmax(cnn.output_similarity(feats.output, all_ids))])}
    if penultimate is not None:
        out["global_penultimate"] = penultimate.best(feats.image)
    if layer_nn:
        out["global_layer"] = int(cnn.global_nn(feats, by=layer).image)
    return out


#: The shortlist sizes ``compnn evaluate`` tries by default (the papers' top-1 / 16 / 64 rows).
DEFAULT_TOP_KS = (1, 16, 64)


def evaluate(
    index: str | Path, *, data: str, split: str = "test", direction: str | None = None,
    size: int | None = None, limit: int | None = None, seed: int = 0, sample: str = "first",
    data_args: dict | None = None, ignore_index: int | None = None, layer: str | None = None,
    search: str = "exact", top_k: Sequence[int] | None = None, iterations: int = DEFAULTS.iterations,
    init: str = DEFAULTS.init, threads: int | None = None, out: str | Path, progress: bool = True,
    cnn=None, examples: int = 4, hpm: bool = True, global_layers: bool = True,
    inversion: Sequence[str | Path] = (), inversion_top_k: int = 16, cluster: str | None = None,
    exact_method: str = DEFAULTS.exact_method, cache: str | Path | None = None, n_boot: int = N_BOOT,
) -> dict:
    """Evaluate CompNN against the CNN and global NN on a dataset split; write the tables
    (``results.json``, ``results.md``, ``examples.png``; with ``inversion`` checkpoints also the
    learned-inversion comparison and ``inversion.png``). ``top_k`` None: :data:`DEFAULT_TOP_KS`,
    each capped at the number of database images; given sizes above it are refused.

    ``exact_method``: see the module docstring; ``cache`` is a folder of per-image records that a
    rerun reuses (not with ``inversion``); ``n_boot`` bootstrap resamples give every figure its
    ``ci95``.
    """
    from ..api import CompNN
    from ..data import open_like
    from .inversion_eval import InversionEval

    if exact_method not in EXACT_METHODS:
        raise QueryError(f"Expected --exact-method to be one of {', '.join(EXACT_METHODS)} (what this "
                         f"version's API accepts), but --exact-method = {exact_method!r}")
    if cache is not None and inversion:
        raise QueryError("--inversion cannot be combined with a per-image cache (its scores are not cached)")
    cnn = cnn or CompNN.load(index, threads=threads, cluster=cluster)
    man = cnn.store.manifest
    trained = man.get("dataset", {})
    layer = cnn.check_layer(layer)
    top_ks = sorted({int(k) for k in top_k} if top_k is not None
                    else {min(k, cnn.num_images) for k in DEFAULT_TOP_KS})
    if not top_ks or top_ks[0] < 1:
        raise QueryError(f"Expected --top-k values >= 1, got {list(top_k)}")
    over = [k for k in top_ks if k > cnn.num_images]
    if over:
        raise QueryError(
            f"Expected --top-k <= number of database images ({cnn.num_images}), but got {over}"
        )
    ds = open_like(data, trained, task=cnn.task, split=split, direction=direction, size=size, limit=limit,
                   seed=seed, sample=sample, data_args=data_args, ignore_index=ignore_index)
    seg = cnn.task == "segment"
    options = QueryOptions(search=search, iterations=iterations, init=init, exact_method=exact_method)
    inv = (InversionEval(cnn, inversion, options=options.with_(top_k=min(inversion_top_k, cnn.num_images)))
           if inversion else None)
    levels = cnn.pyramid(layer) if (search == "patchmatch" and init == "coarse") else [layer]
    levels = list(dict.fromkeys(levels + (inv.layers if inv else [])))
    identity = {k: v for k, v in ds.identity.items() if k not in ("limit", "sample")}
    fp = fingerprint({"model": man.get("model"), "store_dataset": trained, "images": cnn.num_images, "layer": layer,
                      "options": options.__dict__, "top_k": top_ks,
                      "hpm": bool(hpm), "global_layers": bool(global_layers), "data": identity})
    store = ImageCache(cache, fp) if cache is not None else None
    in_palette, in_labels_note = input_label_palette(ds) if not seg else (None, None)
    job = _ImageJob(cnn, layer=layer, levels=levels, top_ks=top_ks, options=options, hpm=hpm, threads=threads,
                    global_layers=global_layers, inv=inv,
                    palette=man.get("palette"), seg=seg, ignore_index=ds.ignore_index,
                    input_palette=in_palette)
    records, example_rows = [], []
    for i in tqdm(range(len(ds)), desc="evaluate", unit="img", disable=not progress):
        name = str(ds.names[i])
        want_example = len(example_rows) < examples
        rec = store.get(name) if store is not None else None
        example = store.example(name, rec) if (rec is not None and want_example) else None
        if rec is None or (want_example and example is None):
            rec, example = job.run(ds[i], example=want_example)
            if store is not None:
                store.put(name, rec, example)
        records.append(rec)
        if example is not None:
            example_rows.append(example)

    weights = resample_weights(len(records), n_boot=n_boot)
    context = PaperContext.of_store(man, layer)
    if seg:
        rows = pooled_rows(records, weights, num_classes=cnn.num_classes, ignore_index=ds.ignore_index)
        add_deltas(rows)
        delta_intervals(records, rows, weights, num_classes=cnn.num_classes)
        columns = ["method", "top_k", "source", "vs", "pixel_accuracy", "mean_iou",
                   "delta_pixel_accuracy", "delta_mean_iou", "paper_pixel_accuracy", "paper_delta_pixel_accuracy"]
    else:
        rows = mean_rows(records, weights)
        for r in pooled_rows(records, weights, num_classes=len(in_palette) if in_palette is not None else 1,
                             ignore_index=None, field="input_cms", per_class=False, mpa=True):
            r.pop("mean_iou", None)
            r["ci95"].pop("mean_iou", None)
            rows.append(r)
        columns = ["method", "top_k", "source", "vs", "pixel_accuracy", "mpa", "paper_mpa", "l1", "psnr"]
    for r in rows:
        r.update(paper_figures(r, context))
    ran = sorted({m for rec in records for m in rec.get("exact_methods", [])})
    doc = {"index": str(index), "layer": layer, "search": search, "split": split,
           "images": len(ds), "n_images": len(records), "database_images": cnn.num_images,
           "image_names": [str(n) for n in ds.names][:len(ds)], "task": cnn.task,
           "top_k": top_ks, "hpm": bool(hpm and search == "exact"),
           # the store's names (a Facades palette names itself): never guessed from the class count
           "class_names": (list(cnn.context().class_names or []) or None) if seg else None,
           "penultimate_layer": job.penultimate_tap if global_layers else None, "rows": rows,
           "papers_dataset": context.dataset,
           "input_labels": in_labels_note,  # translation: why the input reconstruction is (not) scored
           "claims": claim_results(records, claims(top_ks), weights, num_classes=cnn.num_classes,
                                   context=context) if seg else [],
           "bootstrap": {"resamples": int(n_boot), "unit": "test image", "interval": "percentile 95%"},
           # which exact method(s) computed the exact fields (auto: the fastest the store supports)
           "exact_method": "+".join(ran) if search == "exact" else None,
           "exact_pass": None if search != "exact" else ("per_image" if exact_method == "faiss" else "per_top_k"),
           "cache": None if store is None else {"folder": str(store.folder), "reused": store.hits,
                                                "computed": store.computed, "fingerprint": fp}}
    if inv is not None:
        doc["inversion"] = inv.rows()
    return _write(doc, out, cnn, layer, search, split, columns, example_rows, top_ks, inv, progress)


def input_label_palette(ds) -> tuple[np.ndarray | None, str]:
    """The palette a translation dataset's *inputs* are label maps in, or None and why not.

    Table 2 scores the input reconstruction against the input label map, which needs the inputs
    to be label maps (:func:`compnn_index.data.pix2pix.input_label_palette`: Facades labels →
    photo yes, a photo → photo set no)."""
    from ..data.pix2pix import input_label_palette as palette_of

    if len(ds) == 0:
        return None, "no test images"
    found = palette_of(getattr(ds, "identity", None), ds[0].input)
    return found.palette, found.reason


class _ImageJob:
    """What one test image costs: one forward pass, the searches, the pastes, every row's
    confusion matrix or metrics — returned as a JSON-able per-image record."""

    def __init__(self, cnn, *, layer, levels, top_ks, options, hpm, threads, global_layers, inv, palette, seg,
                 ignore_index=None, input_palette=None):
        self.cnn, self.layer, self.levels, self.top_ks, self.options = cnn, layer, levels, top_ks, options
        self.hpm, self.threads, self.global_layers = hpm, threads, global_layers
        self.inv, self.palette, self.seg, self.ignore_index = inv, palette, seg, ignore_index
        self.input_palette = input_palette  # translation: the inputs' label palette (None: not label maps)
        self.penultimate_tap = penultimate_tap(cnn.model) if global_layers else None
        self._penult = None  # built on first need: a forward pass over every stored input

    def run(self, s, *, example: bool) -> tuple[dict, list | None]:
        import time

        from ..data import labels_from_colors
        from ..pictures import to_rgb

        cnn, t0 = self.cnn, time.perf_counter()
        targets, outputs = cnn.array("targets"), cnn.array("outputs")
        with cnn.thread_limits(self.threads):
            if self.global_layers and self._penult is None:
                self._penult = PenultimateNN(cnn)
            feats = cnn.extract(s.input, self.levels)
            cnn_out = feats.output
            info: dict = {}
            fields = search_fields(cnn, feats, self.layer, self.top_ks, self.options, hpm=self.hpm, info=info)
            spec = cnn.store.spec(self.layer)
            res = {key: {src: cnn.compose(f, spec, src, s.input.shape[1:]) for src in ("target", "self", "input")}
                   for key, f in fields.items()}
            ids = global_images(cnn, feats, self.layer, self._penult, layer_nn=self.global_layers)
            globals_ = {}
            for n, j in ids.items():
                globals_[(n, "original")] = np.asarray(targets[j])
                globals_[(n, "self_supervised")] = np.asarray(outputs[j])
            if self.inv is not None:
                self.inv.add(feats, s.input)
        rec: dict = {"exact_methods": [info["exact_method"]] if "exact_method" in info else [], "global_images": ids}
        if self.seg:
            acc = SegAccumulator(cnn.num_classes, self.ignore_index)
            acc.add(("cnn", None, None, "ground_truth"), cnn_out, s.target)
            for (method, k), r in res.items():
                for src, tag in SOURCE_TAGS:
                    acc.add((method, k, tag, "ground_truth"), r[src], s.target)
                    acc.add((method, k, tag, "cnn"), r[src], cnn_out, ignore=False)
            for (name, tag), pred in globals_.items():
                acc.add((name, None, tag, "ground_truth"), pred, s.target)
                acc.add((name, None, tag, "cnn"), pred, cnn_out, ignore=False)
            rec["cms"] = {key_text(k): cm.tolist() for k, cm in acc.cms.items()}
        else:
            metrics = {("cnn", None, None, "ground_truth"): (cnn_out, s.target)}
            pal = self.input_palette
            in_acc = SegAccumulator(len(pal) if pal is not None else 1, None)
            in_labels = labels_from_colors(to_rgb(s.input, None), pal) if pal is not None else None
            for (method, k), r in res.items():
                if pal is not None:
                    rec_in = labels_from_colors(to_rgb(r["input"], None), pal)
                    in_acc.add((method, k, "input", "input_labels"), rec_in, in_labels)
                for src, tag in SOURCE_TAGS:
                    metrics[(method, k, tag, "cnn")] = (r[src], cnn_out)
            for (name, tag), pred in globals_.items():
                metrics[(name, None, tag, "cnn")] = (pred, cnn_out)
            rec["metrics"] = {key_text(k): {"l1": l1(a, b), "psnr": _json_float(psnr(a, b))}
                              for k, (a, b) in metrics.items()}
            rec["input_cms"] = {key_text(k): cm.tolist() for k, cm in in_acc.cms.items()}
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        row = None
        if example:
            p = self.palette
            best = res[("compnn", self.top_ks[-1])]
            row = [to_rgb(s.input, None), to_rgb(s.target, p), to_rgb(cnn_out, p), to_rgb(best["target"], p),
                   to_rgb(globals_[("global_bottleneck", "original")], p)]
        return rec, row


def _json_float(x: float) -> float | str:
    """JSON has no infinity: an identical reconstruction's PSNR is stored as the string "inf"."""
    return x if np.isfinite(x) else "inf"


def _write(doc, out, cnn, layer, search, split, columns, example_rows, top_ks, inv, progress) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out / "results.json")
    table = render_table(doc["rows"], columns)
    md = (f"# CompNN evaluation: {cnn.task}, layer {layer}, {search} search, {doc['images']} {split} images\n\n"
          + (f"exact search method: {doc['exact_method']}\n\n" if doc.get("exact_method") else "")
          + (f"input reconstruction vs the input labels: {doc['input_labels']}\n\n" if doc.get("input_labels") else "")
          + table)
    per_class = render_per_class(doc["rows"], doc["class_names"])
    if per_class:
        md += "\n## Per-class IoU (vs ground truth)\n\n" + per_class
    if inv is not None:
        md += "\n## CompNN input reconstruction vs learned inversion\n\n" + inv.markdown()
        inv.picture().save(out / "inversion.png")
    (out / "results.md").write_text(md)
    if example_rows:
        from ..pictures import grid

        captions = ["input", "ground truth", "CNN output", f"CompNN top-{top_ks[-1]}", "global NN"]
        sheet = grid(example_rows, captions)
        if cnn.task == "segment":  # the label maps' colours, named
            from ..pictures import beside, class_legend

            sheet = beside(sheet, class_legend(cnn.store.manifest.get("palette"), doc.get("class_names"),
                                               num_classes=cnn.num_classes), title="classes")
        sheet.save(out / "examples.png")
    if progress:
        print(table)
        print(f"wrote {out / 'results.json'}")
    doc["markdown"] = table
    return doc
