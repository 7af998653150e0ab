"""Load test of ``compnn serve``: N concurrent clients each sending M mixed queries.

    python tools/load_test.py --url http://127.0.0.1:8000 --clients 16 --queries 10
    python tools/load_test.py --index indexes/demo --clients 16 --queries 10   # own server
    python tools/load_test.py --index indexes/demo --abandon 24 --slow 50      # hostile clients

Hostile modes (issue 13): ``--abandon N`` first sends N slow queries whose clients give up after
``--abandon-after`` seconds (the server must drop them, not compute them: a fresh query right
after must be about as fast as on an idle server); ``--slow N`` holds N slowloris-style
connections open throughout (half drip their headers a byte at a time, half send headers and
then a body a byte at a time; the server must close them). Reported besides: fresh-query
latency idle and after the abandoned ones, /health latency, status counts (500s separately),
how many slow connections the server closed, and the server's RssAnon before and after (with
``--index``, or ``--pid`` of a server on this machine).

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


_PROBE = r"""
import json, sys, time, httpx
url, every = sys.argv[1], float(sys.argv[2])
out = []
with httpx.Client(base_url=url, timeout=30) as c:
    import select
    while not select.select([sys.stdin], [], [], every)[0]:
        t = time.perf_counter()
        try:
            c.get("/health").raise_for_status()
            out.append(time.perf_counter() - t)
        except httpx.HTTPError:
            out.append(float("inf"))
print(json.dumps(out))
"""


class ProbeProcess:
    """:func:`health_probe` in its own process: the load's client threads share this process's
    GIL, and would otherwise be measured along with the server."""

    def __init__(self, url: str, every: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _PROBE, url, str(every)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def stop(self) -> list[float]:
        out, _ = self.proc.communicate("stop\n", timeout=60)
        return [float(x) for x in json.loads(out or "[]")]


def percentiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    a = np.asarray(xs)
    return {f"p{q}": float(np.percentile(a, q)) for q in (50, 95, 99)}


def rss_anon(pid: int | None) -> int | None:
    """RssAnon of a local process in bytes (mapped store pages do not count), or None."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def fresh_latency(url: str, n: int, timeout: float) -> list[float]:
    """Seconds of ``n`` sequential cheap queries (exact, by id, top-k 4) on a new connection each."""
    out = []
    for i in range(n):
        with httpx.Client(base_url=url, timeout=timeout) as c:
            t = time.perf_counter()
            r = c.post("/v1/query", json={"image_id": i % 4, "top_k": 4, "search": "exact"})
            out.append(time.perf_counter() - t if r.status_code == 200 else float("inf"))
    return out


def abandon(url: str, n: int, after: float, iterations: int) -> dict:
    """``n`` concurrent slow queries whose clients give up after ``after`` seconds."""
    statuses: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        body = {"image_id": i % 4, "search": "patchmatch", "iterations": iterations, "samples": 16,
                "jumps": 8, "seed": i}
        try:
            with httpx.Client(base_url=url, timeout=after) as c:
                status = str(c.post("/v1/query", json=body).status_code)
        except httpx.TimeoutException:
            status = "gave up"
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {s: statuses.count(s) for s in sorted(set(statuses))}


class SlowClients:
    """``n`` slowloris-style connections, dripped one byte per ``interval`` s by one thread.

    Even ones drip their request headers; odd ones send complete headers announcing a 1000-byte
    body, then drip the body. Counts the connections the server closed, and when.
    """

    def __init__(self, url: str, n: int, interval: float = 0.5) -> None:
        parts = urlsplit(url)
        self.addr = (parts.hostname, parts.port or 80)
        self.n, self.interval = n, interval
        self.closed_after: list[float] = []
        self.answers: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        host = f"{self.addr[0]}:{self.addr[1]}"
        socks = []
        for i in range(self.n):
            try:
                s = socket.create_connection(self.addr, timeout=5)
            except OSError:
                continue
            s.setblocking(False)
            if i % 2:
                s.sendall(f"POST /v1/query HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json"
                          f"\r\ncontent-length: 1000\r\n\r\n".encode())
                drip = b"{" + b" " * 998 + b"}"
            else:
                drip = f"POST /v1/query HTTP/1.1\r\nHost: {host}\r\nX-Slow: {'a' * 500}\r\n\r\n".encode()
            socks.append([s, drip, 0, time.monotonic()])
        while socks and not self._stop.wait(self.interval):
            for entry in list(socks):
                s, drip, pos, started = entry
                try:
                    data = s.recv(65536)
                    if data:
                        key = data[9:12].decode("latin-1", "replace")
                        self.answers[key] = self.answers.get(key, 0) + 1
                    raise ConnectionError  # answered or closed: either way the server let go
                except BlockingIOError:
                    pass
                except OSError:
                    self.closed_after.append(time.monotonic() - started)
                    socks.remove(entry)
                    s.close()
                    continue
                if pos < len(drip):
                    try:
                        s.send(drip[pos:pos + 1])
                        entry[2] = pos + 1
                    except OSError:
                        pass
        for s, *_ in socks:
            s.close()

    def start(self) -> "SlowClients":
        self._thread.start()
        return self

    def stop(self, wait: float = 40.0) -> dict:
        """Wait up to ``wait`` s for the server to close them all (its body deadline is 30 s)."""
        end = time.monotonic() + wait
        while len(self.closed_after) < self.n and self._thread.is_alive() and time.monotonic() < end:
            time.sleep(0.2)
        self._stop.set()
        self._thread.join(30)
        closed = sorted(self.closed_after)
        return {"connections": self.n, "closed_by_server": len(closed),
                "closed_within_s": round(closed[-1], 2) if closed else None,
                "answers": self.answers}


def run(url: str, *, clients: int, queries: int, deadline_s: float, timeout: float,
        abandon_n: int = 0, abandon_after: float = 1.5, abandon_iterations: int = 64,
        slow_n: int = 0, pid: int | None = None, fresh_n: int = 5) -> dict:
    """Run the load and return the figures (also what ``--json`` prints)."""
    with httpx.Client(base_url=url, timeout=timeout) as c:
        info = c.get("/v1/index").json()
        ids = list(range(min(info["num_images"], 8)))
        uploads = {i: c.get(f"/v1/images/{i}", params={"kind": "input"}).content for i in ids}
    hostile = bool(abandon_n or slow_n)
    extra: dict = {}
    if hostile:
        fresh_latency(url, 2, timeout)  # warm up
        extra["fresh_idle_s"] = fresh_latency(url, fresh_n, timeout)
        idle: list[float] = []
        with httpx.Client(base_url=url, timeout=timeout) as c:
            for _ in range(40):
                t = time.perf_counter()
                c.get("/health")
                idle.append(time.perf_counter() - t)
                time.sleep(0.02)
        extra["health_idle_latency_s"] = percentiles(idle)
        extra["rss_anon_start"] = rss_anon(pid)
    slow = SlowClients(url, slow_n).start() if slow_n else None
    health: list[float] = []
    stop = threading.Event()
    probe = threading.Thread(target=health_probe, args=(url, stop, health))
    probe_proc = ProbeProcess(url, 0.05) if hostile else None
    probe.start()
    if abandon_n:
        extra["abandoned"] = abandon(url, abandon_n, abandon_after, abandon_iterations)
        extra["fresh_after_abandon_s"] = fresh_latency(url, 1, timeout) + fresh_latency(url, fresh_n - 1, timeout)
    results: list[Sample] = []
    lock = threading.Lock()
    t0 = time.perf_counter()
    deadline = time.monotonic() + deadline_s
    threads = [threading.Thread(target=client_loop, args=(url, plan(info, uploads, queries, i * queries),
                                                          deadline, timeout, results, lock))
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if hostile:
        extra["fresh_after_load_s"] = fresh_latency(url, fresh_n, timeout)
    stop.set()
    probe.join()
    if probe_proc is not None:
        health = probe_proc.stop()  # the separate process's figures (the thread's include the clients)
    if slow is not None:
        extra["slow"] = slow.stop()
    if hostile:
        with httpx.Client(base_url=url, timeout=timeout) as c:
            h = c.get("/health").json()
        extra["server_counters"] = {k: h.get(k) for k in ("queries_completed", "queries_abandoned",
                                                           "queries_refused")}
    if hostile and pid is not None:
        time.sleep(1.0)  # the server trims its heap when it falls idle
        extra["rss_anon_after"] = rss_anon(pid)
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
        "statuses": {str(k): n for k in sorted({r.status for r in done})
                     for n in [sum(1 for r in done if r.status == k)]},
        "server_errors": sum(1 for r in done if r.status >= 500 and r.status != 503),
        **extra,
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
    p.add_argument("--abandon", type=int, default=0, metavar="N",
                   help="first send N slow queries whose clients give up (see --abandon-after)")
    p.add_argument("--abandon-after", type=float, default=1.5, help="seconds before they give up")
    p.add_argument("--abandon-iterations", type=int, default=64,
                   help="HyperPatch-Match iterations of an abandoned query (makes it slow)")
    p.add_argument("--slow", type=int, default=0, metavar="N",
                   help="hold N slowloris-style connections open during the load")
    p.add_argument("--pid", type=int, default=None, help="the server's PID, to read its RssAnon (--url)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = p.parse_args(argv)
    if not 0 <= a.abandon <= 256 or not 0 <= a.slow <= 1000:
        p.error(f"expected 0 <= --abandon <= 256 and 0 <= --slow <= 1000, got {a.abandon}, {a.slow}")
    if not 1 <= a.clients <= 256 or not 1 <= a.queries <= 1000:
        p.error(f"expected 1 <= --clients <= 256 and 1 <= --queries <= 1000, got {a.clients}, {a.queries}")
    proc = None
    if a.index:
        proc, url = start_server(a.index, workers=a.workers, threads=a.threads, timeout=120)
    else:
        url = check_url(a.url)
    try:
        rep = run(url, clients=a.clients, queries=a.queries, deadline_s=a.deadline, timeout=a.timeout,
                  abandon_n=a.abandon, abandon_after=a.abandon_after,
                  abandon_iterations=a.abandon_iterations, slow_n=a.slow,
                  pid=proc.pid if proc is not None else a.pid)
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
        print(f"statuses {rep['statuses']}, server errors (5xx but 503): {rep['server_errors']}")
        _print_hostile(rep)
    return 1 if rep["server_errors"] or (rep["errors"] and not (a.abandon or a.slow)) else 0


def _print_hostile(rep: dict) -> None:
    ms = lambda xs: ", ".join(f"{x * 1000:.0f}" for x in xs)  # noqa: E731
    if "fresh_idle_s" in rep:
        h = rep["health_idle_latency_s"]
        print(f"fresh query, idle server: {ms(rep['fresh_idle_s'])} ms; /health idle: p50 "
              f"{h['p50'] * 1000:.1f} ms, p99 {h['p99'] * 1000:.1f} ms")
    if "abandoned" in rep:
        print(f"abandoned queries: {rep['abandoned']}; fresh query right after: "
              f"{ms(rep['fresh_after_abandon_s'])} ms")
    if "server_counters" in rep:
        print(f"server counters: {rep['server_counters']}")
    if "fresh_after_load_s" in rep:
        print(f"fresh query after the load: {ms(rep['fresh_after_load_s'])} ms")
    if "slow" in rep:
        s = rep["slow"]
        print(f"slow connections: {s['closed_by_server']}/{s['connections']} closed by the server "
              f"(the last after {s['closed_within_s']} s), answers {s['answers']}")
    if rep.get("rss_anon_start"):
        a, b = rep["rss_anon_start"], rep.get("rss_anon_after") or 0
        print(f"server RssAnon: {a / 2**20:.0f} MB before, {b / 2**20:.0f} MB after "
              f"({(b - a) / 2**20:+.0f} MB)")


if __name__ == "__main__":
    sys.exit(main())
