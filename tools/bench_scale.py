"""How cost grows with the database: build, bytes, memory and query latency at several sizes.

For every database size of ``--sizes`` (synthetic facades of the built-in generator, 128×128,
layer decoder2, one model for all) and every codec of ``--codecs``, a store is built in a child
process (so its peak RSS is its own) and measured:

- build images/s and peak RSS (the child's ``VmHWM``: ``ru_maxrss`` would count the RSS this
  process had when it forked the child, e.g. a mapped 8 GB store);
- store bytes per image;
- top-16 latency of exact search (``auto``: the fastest exact method the store supports) and of
  HyperPatch-Match (the query defaults), median over ``--queries`` test images, warm;
- whole-set (top-k = every image) HyperPatch-Match latency and similarity ratio against the exact
  whole-set field (``auto``), on the same queries;
- the cold first query (``python -m compnn_index.jobs.coldstart``: layer and screen evicted from
  the page cache, in a fresh process).

``--json`` writes every figure; ``--plot`` one log-log panel per figure with the fitted growth
exponent (the slope of log figure against log size) beside each curve.

    python tools/bench_scale.py --sizes 200,800,3200 --codecs fp16,sq8 --work /work/stores/scale \\
        --json docs/results/scale.json --plot docs/results/scale.png
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZE = 128
LAYER = "decoder2"

_BUILD = """
import json, resource, sys, time
from compnn_index.data import open_dataset
from compnn_index.index import build_index
from compnn_index.models import load_checkpoint
model_path, n, codec, out, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
model = load_checkpoint(model_path)
ds = open_dataset("synthetic", split="train", size={size}, limit=n, task=model.config.get("task", "segment"))
t = time.perf_counter()
build_index(model, ds, layers=["{layer}"], out=out, codec=codec, threads=threads, progress=False,
            model_path=model_path, overwrite=True)
# VmHWM: this process's own high-water mark (ru_maxrss would include the parent's RSS at fork)
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({{"seconds": time.perf_counter() - t, "peak_rss": hwm}}))
""".format(size=SIZE, layer=LAYER)


def train_model(path: Path, threads: int) -> Path:
    """The one model of every size: a photo→labels U-Net (ngf 32) trained 2 epochs on 200 images."""
    if path.is_file():
        return path
    subprocess.run([sys.executable, "-m", "compnn_index.cli", "train", "--data", "synthetic", "--size", str(SIZE),
                    "--limit", "200", "--task", "segment", "--ngf", "32", "--epochs", "2", "--batch-size", "8",
                    "--threads", str(threads), "--out", str(path)], check=True)
    return path


def build(model: Path, n: int, codec: str, out: Path, threads: int) -> dict:
    done = subprocess.run([sys.executable, "-c", _BUILD, str(model), str(n), codec, str(out), str(threads)],
                          check=True, capture_output=True, text=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    files = [f for f in out.rglob("*") if f.is_file()]
    return {"build_images_per_s": n / figures["seconds"], "build_seconds": figures["seconds"],
            "build_peak_rss": figures["peak_rss"], "store_bytes": sum(f.stat().st_size for f in files),
            "store_bytes_per_image": sum(f.stat().st_size for f in files) / n}


def build_cli(model: Path, n: int, codec: str, out: Path, threads: int, shards: int = 1,
              log: list | None = None) -> float:
    """Wall seconds of ``compnn build`` as a user runs it (``shards > 1``: on a local Ray cluster);
    ``log`` receives the lines it printed (the sharded build's phases: the cluster's start, the
    driver's fit, each shard's build, the assembly)."""
    cmd = [sys.executable, "-m", "compnn_index.cli", "build", "--model", str(model), "--data", "synthetic",
           "--size", str(SIZE), "--limit", str(n), "--layers", LAYER, "--codec", codec, "--threads", str(threads),
           "--out", str(out), "--overwrite"]
    if shards > 1:
        cmd += ["--shards", str(shards), "--ray", "local"]
    t = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if log is not None:
        log.extend(line.strip() for line in done.stdout.splitlines() if line.strip())
    return seconds


def query_figures(store: Path, queries: int, threads: int) -> dict:
    from compnn_index.api import CompNN
    from compnn_index.data import open_dataset
    from compnn_index.options import QueryOptions

    cnn = CompNN.load(store, threads=threads)
    test = open_dataset("synthetic", split="test", size=SIZE, limit=queries, task=cnn.task)
    hpm = QueryOptions(search="patchmatch")
    rows = {"exact_top16": [], "hpm_top16": [], "exact_whole": [], "hpm_whole": [], "hpm_whole_ratio": []}
    methods = set()
    feats = [cnn.extract(test[i].input, [LAYER]) for i in range(len(test))]
    cnn.explain(feats[0], layer=LAYER, top_k=16, sources=())  # warm: pages, and auto's once-per-layer pilot
    for f in feats:
        r = cnn.explain(f, layer=LAYER, top_k=16, sources=())
        rows["exact_top16"].append(r.timings["search"])
        methods.add(r.params.get("exact_method"))
        rows["hpm_top16"].append(cnn.explain(f, layer=LAYER, top_k=16, sources=(), options=hpm).timings["search"])
        ex = cnn.explain(f, layer=LAYER, top_k=cnn.num_images, sources=())
        pm = cnn.explain(f, layer=LAYER, top_k=cnn.num_images, sources=(), options=hpm)
        rows["exact_whole"].append(ex.timings["search"])
        rows["hpm_whole"].append(pm.timings["search"])
        rows["hpm_whole_ratio"].append(float(np.mean(pm.field.similarity / np.maximum(ex.field.similarity, 1e-6))))
    out = {f"{k}_seconds" if not k.endswith("ratio") else k: float(np.median(v)) for k, v in rows.items()}
    out["exact_method"] = "+".join(sorted(m for m in methods if m))
    return out


def cold(store: Path, threads: int) -> dict:
    done = subprocess.run([sys.executable, "-m", "compnn_index.jobs.coldstart", str(store), "--data", "synthetic",
                           "--threads", str(threads)], capture_output=True, text=True)
    if done.returncode != 0:
        return {"cold_error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    if doc.get("not_cold"):  # the figure would be a warm query's
        print(f"warning: {store.name}: {doc['not_cold']}: no cold figure", file=sys.stderr, flush=True)
        return {"cold_first_query_seconds": None, "cold": doc}
    return {"cold_first_query_seconds": doc.get("query_seconds"), "cold": doc}


def exponent(sizes, values) -> float | None:
    x, y = np.asarray(sizes, float), np.asarray(values, float)
    ok = np.isfinite(y) & (y > 0)
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0]) if ok.sum() >= 2 else None


FIGURES = ("build_images_per_s", "build_peak_rss", "store_bytes_per_image", "exact_top16_seconds",
           "hpm_top16_seconds", "exact_whole_seconds", "hpm_whole_seconds", "cold_first_query_seconds")


def plot(doc: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullLocator

    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5))
    for ax, name in zip(axes.ravel(), FIGURES):
        for codec, rows in doc["by_codec"].items():
            pts = [(r["images"], r.get(name)) for r in rows if r.get(name)]
            if not pts:
                continue
            n, v = zip(*pts)
            e = doc["exponents"][codec].get(name)
            ax.loglog(n, v, "o-", label=f"{codec} (exponent {e:.2f})" if e is not None else codec)
        ax.set_title(name.replace("_", " "), fontsize=10)
        ax.set_xlabel("database images")
        sizes = sorted({r["images"] for rows in doc["by_codec"].values() for r in rows})
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(n) for n in sizes])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))  # ranges within a decade keep labels
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"compnn-index: cost against database size (synthetic facades {SIZE}×{SIZE}, {LAYER})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(doc: dict) -> str:
    """The JSON's figures as the markdown tables of ``docs/results/scale.md``: one row per codec
    and size, the fitted exponents, and the targets' ratios (largest size over smallest)."""
    gb, mb = 1e9, 1e6
    out = ["| codec | images | build s (every round) | build img/s (median) | build peak RSS GB | store MB/image "
           "| exact top-16 s | HPM top-16 s | exact whole s | HPM whole s | HPM whole sim. ratio | cold first query s |",
           "|" + "---|" * 12]
    fmt = lambda v, f: "—" if v is None else format(v, f)  # noqa: E731
    for codec, rows in doc["by_codec"].items():
        for r in rows:
            every = " / ".join(f"{s:.2f}" for s in r.get("build_seconds_all", [r["build_seconds"]]))
            out.append(f"| {codec} | {r['images']} | {every} | {r['build_images_per_s']:.1f} "
                       f"| {r['build_peak_rss'] / gb:.2f} | {r['store_bytes_per_image'] / mb:.2f} "
                       f"| {fmt(r.get('exact_top16_seconds'), '.3f')} | {fmt(r.get('hpm_top16_seconds'), '.3f')} "
                       f"| {fmt(r.get('exact_whole_seconds'), '.2f')} | {fmt(r.get('hpm_whole_seconds'), '.3f')} "
                       f"| {fmt(r.get('hpm_whole_ratio'), '.4f')} | {fmt(r.get('cold_first_query_seconds'), '.3f')} |")
    codecs = list(doc["by_codec"])
    out += ["", "| figure | " + " | ".join(codecs) + " |", "|---|" + "---|" * len(codecs)]
    for f in FIGURES:
        out.append(f"| {f} | " + " | ".join(fmt(doc["exponents"][c].get(f), ".2f") for c in codecs) + " |")
    out += ["", "| target | " + " | ".join(codecs) + " |", "|---|" + "---|" * len(codecs)]

    def ratio(rows, f):
        a, b = rows[0].get(f), rows[-1].get(f)
        return None if not a or b is None else b / a

    for f, what in (("exact_top16_seconds", "exact top-16, largest / smallest (≤ 1.3)"),
                    ("hpm_top16_seconds", "HPM top-16, largest / smallest (≤ 1.3)"),
                    ("hpm_whole_seconds", "HPM whole set, largest / smallest (≤ 4)")):
        out.append(f"| {what} | " + " | ".join(fmt(ratio(doc['by_codec'][c], f), '.2f') + "×" for c in codecs) + " |")
    out.append("| HPM whole-set sim. ratio at the largest size (≥ 0.97) | "
               + " | ".join(fmt(doc["by_codec"][c][-1].get("hpm_whole_ratio"), ".4f") for c in codecs) + " |")
    spread = doc.get("build_throughput_spread", {})
    out.append("| build img/s, fastest size over slowest (within 15%) | "
               + " | ".join(fmt(100 * spread[c], "+.1f") + "%" if c in spread else "—" for c in codecs) + " |")
    if doc.get("sharded"):
        sh = doc["sharded"]
        out.append(f"| 4-shard Ray build of {sh['images']} ({sh['codec']}) vs one process (≥ 1.0×) | "
                   + " | ".join([f"{sh['ray4_speed_vs_single']:.2f}×"] + ["—"] * (len(codecs) - 1)) + " |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[200, 800, 3200])
    p.add_argument("--codecs", type=lambda s: s.split(","), default=["fp16", "sq8"])
    p.add_argument("--work", type=Path, default=None, help="folder for the model and the stores (required to measure)")
    p.add_argument("--model", type=Path, default=None, help="checkpoint (default: trained here, once)")
    p.add_argument("--queries", type=int, default=2)
    p.add_argument("--build-repeats", type=int, default=1, metavar="R",
                   help="build every store R times and report the median build time (a 200-image build "
                        "takes ~8 s, where run-to-run noise is ±1 s). The repeats run in rounds over every "
                        "codec and size (200, 800, 3200, 200, ...), so a host that drifts slower or faster "
                        "moves every size alike instead of the sizes built last; the last round is queried")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--keep", action="store_true", help="keep the stores (default: delete each after measuring)")
    p.add_argument("--no-cold", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--replot", type=Path, default=None, help="only draw --plot from this JSON")
    p.add_argument("--table", type=Path, default=None, help="only print this JSON's figures as markdown tables")
    p.add_argument("--sharded", type=int, default=None, metavar="N",
                   help="only compare `compnn build` of N images in one process and as 4 shards on a local Ray "
                        "cluster (first codec of --codecs), writing the figures under 'sharded' in --json")
    a = p.parse_args()
    if a.table:
        return print(table(json.loads(a.table.read_text())))
    if a.replot:
        return plot(json.loads(a.replot.read_text()), a.plot)
    if a.work is None:
        p.error("--work is required to measure (only --table and --replot go without it)")
    if a.sharded:
        a.work.mkdir(parents=True, exist_ok=True)
        model = a.model or train_model(a.work / "scale_model.pt", a.threads)
        codec = a.codecs[0]
        single = build_cli(model, a.sharded, codec, a.work / "sharded_single", a.threads)
        phases: list[str] = []
        ray4 = build_cli(model, a.sharded, codec, a.work / "sharded_ray4", a.threads, shards=4, log=phases)
        row = {"images": a.sharded, "codec": codec, "single_seconds": single, "ray4_seconds": ray4,
               "ray4_speed_vs_single": single / ray4, "ray4_log": phases}
        print(json.dumps(row))
        if a.json:
            doc = json.loads(a.json.read_text()) if a.json.is_file() else {}
            doc["sharded"] = row
            a.json.write_text(json.dumps(doc, indent=1))
        for name in ("sharded_single", "sharded_ray4"):
            shutil.rmtree(a.work / name, ignore_errors=True)
        return None

    a.work.mkdir(parents=True, exist_ok=True)
    model = a.model or train_model(a.work / "scale_model.pt", a.threads)
    doc = {"size": SIZE, "layer": LAYER, "model": str(model), "threads": a.threads, "queries": a.queries,
           "build_repeats": a.build_repeats, "by_codec": {}, "exponents": {}}
    if a.json and a.json.is_file():  # keep what other modes wrote there (--sharded's figures)
        doc.update({k: v for k, v in json.loads(a.json.read_text()).items() if k not in doc})
    # builds first, in rounds over every codec and size (see --build-repeats), every store kept
    # until it is queried
    builds: dict[tuple[str, int], list[dict]] = {}
    for r in range(max(1, a.build_repeats)):
        for codec in a.codecs:
            for n in a.sizes:
                b = build(model, n, codec, a.work / f"scale_{codec}_{n}", a.threads)
                builds.setdefault((codec, n), []).append(b)
                print(f"build round {r + 1}: {codec} {n} images {b['build_seconds']:.2f} s "
                      f"({b['build_images_per_s']:.1f} images/s)", flush=True)
    for codec in a.codecs:
        rows = doc["by_codec"].setdefault(codec, [])
        for n in a.sizes:
            store = a.work / f"scale_{codec}_{n}"
            t = time.perf_counter()
            done = builds[(codec, n)]
            seconds = [b["build_seconds"] for b in done]
            row = {"images": n, **done[-1], "build_seconds": float(np.median(seconds)),
                   "build_images_per_s": n / float(np.median(seconds)), "build_seconds_all": seconds,
                   "build_peak_rss": max(b["build_peak_rss"] for b in done)}
            # cold first: nothing maps the store yet (a page mapped by any process, this one
            # included, cannot be evicted, and the query's store lives in reference cycles until
            # the collector runs)
            if not a.no_cold:
                row.update(cold(store, a.threads))
            row.update(query_figures(store, a.queries, a.threads))
            gc.collect()
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "cold"}),
                  f"(queries {time.perf_counter() - t:.0f} s)", flush=True)
            if not a.keep:
                shutil.rmtree(store)
            if a.json:  # after every store: a stopped run keeps what it measured
                doc["exponents"] = {c: {f: exponent([r["images"] for r in rs], [r.get(f) for r in rs]) for f in FIGURES}
                                    for c, rs in doc["by_codec"].items()}
                tmp = a.json.with_suffix(".tmp")
                tmp.write_text(json.dumps(doc, indent=1))
                os.replace(tmp, a.json)
    doc["build_throughput_spread"] = {
        c: (max(r["build_images_per_s"] for r in rs) / min(r["build_images_per_s"] for r in rs) - 1)
        for c, rs in doc["by_codec"].items() if rs}
    doc["exponents"] = {c: {f: exponent([r["images"] for r in rs], [r.get(f) for r in rs]) for f in FIGURES}
                        for c, rs in doc["by_codec"].items()}
    for codec, ex in doc["exponents"].items():
        print(codec, {k: (round(v, 2) if v is not None else None) for k, v in ex.items()})
    for codec, spread in doc["build_throughput_spread"].items():
        print(f"{codec}: build images/s, fastest size over slowest: +{100 * spread:.1f}% (target: within 15%)")
    if a.json:
        a.json.write_text(json.dumps(doc, indent=1))
    if a.plot:
        plot(doc, a.plot)


if __name__ == "__main__":
    main()
