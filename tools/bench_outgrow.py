"""Queries on a store larger than the memory they may use: a cgroup (v1) memory cap, as root.

A store of ``--images`` synthetic 128×128 images (``tools/bench_scale.py``'s model and layout;
fp16 by default: 2.6 MB per image, so 3,200 images are 8.4 GB) is queried by a child process
whose memory cgroup is capped at ``--cap-gb`` (the page cache the child faults in is charged to
it, so the store cannot stay resident: the page cache is dropped first, since pages cached
before stay charged to whoever faulted them in), and by an uncapped child. Each child runs, on the same
``--queries`` test images: top-16 exact (auto) and HyperPatch-Match, and whole-set
HyperPatch-Match (and ``--whole-exact``: whole-set exact); it reports per query the seconds, the
major page faults and the process's peak RSS (VmHWM), and a digest of every field, so the two
runs' fields can be compared.

    python tools/bench_outgrow.py --work /work/stores/scale --images 3200 --cap-gb 2 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import hashlib, json, resource, sys, time
import numpy as np
from compnn_index.api import CompNN
from compnn_index.data import open_dataset
from compnn_index.options import QueryOptions
store, queries, threads, whole_exact = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
cnn = CompNN.load(store, threads=threads)
test = open_dataset("synthetic", split="test", size=128, limit=queries, task=cnn.task)
def digest(f):
    h = hashlib.sha256()
    for a in (f.image, f.y, f.x, f.similarity):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
def hwm():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
rows = []
runs = [("exact_top16", {}, 16), ("hpm_top16", {"search": "patchmatch"}, 16),
        ("hpm_whole", {"search": "patchmatch"}, None)] + ([("exact_whole", {}, None)] if whole_exact else [])
for i in range(len(test)):
    feats = cnn.extract(test[i].input, ["decoder2"])
    for name, opts, k in runs:
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
        t = time.perf_counter()
        r = cnn.explain(feats, layer="decoder2", top_k=k or cnn.num_images, sources=(), options=QueryOptions(**opts))
        rows.append({"query": i, "run": name, "seconds": time.perf_counter() - t,
                     "major_faults": resource.getrusage(resource.RUSAGE_SELF).ru_majflt - f0,
                     "exact_method": r.params.get("exact_method"), "digest": digest(r.field), "peak_rss": hwm()})
        print("ROW", json.dumps(rows[-1]), file=sys.stderr, flush=True)  # progress: a stopped run keeps these
print(json.dumps(rows))
"""

CGROUP = Path("/sys/fs/cgroup/memory/compnn_outgrow")


def run_child(store: Path, queries: int, threads: int, whole_exact: bool, cap: int | None) -> list[dict]:
    cmd = [sys.executable, "-c", _CHILD, str(store), str(queries), str(threads), "1" if whole_exact else "0"]
    if cap:
        # pages already cached stay charged to whoever faulted them in (the build): drop them, so
        # the child faults the store in itself, charged to its capped cgroup
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        CGROUP.mkdir(exist_ok=True)
        (CGROUP / "memory.limit_in_bytes").write_text(str(cap))
        # join the cgroup before the interpreter starts: every page the child faults is charged to it
        cmd = ["sh", "-c", f'echo $$ > {CGROUP / "cgroup.procs"} && exec "$@"', "sh", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"query child failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--images", type=int, default=3200)
    p.add_argument("--codec", default="fp16")
    p.add_argument("--cap-gb", type=float, default=2.0)
    p.add_argument("--queries", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--whole-exact", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_scale import build, train_model

    model = train_model(a.work / "scale_model.pt", a.threads)
    store = a.work / f"outgrow_{a.codec}_{a.images}"
    if not (store / "manifest.json").is_file():
        print("building", store, build(model, a.images, a.codec, store, a.threads), flush=True)
    store_bytes = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    capped = run_child(store, a.queries, a.threads, a.whole_exact, int(a.cap_gb * 2**30))
    free = run_child(store, a.queries, a.threads, a.whole_exact, None)
    same = all(c["digest"] == f["digest"] for c, f in zip(capped, free))
    usage = int((CGROUP / "memory.max_usage_in_bytes").read_text()) if CGROUP.is_dir() else None
    doc = {"store": str(store), "store_bytes": store_bytes, "cap_bytes": int(a.cap_gb * 2**30),
           "cgroup_max_usage_bytes": usage,
           "fields_identical": same, "capped": capped, "uncapped": free}
    for c, f in zip(capped, free):
        print(f"query {c['query']} {c['run']:12s} capped {c['seconds']:7.2f} s ({c['major_faults']:7d} major faults, "
              f"peak RSS {c['peak_rss'] / 2**30:.2f} GiB)  uncapped {f['seconds']:7.2f} s ({f['major_faults']} faults)  "
              f"field {'same' if c['digest'] == f['digest'] else 'DIFFERENT'}", flush=True)
    print(f"store {store_bytes / 2**30:.2f} GiB under a {a.cap_gb} GiB cap (the cgroup's peak charge "
          f"{(usage or 0) / 2**30:.2f} GiB); fields identical: {same}")
    if a.json:
        a.json.write_text(json.dumps(doc, indent=1))
    try:
        CGROUP.rmdir()
    except OSError:
        pass


if __name__ == "__main__":
    main()
