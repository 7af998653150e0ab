"""Load test of ``compnn serve``: N concurrent clients each sending M mixed queries.

    python tools/load_test.py --url http://127.0.0.1:8000 --clients 16 --queries 10
    python tools/load_test.py --index indexes/demo --clients 16 --queries 10   # own server

The mix cycles through exact and HyperPatch-Match searches (when the server offers it), database
ids and uploaded PNGs, and two top-k values. Prints throughput, p50/p95/p99 latency per kind and
overall, and the error count. Bounded: at most clients × queries requests and a total deadline
(``--deadline``), after which unsent queries are counted as skipped. Only loopback servers are
accepted: this is a tool for one's own machine, not for loading someone else's.
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from compnn_index.service.server import is_loopback  # noqa: E402


@dataclass
class Sample:
    kind: str
    seconds: float
    status: int  # 0: transport error
    error: str = ""


def check_url(url: str) -> str:
    """The base URL without a trailing slash; refuses anything but http on a loopback address."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"load_test: expected --url http://127.0.0.1:PORT, got {url!r}")
    if not is_loopback(parts.hostname):
        raise SystemExit(f"load_test: refusing non-loopback host {parts.hostname!r}; expected "
                         "127.0.0.1, ::1 or localhost")
    return url.rstrip("/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: str, *, workers: int, threads: int | None, timeout: float) -> tuple[subprocess.Popen, str]:
    """Start ``compnn serve`` on a free loopback port in a subprocess; wait for /health."""
    port = free_port()
    cmd = [sys.executable, "-m", "compnn_index.cli", "serve", index, "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"load_test: the server exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"load_test: the server did not answer /health within {timeout} s")


def plan(info: dict, uploads: dict[int, bytes], n: int, offset: int) -> list[tuple[str, dict]]:
    """The ``n`` requests of one client: (kind, httpx kwargs), cycling through the mix."""
    searches = [s for s in ("exact", "patchmatch") if s in info["searches"]]
    ids = sorted(uploads)
    num = info["num_images"]
    out = []
    for j in range(n):
        k = offset + j
        search = searches[k % len(searches)]
        top_k = min(num, (4, 8)[(k // 2) % 2])
        image_id = ids[k % len(ids)]
        fields = {"search": search, "top_k": str(top_k)}
        if search == "patchmatch":
            fields.update(iterations="4", seed=str(k))
        if (k // len(searches)) % 2:
            kind = f"{search}/upload"
            kwargs = {"files": {"image": ("q.png", uploads[image_id], "image/png")}, "data": fields}
        else:  # multipart too (the service refuses url-encoded forms)
            kind = f"{search}/id"
            kwargs = {"files": [(k, (None, v)) for k, v in {**fields, "image_id": str(image_id)}.items()]}
        out.append((kind, kwargs))
    return out


def client_loop(url: str, requests: list, deadline: float, timeout: float, results: list, lock) -> None:
    with httpx.Client(base_url=url, timeout=timeout) as c:
        for kind, kwargs in requests:
            if time.monotonic() >= deadline:
                with lock:
                    results.append(Sample(kind, 0.0, -1, "skipped: deadline"))
                continue
            t = time.perf_counter()
            try:
                r = c.post("/v1/query", **kwargs)
                status, err = r.status_code, ("" if r.status_code == 200 else r.text[:200])
            except httpx.HTTPError as exc:
                status, err = 0, f"{type(exc).__name__}: {exc}"
            with lock:
                results.append(Sample(kind, time.perf_counter() - t, status, err))


def health_probe(url: str, stop: threading.Event, out: list[float], every: float = 0.25) -> None:
    """GET /health every ``every`` seconds while the load runs: the server must stay responsive."""
    with httpx.Client(base_url=url, timeout=30) as c:
        while not stop.wait(every):
            t = time.perf_counter()
            try:
                c.get("/health").raise_for_status()
                out.append(time.perf_counter() - t)
            except httpx.HTTPError:
                out.append(float("inf"))


def percentiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    a = np.asarray(xs)
    return {f"p{q}": float(np.percentile(a, q)) for q in (50, 95, 99)}


def run(url: str, *, clients: int, queries: int, deadline_s: float, timeout: float) -> dict:
    """Run the load and return the figures (also what ``--json`` prints)."""
    with httpx.Client(base_url=url, timeout=timeout) as c:
        info = c.get("/v1/index").json()
        ids = list(range(min(info["num_images"], 8)))
        uploads = {i: c.get(f"/v1/images/{i}", params={"kind": "input"}).content for i in ids}
    results: list[Sample] = []
    lock = threading.Lock()
    t0 = time.perf_counter()
    deadline = time.monotonic() + deadline_s
    threads = [threading.Thread(target=client_loop, args=(url, plan(info, uploads, queries, i * queries),
                                                          deadline, timeout, results, lock))
               for i in range(clients)]
    health: list[float] = []
    stop = threading.Event()
    probe = threading.Thread(target=health_probe, args=(url, stop, health))
    probe.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stop.set()
    probe.join()
    done = [r for r in results if r.status != -1]
    ok = [r for r in done if r.status == 200]
    errors = [r for r in done if r.status != 200]
    report = {
        "url": url, "clients": clients, "queries_per_client": queries, "wall_s": wall,
        "completed": len(ok), "errors": len(errors), "skipped": len(results) - len(done),
        "throughput_qps": len(ok) / wall if wall > 0 else 0.0,
        "latency_s": percentiles([r.seconds for r in ok]),
        "health_latency_s": {"n": len(health), **percentiles(health)},
        "by_kind": {k: {"n": len(v), **percentiles(v)} for k in sorted({r.kind for r in ok})
                    for v in [[r.seconds for r in ok if r.kind == k]]},
        "searches": info["searches"], "num_images": info["num_images"],
        "image_size": info["image_size"],
        "error_samples": sorted({f"{r.status} {r.error}" for r in errors})[:5],
    }
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server on loopback, e.g. http://127.0.0.1:8000")
    where.add_argument("--index", help="start `compnn serve` on this index on a free loopback port")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--queries", type=int, default=10, help="queries per client")
    p.add_argument("--deadline", type=float, default=300.0, help="total seconds before giving up")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--workers", type=int, default=2, help="server query workers (with --index)")
    p.add_argument("--threads", type=int, default=None, help="threads per query (with --index)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = p.parse_args(argv)
    if not 1 <= a.clients <= 256 or not 1 <= a.queries <= 1000:
        p.error(f"expected 1 <= --clients <= 256 and 1 <= --queries <= 1000, got {a.clients}, {a.queries}")
    proc = None
    if a.index:
        proc, url = start_server(a.index, workers=a.workers, threads=a.threads, timeout=120)
    else:
        url = check_url(a.url)
    try:
        rep = run(url, clients=a.clients, queries=a.queries, deadline_s=a.deadline, timeout=a.timeout)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    if a.json:
        print(json.dumps(rep, indent=2))
    else:
        lat = rep["latency_s"]
        print(f"{rep['clients']} clients × {rep['queries_per_client']} queries against {url} "
              f"({rep['num_images']} images of {rep['image_size'][0]}×{rep['image_size'][1]}, "
              f"searches {', '.join(rep['searches'])})")
        print(f"completed {rep['completed']}, errors {rep['errors']}, skipped {rep['skipped']} "
              f"in {rep['wall_s']:.2f} s: {rep['throughput_qps']:.2f} queries/s")
        print(f"latency p50 {lat['p50'] * 1000:.0f} ms, p95 {lat['p95'] * 1000:.0f} ms, "
              f"p99 {lat['p99'] * 1000:.0f} ms")
        h = rep["health_latency_s"]
        print(f"/health during the load: n={h['n']}, p50 {h['p50'] * 1000:.1f} ms, "
              f"p99 {h['p99'] * 1000:.1f} ms")
        for kind, s in rep["by_kind"].items():
            print(f"  {kind:18s} n={s['n']:4d}  p50 {s['p50'] * 1000:7.0f} ms  p95 {s['p95'] * 1000:7.0f} ms  "
                  f"p99 {s['p99'] * 1000:7.0f} ms")
        for e in rep["error_samples"]:
            print(f"  error: {e}")
    return 1 if rep["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
