"""Embedded vs Ray: latency, throughput and overhead of sharded queries, and build throughput.

Builds (under ``--root``, never in the repository) one Facades store four ways — unsharded in
process, and on a local Ray cluster as 1 shard (1 worker), 2 shards (2 workers) and 4 shards
(4 workers of 0.5 CPU) — then answers the same test-split queries with

- ``embedded``: the unsharded store in this process (today's default),
- ``ray-1``: the 1-shard store, one actor holding all the CPUs (the overhead of the distributed
  path itself: ``ray-1 / embedded``),
- ``ray-2`` / ``ray-4``: 2 and 4 shard actors,
- ``local-4``: the 4-shard store searched shard after shard in this process,

for exact search and HyperPatch-Match, top-16 and whole-set shortlists. Per configuration: the
median latency of ``--reps`` × ``--queries`` queries, the queries/s of two concurrent clients,
the total shard work (sum of the per-shard search seconds) and, for HyperPatch-Match, the mean
similarity of the field against the embedded one.

    python tools/bench_distributed.py --data ../shared/data/facades --size 128 --images 100 \\
        --root /work/stores/ray --out docs/bench_distributed.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchutil import dir_bytes  # noqa: E402

from compnn_index.api import CompNN  # noqa: E402
from compnn_index.data import open_dataset  # noqa: E402
from compnn_index.index import build_index  # noqa: E402
from compnn_index.index.sharded import build_sharded  # noqa: E402
from compnn_index.models import build_model, load_checkpoint, save_checkpoint  # noqa: E402
from compnn_index.options import QueryOptions  # noqa: E402


def get_model(args):
    if args.model:
        return load_checkpoint(args.model), Path(args.model)
    path = Path(args.root) / f"unet_seg_ngf{args.ngf}_{args.size}.pt"
    if not path.is_file():  # untrained: the costs (shapes) are those of a trained one
        net = build_model("unet", task="segment", out_channels=12, ngf=args.ngf, size=args.size)
        save_checkpoint(path, net, dataset={"kind": "untrained", "size": [args.size, args.size]})
    return load_checkpoint(path), path


def build_all(args, net, model_path, ds) -> dict:
    from compnn_index.distributed.ray_build import ray_runner

    root = Path(args.root)
    out = {}
    common = dict(layers=[args.layer], batch_size=4, model_path=model_path)
    plans = [("flat", None, 0, 2), ("ray1", 1, 1.0, 1), ("ray2", 2, 1.0, 1), ("ray4", 4, 0.5, 1)]
    for name, shards, cpus, threads in plans:
        path = root / f"facades{args.images}_{args.size}_{name}"
        if path.exists() and not args.rebuild:
            out[name] = {"path": str(path), "seconds": None}
            continue
        t = time.perf_counter()
        if shards is None:
            build_index(net, ds, out=path, threads=threads, overwrite=True, progress=False, **common)
        else:
            build_sharded(net, ds, shards=shards, out=path, overwrite=True, progress=False,
                          runner=ray_runner("local", shard_cpus=cpus, threads=threads, progress=False),
                          **common)
        sec = time.perf_counter() - t
        out[name] = {"path": str(path), "seconds": round(sec, 2), "images_per_s": round(len(ds) / sec, 2),
                     "workers": 1 if shards is None else shards, "threads_per_worker": threads,
                     "bytes": dir_bytes(path)}
        print(f"build {name:6s} {sec:7.1f} s  {len(ds) / sec:6.2f} img/s  {dir_bytes(path) / 1e9:.2f} GB", flush=True)
    return out


def run_config(cnn, queries, opts, reps) -> dict:
    lat, work, sims, search = [], [], [], []
    fields = []
    for _ in range(reps):
        for q in queries:
            t = time.perf_counter()
            r = cnn.explain(q, layer=None, options=opts, sources=("target",))
            lat.append(time.perf_counter() - t)
            search.append(r.timings["search"])
            work.append(sum(cnn.backend.last.get("shard_seconds", [0])))
            sims.append(float(r.field.similarity.mean()))
            fields.append(r.field)
    return {"latency_s": statistics.median(lat), "latency_all": [round(v, 4) for v in lat],
            "search_s": statistics.median(search), "shard_work_s": statistics.median(work),
            "mean_similarity": float(np.mean(sims)), "fields": fields[: len(queries)]}


def throughput(cnn, queries, opts, clients=2, rounds=2) -> float:
    """Queries/s of ``clients`` concurrent callers (CompNN replicas on one store, as the service)."""
    replicas = [cnn] + [type(cnn)(cnn.store, copy.deepcopy(cnn.model), threads=cnn.threads)
                        for _ in range(clients - 1)]
    jobs = [q for _ in range(rounds) for q in queries]
    lock = threading.Lock()

    def worker(replica):
        while True:
            with lock:
                if not jobs:
                    return
                q = jobs.pop()
            replica.explain(q, options=opts, sources=("target",))

    t = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(r,)) for r in replicas]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return rounds * len(queries) / (time.perf_counter() - t)


def paired_overhead(builds, net, queries, searches, pairs: int) -> dict:
    """Embedded vs ray-1 (one actor, all CPUs) on the same queries, alternated, so that the
    load of a shared machine hits both alike; the ratio of paired latencies, per search."""
    cpus = float(os.cpu_count())
    emb = CompNN.load(builds["flat"]["path"], model=net, threads=int(cpus))
    ray1 = CompNN.load(builds["ray1"]["path"], model=net, threads=int(cpus), cluster="local", shard_cpus=cpus)
    out = {}
    try:
        for cnn in (emb, ray1):
            cnn.explain(queries[0], options=QueryOptions(top_k=1), sources=("target",))
        for sname, opts in searches.items():
            rows = []
            for i in range(pairs):
                q = queries[i % len(queries)]
                pair = {}
                for name, cnn in (("embedded", emb), ("ray-1", ray1))[:: 1 if i % 2 == 0 else -1]:
                    t = time.perf_counter()
                    r = cnn.explain(q, options=opts, sources=("target", "input"))
                    pair[name] = {"latency": time.perf_counter() - t, **r.timings,
                                  "shard": sum(cnn.backend.last.get("shard_seconds", [0]))}
                rows.append(pair)
            ratio = [p["ray-1"]["latency"] / p["embedded"]["latency"] for p in rows]
            # what the distributed path adds, independent of how fast the shared cores were:
            # search time outside the actor's own compute, and the compose stage's row reads
            added = [(p["ray-1"]["search"] - p["ray-1"]["shard"]) + (p["ray-1"]["compose"] - p["embedded"]["compose"])
                     for p in rows]
            out[sname] = {"pairs": rows, "median_ratio": statistics.median(ratio),
                          "median_added_s": statistics.median(added),
                          "median_embedded_s": statistics.median(p["embedded"]["latency"] for p in rows),
                          "ratio_from_added": 1 + statistics.median(added) / statistics.median(
                              p["embedded"]["latency"] for p in rows)}
            print(f"paired {sname:13s} median ratio ray-1/embedded {out[sname]['median_ratio']:.3f}  "
                  f"added {out[sname]['median_added_s'] * 1000:.0f} ms  -> {out[sname]['ratio_from_added']:.3f}",
                  flush=True)
    finally:
        ray1.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--model", default=None, help="checkpoint (default: an untrained U-Net)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--layer", default="decoder2")
    p.add_argument("--queries", type=int, default=2)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--root", required=True)
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--skip-exact-whole", action="store_true")
    p.add_argument("--throughput", default="hpm/top-16",
                   help="searches whose 2-client throughput is measured (comma-separated)")
    p.add_argument("--pairs", type=int, default=0,
                   help="only the paired embedded vs ray-1 overhead run, with this many query pairs")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    args.throughput = args.throughput.split(",")

    import ray

    Path(args.root).mkdir(parents=True, exist_ok=True)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    net, model_path = get_model(args)
    ds = open_dataset(args.data, split="train", task="segment", size=args.size, limit=args.images)
    builds = build_all(args, net, model_path, ds)
    test = open_dataset(args.data, split="test", task="segment", size=args.size, limit=args.queries)
    queries = [np.asarray(test[i].input, dtype=np.float32) for i in range(len(test))]

    if args.pairs:
        searches = {"exact/top-16": QueryOptions(search="exact", top_k=min(16, args.images)),
                    "hpm/top-16": QueryOptions(search="patchmatch", top_k=min(16, args.images)),
                    "hpm/whole": QueryOptions(search="patchmatch", top_k=args.images)}
        doc = {"machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
               "paired": paired_overhead(builds, net, queries, searches, args.pairs)}
        if args.out:
            Path(args.out).write_text(json.dumps(doc, indent=1, default=float))
        ray.shutdown()
        return
    cpus = float(os.cpu_count())
    configs = {
        "embedded": dict(store="flat"),
        "ray-1": dict(store="ray1", cluster="local", shard_cpus=cpus),
        "ray-2": dict(store="ray2", cluster="local"),
        "ray-4": dict(store="ray4", cluster="local"),
        "local-4": dict(store="ray4"),
    }
    searches = {
        "exact/top-16": QueryOptions(search="exact", top_k=min(16, args.images)),
        "hpm/top-16": QueryOptions(search="patchmatch", top_k=min(16, args.images)),
        "hpm/whole": QueryOptions(search="patchmatch", top_k=args.images),
    }
    if not args.skip_exact_whole:
        searches["exact/whole"] = QueryOptions(search="exact", top_k=args.images)
    results: dict = {}
    reference: dict = {}
    for cname, conf in configs.items():
        cnn = CompNN.load(builds[conf["store"]]["path"], model=net, threads=int(cpus),
                          cluster=conf.get("cluster"), shard_cpus=conf.get("shard_cpus"))
        cnn.explain(queries[0], options=QueryOptions(top_k=1), sources=("target",))  # warm: map pages
        for sname, opts in searches.items():
            reps = 1 if sname == "exact/whole" else args.reps
            r = run_config(cnn, queries, opts, reps)
            fields = r.pop("fields")
            if cname == "embedded":
                reference[sname] = fields
            else:
                ref = reference[sname]
                r["field_equal"] = all(np.array_equal(a.image, b.image) and np.array_equal(a.similarity, b.similarity)
                                       for a, b in zip(ref, fields))
                r["below_embedded"] = float(np.mean([np.mean(b.similarity < a.similarity - 1e-6)
                                                    for a, b in zip(ref, fields)]))
            if sname in args.throughput:
                r["queries_per_s_2_clients"] = throughput(cnn, queries, opts)
            results.setdefault(sname, {})[cname] = r
            print(f"{sname:13s} {cname:9s} latency {r['latency_s']:7.3f} s  search {r['search_s']:7.3f} s  "
                  f"shard work {r['shard_work_s']:7.3f} s  mean sim {r['mean_similarity']:.4f}"
                  + (f"  equal {r.get('field_equal')}" if "field_equal" in r else ""), flush=True)
        cnn.close()
    for sname, rows in results.items():
        base = rows["embedded"]["latency_s"]
        for cname, r in rows.items():
            r["ratio_to_embedded"] = round(r["latency_s"] / base, 3)
    store = Path(builds["flat"]["path"])
    from compnn_index.index import IndexStore

    st = IndexStore.open(store)
    doc = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average": os.getloadavg()},
        "store": {"images": args.images, "size": args.size, "layer": args.layer,
                  "grid": list(st.grid(args.layer)), "dim": st.dim(args.layer), "bytes": dir_bytes(store),
                  "model": str(model_path)},
        "queries": len(queries), "reps": args.reps, "builds": builds, "results": results,
    }
    print(json.dumps({s: {c: {"latency_s": round(r["latency_s"], 3), "ratio": r["ratio_to_embedded"]}
                          for c, r in rows.items()} for s, rows in results.items()}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1, default=float))
    ray.shutdown()


if __name__ == "__main__":
    main()
