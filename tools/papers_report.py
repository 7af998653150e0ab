"""Assemble docs/results/papers.{json,md} from the step results of tools/reproduce_papers.py.

papers.json keeps its schema (``table1``, ``table2``, ``activation_prediction``, ``inversion``,
``models``, ``run``) and adds ``n_images`` and ``ci95`` (95% bootstrap interval over test images)
to every figure, and ``claims``: every "CompNN vs global" and "CompNN vs CNN" difference the papers
print, with our paired difference, its interval and ``supports`` ("supports" / "contradicts" /
"cannot tell"). papers.md gets one line per claim.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

T1_KEYS = ("method", "top_k", "source", "vs", "pixel_accuracy", "mean_iou", "paper_pixel_accuracy",
           "paper_mean_iou", "delta_pixel_accuracy", "delta_mean_iou", "iou_per_class", "n_images", "ci95",
           "paper_delta_pixel_accuracy", "paper_delta_mean_iou", "paper_eccvw_pixel_accuracy", "paper_eccvw_mean_iou")
NAMES = {"cnn": "CNN", "compnn": "CompNN OR (exact)", "compnn_hpm": "CompNN OR (HPM)",
         "global_bottleneck": "global NN, bottleneck", "global_last": "global NN, output",
         "global_penultimate": "GR (FC7): penultimate layer's whole activation",
         "global_layer": "global NN, decoder2 aligned hyperpatches"}


SCALE_NOTE = (
    "Stores hold the first {db_images} of the 400 training images (the papers: all 400); Tables 1 and 2 use "
    "{images} test images (the papers: all 106) with {table1_search} / {table2_search} search. ")
PREDICTION_NOTE = "Activation prediction uses {ap_images} test images with exact search over every stored image. "
INVERSION_NOTE = ("The inversion comparison uses {inv_images} test images and inversion networks (width {inv_width}) "
                  "trained {inv_minutes} min each. ")
NOT_RUN_NOTE = "Not run in this reproduction: {steps}. "
CLOSING_NOTE = (
    "The models' training (epochs, minutes) is in the Models table; the papers train 200 epochs. Intervals are "
    "95% bootstrap intervals over the test images (2000 resamples); with fewer than 10 test images no claim is "
    "judged. Rerun `tools/reproduce_papers.py` with `--db-images 400 --images 106` for the full-scale figures.")


def scale_note(doc: dict) -> str:
    """What was run and at what scale: only the steps that have results are described."""
    args = {k: doc["run"]["args"].get(k, "?") for k in
            ("db_images", "images", "ap_images", "inv_images", "inv_minutes", "inv_width", "table1_search",
             "table2_search")}
    text = SCALE_NOTE.format(**args)
    missing = [name for name, ran in (("activation prediction", doc.get("activation_prediction")),
                                      ("the inversion comparison", doc.get("inversion"))) if not ran]
    if doc.get("activation_prediction"):
        text += PREDICTION_NOTE.format(**args)
    if doc.get("inversion"):
        text += INVERSION_NOTE.format(**args)
    if missing:
        text += NOT_RUN_NOTE.format(steps=" and ".join(missing))
    return text + CLOSING_NOTE


def _copy_picture(src: Path, dst: Path, *, max_bytes: int = 1 << 20) -> None:
    """Copy a PNG into the docs; one over ``max_bytes`` (a sheet of photos) is saved with a 256-colour
    palette instead (~3× smaller), so the repository holds no file over 1 MiB."""
    if src.stat().st_size <= max_bytes:
        shutil.copyfile(src, dst)
        return
    from PIL import Image

    with Image.open(src) as im:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                   dither=Image.Dither.NONE).save(dst, optimize=True)


def _names(names) -> str:
    """Test image names, the first and last few when there are many."""
    names = [str(n) for n in names]
    return ", ".join(names) if len(names) <= 12 else f"{', '.join(names[:3])}, …, {', '.join(names[-2:])}"


def _ci(ci) -> str:
    return "" if not ci else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _f(v, nd=4):
    return "" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def _mean(xs):
    return float(np.mean(xs)) if xs else None


def _boot_ci(values, n_boot: int = 2000) -> list[float] | None:
    """95% bootstrap interval of the mean of per-image values (the same resampling as the tables)."""
    from compnn_index.jobs.stats import boot_mean, ci95, resample_weights

    return ci95(boot_mean(values, resample_weights(len(values), n_boot=n_boot))) if values else None


def activation_claim(k: str, ims: list[dict]) -> dict:
    """ICLR's activation-prediction claim: CompNN's predicted activations are closer (cosine) to the
    true ones than the global NN's; a paired test on the per-image cosines (the paper prints no
    number here, only the direction)."""
    from compnn_index.jobs.stats import boot_mean, paired_difference, resample_weights

    a = [i["scores"]["compnn"]["cosine"] for i in ims]
    b = [i["scores"]["global"]["cosine"] for i in ims]
    w = resample_weights(len(ims))
    test = paired_difference(boot_mean(a, w), boot_mean(b, w), n_images=len(ims), paper=None, sign=1)
    return {"id": f"iclr_activation_k{k}_compnn_vs_global_cosine", "metric": "cosine",
            "claim": f"activation prediction decoder4 → decoder3 ({k}×{k}): CompNN vs global NN, cosine",
            "paper_source": "ICLR (direction only)", "ours": float(np.mean(a) - np.mean(b)), **test}


def activation_summary(pred: dict | None) -> dict | None:
    if not pred:
        return None
    out = {"source": pred["source"], "target": pred["target"], "database_images": pred["database_images"],
           "test_images": pred["test_images"], "search": pred["search"], "per_k": {}}
    for k, entry in pred["per_k"].items():
        ims = entry["images"]
        agree = lambda who, key: _mean([i["output_agreement"][who][key] for i in ims])  # noqa: E731
        out["per_k"][k] = {
            "compnn_cosine": _mean([i["scores"]["compnn"]["cosine"] for i in ims]),
            "global_cosine": _mean([i["scores"]["global"]["cosine"] for i in ims]),
            "compnn_relative_l2": _mean([i["scores"]["compnn"]["relative_l2"] for i in ims]),
            "global_relative_l2": _mean([i["scores"]["global"]["relative_l2"] for i in ims]),
            "compnn_cosine_decoder_channels": _mean([i["scores"]["compnn_decoder"]["cosine"] for i in ims]),
            "global_cosine_decoder_channels": _mean([i["scores"]["global_decoder"]["cosine"] for i in ims]),
            "compnn_output_agreement": agree("compnn", "pixel_accuracy"),
            "global_output_agreement": agree("global", "pixel_accuracy"),
            "compnn_output_miou": agree("compnn", "mean_iou"),
            "global_output_miou": agree("global", "mean_iou"),
            "compnn_wins_cosine": sum(i["scores"]["compnn"]["cosine"] > i["scores"]["global"]["cosine"] for i in ims),
            "images": len(ims), "n_images": len(ims), "minutes": entry["minutes"], "dims": entry["dims"],
            "windows_per_image": entry["windows_per_image"],
            "ci95": {"compnn_cosine": _boot_ci([i["scores"]["compnn"]["cosine"] for i in ims]),
                     "global_cosine": _boot_ci([i["scores"]["global"]["cosine"] for i in ims]),
                     "compnn_output_agreement": _boot_ci([i["output_agreement"]["compnn"]["pixel_accuracy"] for i in ims]),
                     "global_output_agreement": _boot_ci([i["output_agreement"]["global"]["pixel_accuracy"] for i in ims])},
            "claim": activation_claim(k, ims)}
    main = out["per_k"].get("4") or next(iter(out["per_k"].values()))
    out.update({k: main[k] for k in ("compnn_cosine", "global_cosine", "compnn_output_agreement",
                                     "global_output_agreement")})
    return out


def write_report(res: Path, docs: Path, *, args: dict | None = None) -> dict:
    docs.mkdir(parents=True, exist_ok=True)
    models = _load(res / "models.json") or []
    t1 = _load(res / "table1" / "results.json")
    t2 = _load(res / "table2" / "results.json")
    inv = _load(res / "inversion" / "results.json")
    pred = _load(res / "prediction.json")
    table1 = [{k: r.get(k) for k in T1_KEYS} for r in (t1 or {}).get("rows", []) if "mean_iou" in r]
    table2 = [{"method": r["method"], "top_k": r["top_k"], "mpa": r.get("mpa"),
               "pixel_accuracy": r.get("pixel_accuracy"), "paper_mpa": r.get("paper_mpa"),
               "n_images": r.get("n_images"), "ci95": r.get("ci95")}
              for r in (t2 or {}).get("rows", []) if r.get("vs") == "input_labels"]
    ap = activation_summary(pred)
    claims = list((t1 or {}).get("claims", [])) + [v["claim"] for v in ((ap or {}).get("per_k") or {}).values()]
    for m in models:
        m["cnn_pixel_accuracy"] = None
        src = t1 if m["task"] == "segment" else t2
        for r in (src or {}).get("rows", []):
            if r["method"] == "cnn" and r["vs"] == "ground_truth":
                m["cnn_pixel_accuracy"] = r.get("pixel_accuracy")
                m["cnn_psnr"] = r.get("psnr")
    minutes = {n: (res / n / "minutes.txt").read_text() if (res / n / "minutes.txt").is_file() else None
               for n in ("table1", "table2")}
    doc = {"table1": table1, "table2": table2, "activation_prediction": ap, "claims": claims,
           "inversion": (inv or {}).get("inversion", []), "models": models,
           "run": {"args": {k: str(v) for k, v in (args or {}).items()},
                   "table1": None if not t1 else {k: t1.get(k) for k in ("images", "n_images", "database_images", "image_names", "top_k", "hpm", "search", "penultimate_layer", "class_names", "papers_dataset", "exact_method", "exact_pass", "cache")} | {"minutes": minutes["table1"]},
                   "table2": None if not t2 else {k: t2.get(k) for k in ("images", "n_images", "database_images", "image_names", "top_k", "hpm", "search", "papers_dataset", "exact_method", "exact_pass", "cache")} | {"minutes": minutes["table2"]}}}
    doc["pictures"] = table_pictures(doc, docs)
    (docs / "papers.json").write_text(json.dumps(doc, indent=1))
    for src, dst in ((res / "figure3_k4.png", "papers_figure3_k4.png"), (res / "figure3_k2.png", "papers_figure3_k2.png"),
                     (res / "inversion" / "inversion.png", "papers_inversion.png"),
                     (res / "table1" / "examples.png", "papers_table1_examples.png"),
                     (res / "table2" / "examples.png", "papers_table2_examples.png")):
        if src.is_file():
            _copy_picture(src, docs / dst)
    (docs / "papers.md").write_text(markdown(doc, t1))
    return doc


def markdown(doc: dict, t1: dict | None) -> str:
    lines = ["# The papers' Facades experiments, reproduced (issues 12, 21)", "",
             "Written by `tools/reproduce_papers.py`; numbers in `papers.json`. Paper columns hold the "
             "figures the papers print (`../shared/PAPERS_TABLES.md`): ICLR's Table 1 (absolute), ECCV-W's "
             "Table 1 (differences from its CNN, 0.5105 / 0.2218) and Table 2 (MPA), beside the rows they "
             "belong to, and only when the store was built on the papers' Facades; every other paper cell is "
             "empty (null in the JSON) rather than guessed. Brackets: 95% bootstrap intervals over the test "
             "images.", "", "## What was run, and what was scaled down", "",
             scale_note(doc), "", "## Models", "",
             "| task | direction | epochs | train images | train minutes | final loss | CNN pixel accuracy (test) | CNN PSNR vs ground truth (test) |",
             "|---|---|---|---|---|---|---|---|"]
    for m in doc["models"]:
        lim = (m.get("dataset") or {}).get("limit") or 400
        lines.append(f"| {m['task']} | {m['direction']} | {m['epochs']} | {lim} | {_f(m['train_minutes'], 1)} | "
                     f"{_f(m['final_loss'])} | {_f(m.get('cnn_pixel_accuracy'))} | {_f(m.get('cnn_psnr'), 2)} |")
    run = doc["run"]
    if doc["table1"]:
        r1 = run["table1"]
        lines += ["", "## Table 1: segmentation (photo → labels), decoder2", "",
                  f"{r1['images']} test images ({_names(r1['image_names'])}); {r1['database_images']}-image database; "
                  + (("exact search once per query over the top-" + str(max(r1['top_k'])) + " shortlist (smaller top-k "
                      "derived)" if r1.get("exact_pass") != "per_top_k" else
                      f"the API's exact search ({r1.get('exact_method')}) per top-k") + " plus HyperPatch-Match rows"
                     if r1['search'] == "exact" else
                     "HyperPatch-Match (32 iterations, staged start) per top-k; exact search was unaffordable here")
                  + f"; {r1['minutes']} min. `self_supervised` = CompNN (SS), pasting the network's own labels; "
                  "`original` = CompNN (O), pasting the ground-truth labels.", "",
                  "| method | top-k | source | vs | pixel acc. | mIoU | Δ pixel acc. vs CNN | Δ mIoU vs CNN | "
                  "paper pixel acc. (ICLR) | paper mIoU (ICLR) | paper Δ pixel acc. (ECCV-W) | paper Δ mIoU (ECCV-W) |",
                  "|" + "---|" * 12]
        for r in doc["table1"]:
            name = f"CompNN OR ({r1['search']})" if r["method"] == "compnn" else NAMES.get(r["method"], r["method"])
            ci = r.get("ci95") or {}
            lines.append(f"| {name} | {_f(r['top_k'])} | {r['source'] or ''} | {r['vs']} | "
                         f"{_f(r['pixel_accuracy'])}{_ci(ci.get('pixel_accuracy'))} | "
                         f"{_f(r['mean_iou'])}{_ci(ci.get('mean_iou'))} | "
                         f"{_f(r.get('delta_pixel_accuracy'))}{_ci(ci.get('delta_pixel_accuracy'))} | "
                         f"{_f(r.get('delta_mean_iou'))}{_ci(ci.get('delta_mean_iou'))} | {_f(r.get('paper_pixel_accuracy'))} | "
                         f"{_f(r.get('paper_mean_iou'))} | {_f(r.get('paper_delta_pixel_accuracy'))} | "
                         f"{_f(r.get('paper_delta_mean_iou'))} |")
        names = (t1 or {}).get("class_names") or []
        gt = [r for r in doc["table1"] if r["vs"] == "ground_truth" and r["iou_per_class"]]
        if gt and names:
            lines += ["", "Per-class IoU vs ground truth:", "",
                      "| method | top-k | source | " + " | ".join(names) + " |", "|" + "---|" * (3 + len(names))]
            for r in gt:
                lines.append(f"| {r['method']} | {_f(r['top_k'])} | {r['source'] or ''} | " +
                             " | ".join(_f(v, 3) for v in r["iou_per_class"]) + " |")
        if "papers_table1.png" in doc.get("pictures", []):
            lines += ["", "![Table 1, ours beside the papers'](papers_table1.png)"]
        lines += ["", "![examples](papers_table1_examples.png)"]
    if doc["table2"]:
        r2 = run["table2"]
        lines += ["", "## Table 2: input reconstruction of labels → photo, decoder2", "",
                  f"{r2['images']} test images ({_names(r2['image_names'])}), {r2['database_images']}-image database, {r2['search']} search; `mpa` = mean per-class pixel "
                  f"accuracy of the reconstructed label map against the input label map, `pixel acc.` the overall pixel "
                  f"accuracy (the papers call their figure MPA without defining it in the text we have; our overall "
                  f"pixel accuracy is the closer of the two to their numbers); {r2['minutes']} min.", "",
                  "| method | top-k | MPA | pixel acc. | paper MPA |", "|---|---|---|---|---|"]
        for r in doc["table2"]:
            ci = r.get("ci95") or {}
            lines.append(f"| {r['method']} | {r['top_k']} | {_f(r['mpa'])}{_ci(ci.get('mpa'))} | "
                         f"{_f(r['pixel_accuracy'])}{_ci(ci.get('pixel_accuracy'))} | {_f(r['paper_mpa'], 3)} |")
        if "papers_table2.png" in doc.get("pictures", []):  # after the table: inside it, it would end it
            lines += ["", "![Table 2, ours beside the paper's](papers_table2.png)"]
    ap = doc["activation_prediction"]
    if ap:
        lines += ["", f"## Activation prediction: {ap['source']} → {ap['target']}", "",
                  f"Database: {ap['database_images']} training images"
                  f"{' (a scaled-down database)' if ap['database_images'] < 400 else ''}; {len(ap['test_images'])} "
                  f"test images; {ap['search']} search over every database image; k×k windows of {ap['source']} "
                  f"(`dims` each) predict the {ap['target']} block they map to. "
                  f"Cosine and relative L2 are means over the target positions (all channels of the {ap['target']} tap; "
                  "`decoder channels` = the half the decoder computes, without the skip-connected encoder half). "
                  "Output agreement: pixel accuracy (and mIoU) of the network's labels when the predicted "
                  "activations replace the true ones from decoder3 onwards, against the CNN's own labels.", "",
                  "| window | dims | CompNN cosine | global NN cosine | CompNN rel. L2 | global rel. L2 | "
                  "CompNN cosine (decoder ch.) | global cosine (decoder ch.) | CompNN output agreement | "
                  "global output agreement | CompNN output mIoU | global output mIoU | images CompNN wins | minutes |",
                  "|" + "---|" * 14]
        for k, v in ap["per_k"].items():
            lines.append(f"| {k}×{k} | {v['dims']} | {_f(v['compnn_cosine'])} | {_f(v['global_cosine'])} | "
                         f"{_f(v['compnn_relative_l2'])} | {_f(v['global_relative_l2'])} | "
                         f"{_f(v['compnn_cosine_decoder_channels'])} | {_f(v['global_cosine_decoder_channels'])} | "
                         f"{_f(v['compnn_output_agreement'])} | {_f(v['global_output_agreement'])} | "
                         f"{_f(v['compnn_output_miou'])} | {_f(v['global_output_miou'])} | "
                         f"{v['compnn_wins_cosine']}/{v['images']} | {v['minutes']} |")
        lines += ["", "![Figure 3 layout](papers_figure3_k4.png)"]
    if doc["inversion"]:
        first = doc["inversion"][0]
        photo = first["kind"] != "labels"
        t = first["training"]
        lines += ["", "## CompNN input reconstruction vs learned inversion (Dosovitskiy & Brox)", "",
                  (f"{'Segmentation model (photo inputs): PSNR (dB) and SSIM against the input photo' if photo else 'Label-map inputs: pixel accuracy and MPA against the input label map'}; "
                   f"{first.get('n_images', '?')} test images, 95% bootstrap intervals in brackets. CompNN IR: "
                   f"{'HyperPatch-Match' if first['search'] == 'patchmatch' else 'exact search'} over the top-{first['top_k']} "
                   f"shortlist of the store. Learned inversion: one network per layer trained on the store's "
                   f"{t.get('images')} training images (see the training columns). `CompNN − learned`: the paired "
                   "difference on the same test images, its 95% interval and p-value."), "",
                  f"| layer | CompNN IR {'PSNR' if photo else 'pixel acc.'} | learned {'PSNR' if photo else 'pixel acc.'} | "
                  f"CompNN − learned | CompNN IR {'SSIM' if photo else 'MPA'} | learned {'SSIM' if photo else 'MPA'} | "
                  "CompNN − learned | inversion epochs | images seen | train minutes | final loss |",
                  "|" + "---|" * 11]

        def cell(r, method, k, digits=4):
            return f"{_f(r[method][k], digits)}{_ci((r[method].get('ci95') or {}).get(k))}"

        def diff(r, k):
            d = (r.get("difference") or {}).get(k)
            return "" if not d else f"{d['value']:+.4f}{_ci(d.get('ci95'))} (p {_f(d.get('p_value'), 3)})"

        for r in doc["inversion"]:
            tr = r["training"]
            key = ("psnr", "ssim") if "psnr" in r["compnn_ir"] else ("pixel_accuracy", "mpa")
            lines.append(f"| {r['layer']} | {cell(r, 'compnn_ir', key[0], 2)} | {cell(r, 'learned', key[0], 2)} | "
                         f"{diff(r, key[0])} | {cell(r, 'compnn_ir', key[1])} | {cell(r, 'learned', key[1])} | "
                         f"{diff(r, key[1])} | {_f(tr.get('epochs'), 1)} | {_f(tr.get('images_seen'))} | "
                         f"{_f(tr.get('train_minutes'), 1)} | {_f((tr.get('losses') or [None])[-1])} |")
        lines += ["", "![inversion](papers_inversion.png)"]
    lines += claim_lines(doc.get("claims") or [])
    return "\n".join(lines) + "\n"


def claim_lines(claims: list[dict]) -> list[str]:
    """One line per claim: the paper's difference, ours with its paired 95% interval, the verdict."""
    if not claims:
        return []
    out = ["", "## The papers' claims, tested", "",
           "Each line: a difference the papers print (row A minus row B, vs ground truth), ours on the same "
           "test images, its paired 95% bootstrap interval and p-value, and the verdict: **supports** (our "
           "interval lies wholly on the paper's side of zero), **contradicts** (wholly on the other side), "
           "**cannot tell** (it contains zero, or fewer than 10 test images).", ""]
    for c in claims:
        if c.get("paper") is not None:
            paper = f"paper {c['paper']:+.4f}"
        else:
            paper = "paper: direction only" if c.get("supports") else "paper figure not applicable"
        ci = c.get("ci95")
        interval = "" if not ci else f" [{ci[0]:+.4f}, {ci[1]:+.4f}]"
        p = "" if c.get("p_value") is None else f", p = {c['p_value']:.3f}"
        verdict = c.get("supports") or "not comparable (not the papers' data)"
        out.append(f"- **{verdict}** — {c['claim']} "
                   f"({c['paper_source']}): {paper}; ours {c['ours']:+.4f}{interval}{p}, {c['n_images']} images")
    return out


# ---------------------------------------------------------------------------- pictures
T1_PICTURE_ROWS = (("cnn", None, "CNN"), ("compnn", "self_supervised", "CompNN (SS)"), ("compnn", "original", "CompNN (O)"),
                   ("global_bottleneck", "self_supervised", "global bottleneck (SS)"),
                   ("global_bottleneck", "original", "global bottleneck (O)"),
                   ("global_layer", "self_supervised", "global decoder2 (SS)"),
                   ("global_layer", "original", "global decoder2 (O)"))


def _bars(ax, labels, ours, errs, paper, title):
    """Our figures (bars, 95% interval whiskers) beside the paper's (hatched bars; absent: none)."""
    x = np.arange(len(labels))
    lo = [0 if e is None or v is None else v - e[0] for v, e in zip(ours, errs)]
    hi = [0 if e is None or v is None else e[1] - v for v, e in zip(ours, errs)]
    ax.bar(x - 0.2, [np.nan if v is None else v for v in ours], 0.4, yerr=[lo, hi], capsize=3, label="ours (95% CI)")
    if any(p is not None for p in paper):
        ax.bar(x + 0.2, [np.nan if p is None else p for p in paper], 0.4, hatch="//", fill=False, label="paper")
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)


def table_pictures(doc: dict, docs: Path) -> list[str]:
    """One picture per table: our figures with their 95% intervals beside the papers' (Table 1:
    ICLR's absolute pixel accuracy and mIoU, ECCV-W's difference from the CNN; Table 2: ECCV-W's
    MPA per top-k). Returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    gt = [r for r in doc["table1"] if r["vs"] == "ground_truth"]
    if gt:
        ks = sorted({r["top_k"] for r in gt if r["top_k"] is not None})
        k = 16 if 16 in ks else max(ks)
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), dpi=100)
        picked = []
        for method, src, label in T1_PICTURE_ROWS:
            r = next((r for r in gt if r["method"] == method and r["source"] == src
                      and r["top_k"] == (k if method == "compnn" else None)), None)
            if r is not None:
                picked.append((label + (f", top-{k}" if method == "compnn" else ""), r))
        for ax, metric, name in ((axes[0], "pixel_accuracy", "pixel accuracy"), (axes[1], "mean_iou", "mIoU")):
            _bars(ax, [lab for lab, _ in picked], [r[metric] for _, r in picked],
                  [(r.get("ci95") or {}).get(metric) for _, r in picked],
                  [r.get("paper_" + metric) for _, r in picked], f"Table 1 (ICLR rows): {name} vs ground truth")
        deltas = []
        for r in gt:
            if r["method"] == "compnn" and r["source"] == "original":
                deltas.append((f"OR top-{r['top_k']}", r))
        for method, label in (("global_bottleneck", "GR (bottleneck)"), ("global_penultimate", "GR (FC7)")):
            r = next((r for r in gt if r["method"] == method and r["source"] == "original"), None)
            if r is not None:
                deltas.append((label, r))
        deltas = [(lab, r.get("delta_pixel_accuracy"), (r.get("ci95") or {}).get("delta_pixel_accuracy"),
                   r.get("paper_delta_pixel_accuracy")) for lab, r in deltas]
        _bars(axes[2], [d[0] for d in deltas], [d[1] for d in deltas], [d[2] for d in deltas], [d[3] for d in deltas],
              "Table 1 (ECCV-W rows): Δ pixel accuracy vs the CNN")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(docs / "papers_table1.png")
        plt.close(fig)
        written.append("papers_table1.png")
    rows = [r for r in doc["table2"] if r["method"] == "compnn"]
    if rows:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        _bars(ax, [f"top-{r['top_k']}" for r in rows], [r["mpa"] for r in rows],
              [(r.get("ci95") or {}).get("mpa") for r in rows], [r.get("paper_mpa") for r in rows],
              "Table 2: input-reconstruction MPA (labels → photo)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(docs / "papers_table2.png")
        plt.close(fig)
        written.append("papers_table2.png")
    return written
