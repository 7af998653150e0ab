"""A shard actor killed while `compnn serve --ray ADDRESS` answers concurrent clients (issue 23).

What it does, in order:

1. a two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``, ``--node-cpus`` CPUs
   per node, 1 by default);
2. ``compnn serve STORE --ray <the cluster's address>`` in its own process: one actor per shard,
   spread over both nodes;
3. a reference pass: every query once, one at a time, before anything is killed;
4. ``--clients`` threads each send ``--queries`` queries (``POST /v1/query`` by database id,
   ``keep_self=false``) with a client timeout of ``--timeout`` seconds; once ``--kill-at`` of
   the requests have been answered, shard ``--shard``'s actor is killed (``--kill ray``:
   ``ray.kill`` on its handle, found by name from this second driver; ``--kill process``:
   SIGKILL to its worker process) and the time until it answers again is measured;
5. figures: requests, successes (and whether each equals the reference answer), 503s (with
   their messages), other errors, latency (max, p50, p95), the kill time, the restart time.

The store is built here (4 shards, in process) unless ``--store`` names one; the model is
trained here (a tiny U-Net on synthetic facades) unless ``--model`` names one. Prints the JSON
document and writes it to ``--json``. Exit status 0 when every request got an answer within the
timeout that was either a success with the reference answer or a 503 naming the shard.

    python tools/bench_failover.py --work /tmp/failover --json docs/results/failover.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def compnn(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "compnn_index.cli", *args], check=True, capture_output=True, text=True)


def prepare(a) -> Path:
    """The sharded store to serve (built here when --store is not given)."""
    if a.store:
        return a.store
    a.work.mkdir(parents=True, exist_ok=True)
    model = a.model or a.work / "failover_model.pt"
    if not model.is_file():
        compnn("train", "--data", "synthetic", "--size", str(a.size), "--limit", str(a.images), "--task", "segment",
               "--ngf", "8", "--epochs", "1", "--batch-size", "4", "--threads", "1", "--out", str(model))
    store = a.work / f"store{a.shards}"
    if not (store / "manifest.json").is_file():
        compnn("build", "--model", str(model), "--data", "synthetic", "--size", str(a.size), "--limit",
               str(a.images), "--layers", "decoder2", "--threads", "1", "--shards", str(a.shards),
               "--out", str(store), "--overwrite")
    return store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digest(doc: dict) -> str:
    """What must not change across the restart: the NN field's ids and positions."""
    f = doc["nn_field"]
    return hashlib.sha256(json.dumps([f["image"], f["y"], f["x"]]).encode()).hexdigest()[:16]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"compnn serve exited with {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"compnn serve did not answer /health within {timeout:.0f} s")


def find_actor(ray, shard: int):
    """The handle of shard ``shard``'s actor, looked up by name from this (second) driver."""
    prefix = f"compnn-shard-{shard:03d}-"
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["name"].startswith(prefix):
            return ray.get_actor(entry["name"], namespace=entry["namespace"]), entry["name"]
    raise SystemExit(f"no actor named {prefix}* on the cluster")


def percentile(values, q) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/compnn-failover"), help="folder for model and store")
    p.add_argument("--store", type=Path, default=None, help="a sharded store to serve (default: built in --work)")
    p.add_argument("--model", type=Path, default=None, help="checkpoint for the store built here")
    p.add_argument("--images", type=int, default=32, help="images of the store built here")
    p.add_argument("--size", type=int, default=64, help="image size of the store built here")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--node-cpus", type=float, default=1.0, help="CPUs of each of the two Ray nodes")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--queries", type=int, default=10, help="queries per client")
    p.add_argument("--search", default="patchmatch", choices=("patchmatch", "exact"))
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--shard", type=int, default=1, help="the shard whose actor is killed")
    p.add_argument("--kill", default="ray", choices=("ray", "process"),
                   help="ray.kill on the actor's handle, or SIGKILL to its worker process")
    p.add_argument("--kill-at", type=float, default=0.25, help="fraction of requests answered before the kill")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="client timeout per request, seconds: a request without an answer by then hung")
    p.add_argument("--workers", type=int, default=2, help="compnn serve --workers")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()

    import httpx
    import ray
    from ray.cluster_utils import Cluster

    store = prepare(a)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": a.node_cpus})
    cluster.add_node(num_cpus=a.node_cpus)
    server = None
    try:
        cluster.wait_for_nodes()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        server = subprocess.Popen(
            [sys.executable, "-m", "compnn_index.cli", "serve", str(store), "--ray", cluster.address, "--port",
             str(port), "--workers", str(a.workers), "--threads", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])))
        wait_ready(url, server, timeout=300)
        startup = time.monotonic() - t0
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        actor, name = find_actor(ray, a.shard)
        before = ray.get(actor.describe.remote(), timeout=60)

        index = httpx.get(url + "/v1/index", timeout=30).json()
        n = int(index["num_images"])
        body = lambda i: {"image_id": int(i), "search": a.search, "top_k": min(a.top_k, n - 1), "keep_self": False,
                          "sources": ["target"]}
        ids = [(c * a.queries + j) % n for c in range(a.clients) for j in range(a.queries)]
        reference = {}
        with httpx.Client(base_url=url, timeout=a.timeout) as client:
            for i in sorted(set(ids)):
                r = client.post("/v1/query", json=body(i))
                if r.status_code != 200:
                    raise SystemExit(f"reference query {i}: HTTP {r.status_code} {r.text[:500]}")
                reference[i] = digest(r.json())

        total = len(ids)
        answered = [0]
        lock = threading.Lock()
        kill_now = threading.Event()
        records: list[dict] = []
        start = time.monotonic()

        def client_loop(c: int) -> None:
            with httpx.Client(base_url=url, timeout=a.timeout) as client:
                for j in range(a.queries):
                    i = ids[c * a.queries + j]
                    t = time.monotonic()
                    rec = {"client": c, "image_id": i, "start": t - start}
                    try:
                        r = client.post("/v1/query", json=body(i))
                        rec["status"] = r.status_code
                        if r.status_code == 200:
                            rec["same_answer"] = digest(r.json()) == reference[i]
                        else:
                            try:
                                rec["error"] = r.json().get("error")
                            except ValueError:
                                rec["error"] = r.text[:300]
                    except httpx.TimeoutException:
                        rec["status"], rec["error"] = "timeout", f"no answer within {a.timeout:g} s"
                    except httpx.HTTPError as exc:
                        rec["status"], rec["error"] = "transport", f"{type(exc).__name__}: {exc}"
                    rec["seconds"] = time.monotonic() - t
                    rec["end"] = time.monotonic() - start
                    with lock:
                        records.append(rec)
                        answered[0] += 1
                        if answered[0] >= a.kill_at * total:
                            kill_now.set()

        kill = {}

        def killer() -> None:
            kill_now.wait()
            kill["at_s"] = time.monotonic() - start
            if a.kill == "ray":
                ray.kill(actor, no_restart=False)  # Ray restarts it (max_restarts)
            else:
                os.kill(int(before["pid"]), signal.SIGKILL)
            t = time.monotonic()
            while time.monotonic() - t < a.timeout:
                try:
                    after = ray.get(actor.describe.remote(), timeout=5)
                    if after["pid"] != before["pid"]:
                        kill["restart_s"] = time.monotonic() - t
                        kill["new_pid"], kill["new_node"] = after["pid"], after["node"]
                        return
                except (ray.exceptions.RayError, TimeoutError):
                    pass
                time.sleep(0.1)
            kill["restart_s"] = None

        threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(a.clients)]
        kt = threading.Thread(target=killer, daemon=True)
        kt.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        kt.join(timeout=a.timeout)
        wall = time.monotonic() - start
        latencies = [r["seconds"] for r in records]
        ok = [r for r in records if r["status"] == 200]
        busy = [r for r in records if r["status"] == 503]
        other = [r for r in records if r["status"] not in (200, 503)]
        at = kill.get("at_s")
        in_flight = [r for r in records if at is not None and r["start"] <= at <= r["end"]]
        doc = {
            "store": str(store), "shards": a.shards, "images": n, "nodes": 2, "node_cpus": a.node_cpus,
            "search": a.search, "top_k": min(a.top_k, n - 1), "clients": a.clients, "queries_per_client": a.queries,
            "workers": a.workers, "client_timeout_s": a.timeout, "kill": a.kill, "killed_actor": name,
            "killed_pid": before["pid"], "killed_node": before["node"], "server_startup_s": round(startup, 2),
            "requests": len(records), "successes": len(ok),
            "successes_same_answer": sum(bool(r.get("same_answer")) for r in ok),
            "wrong_answers": sum(not r.get("same_answer") for r in ok),
            "status_503": len(busy), "messages_503": sorted({str(r.get("error"))[:300] for r in busy}),
            "other_errors": len(other), "other_error_examples": [
                {k: r.get(k) for k in ("status", "error", "seconds")} for r in other[:5]],
            "timeouts": sum(r["status"] == "timeout" for r in records),
            "in_flight_at_kill": len(in_flight),
            "in_flight_at_kill_succeeded_same": sum(r["status"] == 200 and bool(r.get("same_answer"))
                                                    for r in in_flight),
            "latency_max_s": max(latencies) if latencies else None, "latency_p50_s": percentile(latencies, 50),
            "latency_p95_s": percentile(latencies, 95), "wall_s": round(wall, 2),
            "kill_at_s": None if at is None else round(at, 3),
            "restart_s": None if kill.get("restart_s") is None else round(kill["restart_s"], 3),
            "restarted_pid": kill.get("new_pid"), "restarted_node": kill.get("new_node"),
        }
        doc["passed"] = bool(len(records) == len(ids) and not other and not doc["wrong_answers"]
                             and all("shard" in str(r.get("error")) for r in busy) and at is not None)
        text = json.dumps(doc, indent=1)
        print(text)
        if a.json:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(text + "\n")
        return 0 if doc["passed"] else 1
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
