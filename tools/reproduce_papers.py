"""Reproduce the CompNN papers' Facades experiments (issue 12) and write docs/results/papers.{md,json}.

    python tools/reproduce_papers.py --images 3 --ap-images 8 --inv-images 4 --db-images 100

Steps (each writes its result under ``--work``/results and is skipped on a rerun when present):

1. models — reuse ``--seg-model`` (photo → labels U-Net) and ``--l2p-model`` (labels → photo);
   ``--train-missing`` trains a missing one with epochs scaled to ``--budget`` (one epoch over
   400 images ≈ 10 min on an idle 2-core machine); training minutes come from ``--*-log``;
2. prediction — the segmentation model's store over ``--db-images`` training images (decoder2
   and the decoder4 → decoder3 pairs at k = 4 and 2; ``--work``/seg is built once with what all
   the run's steps need, a step it lacks gets its own ``seg_<step>``); activation prediction for
   ``--ap-images`` test images, exact search over every stored image;
3. inversion — one inversion network per layer (encoder1, encoder3, decoder4, decoder2), each
   trained ``--inv-minutes`` on the store's training images, then CompNN IR (HyperPatch-Match,
   top-16) vs learned inversion on ``--inv-images`` test images;
4. table1 — ``compnn evaluate`` of the same store on ``--images`` test images: exact search once
   per top-k with ``--exact-method`` (default auto: bounded where the store has a screen), each
   field seeding the next, or with ``faiss`` once per query over the top-64 shortlist (top-1/16/32
   derived: the API's top-16 shortlist is the first 16 of top-64's) — and HyperPatch-Match per top-k, global NN from the bottleneck, the output, the
   penultimate layer's whole activation and decoder2's aligned hyperpatches;
5. table2 — store of the labels → photo model at decoder2 (``--db-images``) and its
   input-reconstruction MPA at top-1/16/32/64 (``--table2-search``, HyperPatch-Match by default);
   waits up to ``--wait-l2p`` minutes for the model's checkpoint.

Stores go under ``--work`` (default /work/stores/papers), never into the repository;
``--drop-stores`` removes the l2p store once Table 2 is done. The last step assembles
docs/results/papers.{md,json} (``tools/papers_report.py``) from whatever steps have results.

Resumable: Tables 1 and 2 and activation prediction keep one small JSON per test image (under
``--work``/results/<step>/images, written atomically; see ``compnn_index.jobs.image_cache``), so a
killed run, rerun with the same arguments, continues without recomputing finished images, and a
rerun with more ``--images`` computes only the new ones. Every figure gets a 95% bootstrap
interval over test images and every "CompNN vs global" / "CompNN vs CNN" difference a paired
test (``compnn_index.jobs.stats``); papers.json adds ``n_images``, ``ci95`` and per claim
``supports``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT / ".." / "shared" / "data" / "facades"
SIZE = 256
INV_LAYERS = ("encoder1", "encoder3", "decoder4", "decoder2")
TOP_K = (1, 16, 32, 64)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_minutes_from_log(path: Path | None) -> float | None:
    """Elapsed time of the last tqdm update in a ``compnn train`` log, in minutes."""
    if path is None or not path.is_file():
        return None
    text = path.read_bytes()[-4000:].decode("utf-8", "replace")
    found = re.findall(r"\[(?:(\d+):)?(\d+):(\d+)<", text)
    if not found:
        return None
    h, m, s = found[-1]
    return round((int(h or 0) * 3600 + int(m) * 60 + int(s)) / 60, 1)


def ensure_model(path: Path, *, task: str, direction: str, epochs: int, log_path: Path | None) -> dict:
    from compnn_index.jobs import workflows
    from compnn_index.models import load_checkpoint

    minutes = train_minutes_from_log(log_path)
    if not path.is_file():
        log(f"training {path} ({task}, {direction}, {epochs} epochs)")
        t = time.perf_counter()
        workflows.train(data=str(DATA), direction=direction, size=SIZE, task=task, epochs=epochs,
                        out=path, progress=True)
        minutes = round((time.perf_counter() - t) / 60, 1)
    net = load_checkpoint(path)
    losses = net.checkpoint_extra.get("losses") or []
    if net.checkpoint_extra.get("minutes"):  # compnn train records its training minutes per epoch
        minutes = round(float(net.checkpoint_extra["minutes"][-1]), 1)
    return {"task": task, "direction": direction, "checkpoint": str(path), "epochs": len(losses),
            "final_loss": losses[-1] if losses else None, "train_minutes": minutes,
            "dataset": net.checkpoint_extra.get("dataset"), "size": net.config.get("size"),
            "ngf": net.config.get("ngf")}


def ensure_store(out: Path, model: Path, *, layers, limit=None, pairs=None) -> Path:
    from compnn_index.jobs import workflows

    if (out / "manifest.json").is_file():
        return out
    log(f"building {out} (layers {layers}, pairs {pairs}, images {limit or 400})")
    t = time.perf_counter()
    workflows.build(model=model, data=str(DATA), size=SIZE, layers=list(layers), limit=limit, out=out,
                    pairs=pairs, batch_size=4, overwrite=True, progress=False)
    log(f"built {out} in {time.perf_counter() - t:.0f}s")
    return out


def exact_method_arg(a) -> dict:
    """``exact_method=`` for evaluate when ``--exact-method`` was given, checked against what this
    version's API accepts (another may add methods: pass it through only if accepted)."""
    if a.exact_method is None:
        return {}
    from compnn_index.options import EXACT_METHODS

    if a.exact_method not in EXACT_METHODS:
        raise SystemExit(f"reproduce_papers: --exact-method {a.exact_method!r}: this version's API accepts "
                         f"{', '.join(EXACT_METHODS)}")
    return {"exact_method": a.exact_method}


def step_table1(a, res: Path) -> None:
    from compnn_index.jobs.evaluate import evaluate

    store = seg_store(a, "table1")
    t = time.perf_counter()
    evaluate(store, data=str(DATA), limit=a.images, top_k=a.top_k, search=a.table1_search,
             hpm=a.table1_search == "exact", out=res / "table1", progress=True, cache=res / "table1" / "images",
             **exact_method_arg(a))
    (res / "table1" / "minutes.txt").write_text(f"{(time.perf_counter() - t) / 60:.1f}")


#: what each step needs of the segmentation model's store: layers and activation pairs
SEG_NEEDS = {"table1": (("decoder2",), ()),
             "prediction": (("decoder2",), ("decoder4:decoder3:4", "decoder4:decoder3:2")),
             "inversion": (INV_LAYERS, ())}


def _has(store: Path, layers, pairs) -> bool:
    man = json.loads((store / "manifest.json").read_text())
    stored = {f"{e['source']}:{e['target']}:{e['k']}" for e in (man.get("predictions") or {}).values()}
    return set(layers) <= set(man.get("layers") or {}) and set(pairs) <= stored


def seg_store(a, step: str) -> Path:
    """The segmentation model's store over ``--db-images`` training images holding what ``step``
    needs (:data:`SEG_NEEDS`). ``--work``/seg is built with what every step of this run needs
    (one feature pass); a later run's step it lacks gets its own ``seg_<step>`` store, so an
    existing store is never rebuilt or half-extended."""
    layers, pairs = SEG_NEEDS[step]
    for store in (a.work / "seg", a.work / f"seg_{step}"):
        if (store / "manifest.json").is_file() and _has(store, layers, pairs):
            return store
    if (a.work / "seg" / "manifest.json").is_file():
        return ensure_store(a.work / f"seg_{step}", a.seg_model, layers=layers, limit=a.db_images,
                            pairs=list(pairs) or None)
    wanted = [SEG_NEEDS[s] for s in a.steps.split(",") if s in SEG_NEEDS] or [(layers, pairs)]
    return ensure_store(a.work / "seg", a.seg_model, layers=list(dict.fromkeys(n for w in wanted for n in w[0])),
                        limit=a.db_images, pairs=list(dict.fromkeys(q for w in wanted for q in w[1])) or None)


def step_prediction(a, res: Path) -> None:
    from compnn_index.api import CompNN
    from compnn_index.data import open_dataset
    from compnn_index.jobs.predict import figure3

    from compnn_index.jobs.image_cache import ImageCache, fingerprint

    cnn = CompNN.load(seg_store(a, "prediction"))
    ds = open_dataset(str(DATA), split="test", direction="AtoB", task="segment", size=SIZE, limit=a.ap_images)
    out = {"database_images": cnn.num_images, "test_images": [str(n) for n in ds.names][:len(ds)],
           "source": "decoder4", "target": "decoder3", "search": "exact", "per_k": {}}
    for k in (4, 2):
        # one record per image and window size: a killed run continues where it stopped
        cache = ImageCache(res / "prediction" / "images" / f"k{k}", fingerprint(
            {"model": cnn.store.manifest.get("model"), "images": cnn.num_images, "k": k, "data": str(DATA),
             "size": SIZE, "step": "prediction"}))
        per, minutes = [], 0.0
        for i in range(len(ds)):
            name = str(ds.names[i])
            rec = cache.get(name)
            figure = res / f"figure3_k{k}.png"
            if rec is None or (i == 0 and not figure.is_file()):
                t = time.perf_counter()
                r = cnn.predict_activations(ds[i].input, k=k, top_k=cnn.num_images)
                rec = {"scores": r.scores, "output_agreement": r.output_agreement, "seconds": r.timings["total"],
                       "minutes": (time.perf_counter() - t) / 60, "dims": r.geometry.dim,
                       "windows_per_image": r.geometry.grid[0] * r.geometry.grid[1]}
                if i == 0:
                    figure3(cnn, r).save(figure)
                cache.put(name, rec)
                log(f"prediction k={k} image {name}: cosine {r.scores['compnn']['cosine']:.4f} vs "
                    f"global {r.scores['global']['cosine']:.4f}")
            minutes += rec["minutes"]
            per.append({"image": name, **{key: rec[key] for key in ("scores", "output_agreement", "seconds")}})
        out["per_k"][str(k)] = {"images": per, "minutes": round(minutes, 2), "dims": rec["dims"],
                                "windows_per_image": rec["windows_per_image"],
                                "cache": {"reused": cache.hits, "computed": cache.computed}}
    tmp = res / ".prediction.json.tmp"
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, res / "prediction.json")


def step_inversion(a, res: Path) -> None:
    from compnn_index.jobs.evaluate import evaluate
    from compnn_index.jobs.inversion import train_inversion

    store = seg_store(a, "inversion")
    ckpts = []
    for layer in INV_LAYERS:
        ckpt = a.work / f"inversion_{layer}.pt"
        if not ckpt.is_file():
            log(f"training inversion {layer} for {a.inv_minutes} min")
            train_inversion(store, layer, out=ckpt, epochs=50, batch_size=4, lr=1e-3,
                            width=a.inv_width, minutes=a.inv_minutes, progress=False)
        ckpts.append(ckpt)
    evaluate(store, data=str(DATA), limit=a.inv_images, top_k=(min(16, a.db_images),), search="patchmatch",
             hpm=False, global_layers=False, inversion=ckpts, inversion_top_k=16, out=res / "inversion",
             progress=True, examples=0)


def step_table2(a, res: Path) -> None:
    from compnn_index.jobs.evaluate import evaluate

    deadline = time.time() + 60 * a.wait_l2p
    while not a.l2p_model.is_file() and time.time() < deadline:
        log(f"waiting for {a.l2p_model}")
        time.sleep(60)

    store = ensure_store(a.work / "l2p", a.l2p_model, layers=["decoder2"], limit=a.db_images)
    t = time.perf_counter()
    evaluate(store, data=str(DATA), limit=a.images, top_k=a.top_k, search=a.table2_search,
             hpm=a.table2_search == "exact", global_layers=False, out=res / "table2", progress=True,
             cache=res / "table2" / "images", **exact_method_arg(a))
    (res / "table2" / "minutes.txt").write_text(f"{(time.perf_counter() - t) / 60:.1f}")
    if a.drop_stores:
        shutil.rmtree(store, ignore_errors=True)


def main(argv=None) -> int:
    global DATA, SIZE
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=40, help="minutes of compute for everything")
    p.add_argument("--images", type=int, default=3, help="test images of Tables 1 and 2")
    p.add_argument("--ap-images", type=int, default=8, help="test images of activation prediction")
    p.add_argument("--inv-images", type=int, default=4, help="test images of the inversion comparison")
    p.add_argument("--db-images", type=int, default=100, help="training images in each store (400: all)")
    p.add_argument("--inv-minutes", type=float, default=None, help="training minutes per inversion")
    p.add_argument("--inv-width", type=int, default=64)
    p.add_argument("--table2-search", choices=["exact", "patchmatch"], default="patchmatch")
    p.add_argument("--table1-search", choices=["exact", "patchmatch"], default="exact",
                   help="exact: one top-64 exact search per query plus HyperPatch-Match rows")
    p.add_argument("--seg-model", type=Path, default=Path("/work/models/facades_seg_e3.pt"))
    p.add_argument("--l2p-model", type=Path, default=Path("/work/models/facades_l2p_e2.pt"))
    p.add_argument("--seg-log", type=Path, default=Path("/work/logs/train_seg.log"))
    p.add_argument("--l2p-log", type=Path, default=Path("/work/logs/train_l2p.log"))
    p.add_argument("--work", type=Path, default=Path("/work/stores/papers"))
    p.add_argument("--steps", default="models,prediction,inversion,table1,table2",
                   help="comma-separated steps, run in this order (default: %(default)s)")
    p.add_argument("--drop-stores", action="store_true")
    p.add_argument("--train-missing", action="store_true", help="train a missing model here")
    p.add_argument("--wait-l2p", type=float, default=45, help="minutes to wait for the l2p model")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "results")
    p.add_argument("--data", default=str(DATA), help="dataset (the Facades folder; 'synthetic' for a smoke run)")
    p.add_argument("--size", type=int, default=SIZE)
    p.add_argument("--top-k", type=lambda t: [int(v) for v in t.split(",")], default=list(TOP_K))
    p.add_argument("--exact-method", default=None,
                   help="exact search method of Tables 1 and 2 (compnn_index.options.EXACT_METHODS: auto, "
                        "bounded, fused, faiss in this version; refused when the API does not accept it). faiss: "
                        "one per-image pass over the largest top-k's shortlist serves every top-k; the others: "
                        "one search per top-k, each seeding the next (default: the API's, auto)")
    a = p.parse_args(argv)
    DATA, SIZE = a.data, a.size
    a.inv_minutes = a.inv_minutes or max(1.0, round(a.budget * 0.06, 1))
    epochs = max(1, int(a.budget // 20))  # when a model has to be trained here
    steps = a.steps.split(",")
    known = {"prediction": (step_prediction, None), "inversion": (step_inversion, "inversion/results.json"),
             "table1": (step_table1, None), "table2": (step_table2, None)}
    unknown = [s for s in steps if s not in known and s != "models"]
    if unknown:
        raise SystemExit(f"reproduce_papers: --steps {unknown[0]!r}: expected any of models, {', '.join(known)}")
    res = a.work / "results"
    res.mkdir(parents=True, exist_ok=True)
    specs = ((a.seg_model, "segment", "AtoB", a.seg_log), (a.l2p_model, "translate", "BtoA", a.l2p_log))
    if "models" in steps:  # train what is missing (otherwise reuse; the l2p model may still be training)
        for path, task, direction, lg in specs:
            if a.train_missing or path.is_file():
                ensure_model(path, task=task, direction=direction, epochs=epochs, log_path=lg)
    exact_method_arg(a)  # refuse an unknown --exact-method before any work
    # in the order --steps names them; the per-image steps always run (their cached images cost
    # nothing, new ones are computed), the inversion only while its results are missing
    for name in dict.fromkeys(s for s in steps if s in known):
        fn, marker = known[name]
        if not (marker and (res / marker).is_file()):
            t = time.perf_counter()
            log(f"step {name}")
            fn(a, res)
            log(f"step {name} done in {(time.perf_counter() - t) / 60:.1f} min")
    models = [ensure_model(path, task=task, direction=direction, epochs=epochs, log_path=lg)
              for path, task, direction, lg in specs if path.is_file()]
    (res / "models.json").write_text(json.dumps(models, indent=1))
    from papers_report import write_report

    write_report(res, a.docs, args=vars(a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
