"""Fault suite of issue 13: each numbered defect of the hostile-client review, replayed.

Every test here failed before the hardening and passes now (the docstring names the defect).
The index is the session's tiny translation store (``translate_index`` in conftest); tests that
damage a store damage a copy. Servers are real (uvicorn on a loopback port, in a thread) with
short timeouts so the slow-client cases finish in seconds; raw sockets send what httpx would not.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from compnn_index import checks
from compnn_index.api import CompNN
from compnn_index.cli import build_parser, main
from compnn_index.errors import IndexStoreError, QueryError
from compnn_index.index import IndexStore, integrity
from compnn_index.index.flatfile import HEADER_BYTES
from compnn_index.options import QueryOptions
from compnn_index.service.background import BackgroundServer
from compnn_index.service.params import Fields, HTTPProblem, parse_query
from compnn_index.service.server import create_app

from conftest import TINY_IMAGES, TINY_LAYERS, TINY_SIZE

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- helpers
def run_cli(capsys, *argv) -> tuple[int, str]:
    """``compnn ARGV`` in-process: (exit status, stderr); argparse exits are caught."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, command: str, match: str) -> None:
    """Exit status 2 and exactly one line ``compnn CMD: error: ...`` containing ``match``."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"compnn {command}: error: ") and match in lines[0], lines[0]


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def raw_png(width: int, height: int, *, bits: int = 8, channels: int = 3, pixels: bool = True) -> bytes:
    """A PNG written by hand: any declared size and bit depth (no pixel data if ``pixels`` is False)."""
    colour = {1: 0, 3: 2, 4: 6}[channels]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bits, colour, 0, 0, 0))
    if pixels:
        row = bytes(width * channels * bits // 8)
        out += chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + row for _ in range(height))))
    return out + chunk(b"IEND", b"")


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_manifest(store: Path, change) -> None:
    path = store / "manifest.json"
    man = json.loads(path.read_text())
    change(man)
    path.write_text(json.dumps(man))


def poison(file: Path, value: float = float("nan")) -> None:
    """Overwrite every vector of a flat index file with ``value`` (the header is kept)."""
    data = bytearray(file.read_bytes())
    n = (len(data) - HEADER_BYTES) // 4
    data[HEADER_BYTES:] = np.full(n, value, dtype=np.float32).tobytes()
    file.write_bytes(bytes(data))


def recv_all(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends until it closes (or ``timeout`` passes)."""
    sock.settimeout(timeout)
    out = b""
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return out


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


def json_body(raw: bytes) -> dict:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


def assert_error(resp: httpx.Response, status: int, match: str = "") -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and match in body["error"], body
    return body


@pytest.fixture(scope="module")
def index_dir(translate_index) -> Path:
    return translate_index.index


@pytest.fixture(scope="module")
def cnn(index_dir) -> CompNN:
    return CompNN.load(index_dir, threads=1)


@pytest.fixture(scope="module")
def server(index_dir, cnn):
    """Short limits: 256 KiB bodies within 1.5 s, headers within 1 s."""
    app = create_app(index_dir, workers=2, threads=1, cache_size=4, max_upload_bytes=256 * 1024,
                     body_timeout=1.5, cnn=cnn)
    with BackgroundServer(app, header_timeout=1.0, keep_alive=2) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    # No kept-alive connections: the server closes idle ones after 2 s, and a request racing
    # that close on a loaded machine would see a reset that says nothing about the code.
    with httpx.Client(base_url=server.url, timeout=30,
                      limits=httpx.Limits(max_keepalive_connections=0)) as c:
        yield c


# ---------------------------------------------------------------------------- 1: bounds
@pytest.mark.parametrize("argv,match", [
    (["build", "--model", "m.pt", "--data", "synthetic", "--out", "o", "--threads", "100000"],
     f"Expected 1 <= --threads <= {checks.MAX_THREADS}, but --threads = 100000"),
    (["query", "S", "3", "--top-k", "2", "--threads", "100000", "--out", "r"],
     f"Expected 1 <= --threads <= {checks.MAX_THREADS}, but --threads = 100000"),
    (["query", "S", "3", "--iterations", "1000000000", "--out", "r"],
     "Expected 0 <= --iterations <= 256, but --iterations = 1000000000"),
    (["query", "S", "3", "--threads", "-4", "--out", "r"], "but --threads = -4"),
    (["serve", "S", "--port", "-1"], "Expected 0 <= --port <= 65535, but --port = -1"),
    (["serve", "S", "--port", "70000"], "Expected 0 <= --port <= 65535, but --port = 70000"),
    (["serve", "S", "--workers", "0"], "but --workers = 0"),
])
def test_defect1_10_cli_bounds_exit_2_with_one_line(capsys, argv, match):
    """Defects 1 and 10: 100,000 threads segfaulted, 10⁹ iterations ran for minutes, a negative
    thread count, port or zero workers raised tracebacks."""
    code, err = run_cli(capsys, *argv)
    assert_one_line(code, err, argv[0], match)


@pytest.mark.parametrize("name", sorted(set(checks.QUERY_INT_BOUNDS) - {"seed_images"}))
def test_defect1_query_bounds_are_identical_on_cli_api_and_http(name):
    """Defect 1: HTTP capped iterations at 64 while the library allowed 256 and the CLI any
    value. One table (checks.QUERY_INT_BOUNDS) now bounds every surface."""
    low, high = checks.QUERY_INT_BOUNDS[name]
    parser = build_parser()

    def cli(v):
        try:
            return getattr(parser.parse_args(["query", "S", "1", f"--{name}", str(v), "--out", "o"]), name)
        except SystemExit:
            return None

    def api(v):
        try:
            return getattr(QueryOptions(**{name: v}), name)
        except QueryError:
            return None

    def http(v):
        try:
            p = parse_query(Fields(values={"image_id": 1, name: v}), layers=list(TINY_LAYERS),
                            num_images=TINY_IMAGES)
            return getattr(p.options, name)
        except HTTPProblem as exc:
            assert exc.status == 422
            return None

    for v, ok in ((low, True), (high, True), (low - 1, False), (high + 1, False)):
        got = [cli(v), api(v), http(v)]
        assert got == ([v] * 3 if ok else [None] * 3), (name, v, got)


def test_defect1_top_k_is_bounded_by_the_image_count(client):
    assert client.post("/v1/query", json={"image_id": 1, "top_k": TINY_IMAGES}).status_code == 200
    assert_error(client.post("/v1/query", json={"image_id": 1, "top_k": TINY_IMAGES + 1}), 422,
                 f"Expected 1 <= top_k <= {TINY_IMAGES}")


# ---------------------------------------------------------------------------- 2: integers
@pytest.mark.parametrize("text", ["²", "+-3", "--3", "٣", "1.5", " 3", "0x10", "1e3", "9" * 41])
def test_defect2_integer_junk_is_a_422_on_every_field(client, text):
    """Defect 2: str.isdigit let "²" through, int() raised, the service answered 500."""
    for body in ({"image_id": text}, {"image_id": 1, "top_k": text}, {"image_id": 1, "seed": text},
                 {"image_id": 1, "iterations": text}, {"image_id": 1, "restrict": [text, 1]}):
        r = client.post("/v1/query", json=body)
        assert r.status_code in (400, 422), (body, r.status_code, r.text)
        assert "error" in r.json()
    r = client.post("/v1/correspond", json={"image_a_id": text, "image_b_id": 1})
    assert_error(r, 422, "Expected image_a_id to be an integer")


def test_defect2_cli_restrict_dashes_is_one_line(capsys, index_dir, tmp_path):
    code, err = run_cli(capsys, "query", index_dir, "3", "--restrict=--1", "--out", tmp_path / "q")
    assert_one_line(code, err, "query", "no database image named '--1'")


# ---------------------------------------------------------------------------- 3: the queue
class _Gated(CompNN):
    """Queries block until ``gate`` is set; ``calls`` counts queries actually computed."""

    gate = threading.Event()
    entered = threading.Event()
    calls = 0

    def query(self, image, **kwargs):
        type(self).calls += 1
        type(self).entered.set()
        assert type(self).gate.wait(30)
        return super().query(image, **kwargs)


@pytest.fixture()
def gated(cnn):
    _Gated.gate.clear()
    _Gated.entered.clear()
    _Gated.calls = 0
    yield _Gated(cnn.store, cnn.model, threads=1)
    _Gated.gate.set()


def _post_raw(server, body: dict) -> socket.socket:
    """Send a JSON query on a raw socket and return it (the caller reads or abandons it)."""
    data = json.dumps(body).encode()
    s = connect(server)
    s.sendall(b"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
              + f"connection: close\r\ncontent-length: {len(data)}\r\n\r\n".encode() + data)
    return s


def _wait(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_defect3_queue_is_bounded_with_503_and_retry_after(index_dir, gated):
    """Defect 3: the queue was unbounded (40 uploads queued, 1.7 GB)."""
    app = create_app(index_dir, workers=1, threads=1, max_queue=2, cnn=gated)
    pool = app.state.pool
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        first = _post_raw(srv, {"image_id": 0, "top_k": 2})
        assert _Gated.entered.wait(10)
        waiting = [_post_raw(srv, {"image_id": i, "top_k": 2}) for i in (1, 2)]
        assert _wait(lambda: pool.admitted == 3)
        r = c.post("/v1/query", json={"image_id": 3, "top_k": 2})
        assert_error(r, 503, "The server is busy: 1 queries computing and 2 waiting")
        assert r.headers["retry-after"] == "1"
        assert c.get("/health").json()["queries_waiting"] == 2
        _Gated.gate.set()
        for s in [first, *waiting]:
            assert status_of(recv_all(s, 10)[:12]) == 200
            s.close()


def test_defect3_abandoned_queries_are_never_computed(index_dir, gated):
    """Defect 3: 24 queries whose clients gave up were all still computed; a fresh query then
    waited 12.6 s. Now a waiting query whose client disconnects is dropped."""
    app = create_app(index_dir, workers=1, threads=1, cnn=gated)
    pool = app.state.pool
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        first = _post_raw(srv, {"image_id": 0, "top_k": 2})
        assert _Gated.entered.wait(10)
        gone = [_post_raw(srv, {"image_id": i % TINY_IMAGES, "top_k": 2}) for i in range(8)]
        assert _wait(lambda: pool.admitted == 9)
        for s in gone:
            s.close()  # the clients give up
        assert _wait(lambda: pool.admitted == 1), pool.admitted
        assert pool.abandoned == 8
        _Gated.gate.set()
        assert status_of(recv_all(first, 10)[:12]) == 200
        t = time.perf_counter()
        assert c.post("/v1/query", json={"image_id": 5, "top_k": 2}).status_code == 200
        assert time.perf_counter() - t < 5
        assert _Gated.calls == 2  # the first and the fresh one; none of the abandoned
        first.close()


def test_defect3_queued_query_has_a_deadline(index_dir, gated):
    app = create_app(index_dir, workers=1, threads=1, queue_timeout=0.5, cnn=gated)
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        first = _post_raw(srv, {"image_id": 0, "top_k": 2})
        assert _Gated.entered.wait(10)
        t = time.perf_counter()
        r = c.post("/v1/query", json={"image_id": 1, "top_k": 2})
        assert 0.4 < time.perf_counter() - t < 5
        assert_error(r, 503, "waited 0.5 s for a free worker")
        assert r.headers["retry-after"]
        _Gated.gate.set()
        assert status_of(recv_all(first, 10)[:12]) == 200
        first.close()
        assert _Gated.calls == 1


# ---------------------------------------------------------------------------- 4: nesting
@pytest.mark.parametrize("body", [
    b"[" * 100000,
    b'{"image_id": 1, "restrict": ' + b"[" * 5000 + b"1" + b"]" * 5000 + b"}",
    b'{"image_id": 1, "restrict": ' + b"[" * 34 + b"1" + b"]" * 34 + b"}",  # just past the limit
    b'{"image_id": 1, "restrict": {"a": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}}",
])
def test_defect4_deep_json_is_a_422_not_a_500(client, body):
    """Defect 4: ``[`` × 100000 (or deep nesting in restrict) → 500 RecursionError."""
    r = client.post("/v1/query", content=body, headers={"content-type": "application/json"})
    assert_error(r, 422, "nested")
    assert client.get("/health").status_code == 200


def test_defect4_deep_manifest_is_a_clear_refusal(capsys, index_dir, tmp_path):
    store = copy_store(index_dir, tmp_path / "deep")
    text = (store / "manifest.json").read_text()
    (store / "manifest.json").write_text(text.replace('"dataset": {', '"dataset": {"x": ' + "[" * 50000 + "]" * 50000 + ", ", 1))
    with pytest.raises(IndexStoreError, match="nested more than 32 levels deep"):
        IndexStore.open(store)
    code, err = run_cli(capsys, "query", store, "1", "--out", tmp_path / "q")
    assert_one_line(code, err, "query", "manifest.json' is nested more than 32 levels deep")


# ---------------------------------------------------------------------------- 5: event loop
def test_defect5_large_bodies_do_not_stall_health(index_dir, cnn):
    """Defect 5: an 8 MiB ``"restrict": "1,1,…"`` took 11.7 s and stalled /health 3.45 s."""
    app = create_app(index_dir, workers=1, threads=1, max_upload_bytes=9 * 1024 * 1024, cnn=cnn)
    big_string = json.dumps({"image_id": 1, "restrict": "1," * (4 * 1024 * 1024)}).encode()
    big_list = json.dumps({"image_id": 1, "restrict": [1] * (2 * 1024 * 1024)}).encode()
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        worst, stop = [0.0], threading.Event()

        def probe():
            with httpx.Client(base_url=srv.url, timeout=30) as h:
                while not stop.is_set():
                    t = time.perf_counter()
                    h.get("/health").raise_for_status()
                    worst[0] = max(worst[0], time.perf_counter() - t)
                    time.sleep(0.02)

        th = threading.Thread(target=probe)
        th.start()
        try:
            for body in (big_string, big_list, big_string):
                t = time.perf_counter()
                r = c.post("/v1/query", content=body, headers={"content-type": "application/json"})
                assert time.perf_counter() - t < 5
                assert_error(r, 422, f"at most {checks.MAX_RESTRICT} restrict entries")
        finally:
            stop.set()
            th.join()
    assert worst[0] < 0.5, worst[0]


# ---------------------------------------------------------------------------- 6: host, origin
@pytest.mark.parametrize("host,ok", [
    ("evil.example.com", False), ("evil.example.com:8000", False), ("127.0.0.1.nip.io", False),
    ("localhost", True), ("LOCALHOST:1234", True), ("127.0.0.1", True), ("127.3.4.5:80", True),
    ("[::1]:8000", True),
])
def test_defect6_host_allow_list(client, host, ok):
    """Defect 6: ``Host: evil.example.com`` got 200 on /v1/index (DNS rebinding)."""
    r = client.get("/v1/index", headers={"host": host})
    if ok:
        assert r.status_code == 200
    else:
        assert_error(r, 400, f"Host {host!r} is not served here")
    r = client.post("/v1/query", json={"image_id": 1, "top_k": 1}, headers={"host": host})
    assert r.status_code == (200 if ok else 400)


@pytest.mark.parametrize("headers,status", [
    ({"origin": "http://evil.example"}, 403),
    ({"origin": "null"}, 403),
    ({"sec-fetch-site": "cross-site"}, 403),
    ({"sec-fetch-site": "same-site"}, 403),
    ({"sec-fetch-site": "same-origin"}, 200),
    ({"sec-fetch-site": "none"}, 200),
    ({}, 200),
])
def test_defect6_cross_origin_posts_are_refused(client, server, headers, status):
    r = client.post("/v1/query", json={"image_id": 1, "top_k": 1}, headers=headers)
    assert r.status_code == status, r.text
    if status == 403:
        assert "Cross-origin POST refused" in r.json()["error"]
    # the viewer's own origin (the Host it was loaded from) may post
    own = {"origin": server.url, "sec-fetch-site": "same-origin"}
    assert client.post("/v1/query", files={"image_id": (None, "1")}, headers=own).status_code == 200


def test_defect6_url_encoded_forms_are_refused(client):
    """A plain HTML form (url-encoded) from any page ran a query; JSON or multipart only now."""
    r = client.post("/v1/query", data={"image_id": "1"},
                    headers={"origin": "http://evil.example"})
    assert r.status_code == 403
    assert_error(client.post("/v1/query", data={"image_id": "1"}), 415, "url-encoded forms are refused")


def test_defect6_allow_host_extends_the_list(index_dir, cnn):
    app = create_app(index_dir, workers=1, threads=1, cnn=cnn, allow_hosts=["compnn.example.org"])
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.get("/v1/index", headers={"host": "compnn.example.org"}).status_code == 200
        assert c.get("/v1/index", headers={"host": "other.example.org"}).status_code == 400
        # behind a reverse proxy: Host is the upstream's, Origin the public name
        r = c.post("/v1/query", json={"image_id": 1, "top_k": 1},
                   headers={"origin": "https://compnn.example.org"})
        assert r.status_code == 200
    app = create_app(index_dir, workers=1, threads=1, cnn=cnn, allow_hosts=["*"])
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.get("/v1/index", headers={"host": "anything.example"}).status_code == 200


def test_defect6_viewer_sends_multipart():
    """The viewer's script must send JSON or multipart (FormData), never a url-encoded body."""
    js = (REPO / "compnn_index" / "service" / "static" / "viewer.js").read_text()
    assert "new FormData()" in js and "URLSearchParams" not in js
    assert "x-www-form-urlencoded" not in js


# ---------------------------------------------------------------------------- 7: corrupt vectors
def test_defect7_checksums_catch_a_poisoned_global_index(capsys, index_dir, tmp_path):
    """Defect 7: with global.faiss overwritten by NaN, ``compnn query`` exited 0 and wrote
    ``"shortlist_similarity": [NaN, ...]``."""
    store = copy_store(index_dir, tmp_path / "nan")
    poison(store / "global.faiss")
    code, err = run_cli(capsys, "query", store, "1", "--out", tmp_path / "q")
    assert_one_line(code, err, "query", "global.faiss' is corrupt: its SHA-256 is")
    assert not (tmp_path / "q").exists()


def test_defect7_nan_vectors_refused_without_checksums(capsys, index_dir, tmp_path):
    """A store without checksums (built before them): NaN vectors are still refused."""
    store = copy_store(index_dir, tmp_path / "nan")
    edit_manifest(store, lambda m: m.update(checksums=None))
    poison(store / "global.faiss")
    code, err = run_cli(capsys, "query", store, "1", "--out", tmp_path / "q")
    assert_one_line(code, err, "query", "global descriptors in")
    assert "NaN or infinite" in err

    store = copy_store(index_dir, tmp_path / "inf")
    edit_manifest(store, lambda m: m.update(checksums=None))
    poison(store / "layers" / "decoder2.faiss", float("inf"))
    code, err = run_cli(capsys, "query", store, "1", "--layer", "decoder2", "--out", tmp_path / "q")
    assert_one_line(code, err, "query", "layers/decoder2.faiss")  # the message names the file
    assert "NaN or infinite" in err
    # the service answers 503 with the reason, not 200 with NaN
    app = create_app(store, workers=1, threads=1)
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.post("/v1/query", json={"image_id": 1, "layer": "decoder2"})
        assert_error(r, 503, "NaN or infinite")
        assert c.post("/v1/query", json={"image_id": 1, "layer": "decoder3"}).status_code == 200


@pytest.mark.parametrize("checksums", [True, False])
def test_defect7_garbage_outputs_npy_names_the_file(index_dir, tmp_path, checksums):
    """A garbage outputs.npy loaded and failed later with "contains pickled (object) data"."""
    store = copy_store(index_dir, tmp_path / "garbage")
    if not checksums:
        edit_manifest(store, lambda m: m.update(checksums=None))
    f = store / "arrays" / "outputs.npy"
    f.write_bytes(np.random.default_rng(0).bytes(f.stat().st_size))
    with pytest.raises(IndexStoreError) as exc:
        IndexStore.open(store)
    msg = str(exc.value)
    assert "arrays/outputs.npy' is not a .npy file: it starts with" in msg and "corrupt" in msg
    assert "pickled" not in msg


def test_defect7_npy_header_disagreeing_with_manifest(index_dir, tmp_path):
    store = copy_store(index_dir, tmp_path / "hdr")
    edit_manifest(store, lambda m: m.update(checksums=None))
    arr = np.load(index_dir / "arrays" / "outputs.npy")
    np.save(store / "arrays" / "outputs.npy", arr[:-1])
    with pytest.raises(IndexStoreError, match=r"outputs.npy': expected float32 .* but its header says"):
        IndexStore.open(store)
    np.save(store / "arrays" / "outputs.npy", arr)
    with open(store / "arrays" / "outputs.npy", "r+b") as fh:
        fh.truncate(fh.seek(0, 2) - 100)
    with pytest.raises(IndexStoreError, match="outputs.npy' has .* bytes, expected .* truncated"):
        IndexStore.open(store)


# ---------------------------------------------------------------------------- 8: slow clients
def test_defect8_content_length_over_the_limit_is_refused_at_once(server):
    """Defect 8: ``Content-Length: 1000000000`` with 2 bytes sent: no 413 within 15 s."""
    s = connect(server)
    t = time.perf_counter()
    s.sendall(b"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
              b"content-length: 1000000000\r\n\r\n{}")
    s.settimeout(5)
    first = s.recv(65536)
    assert time.perf_counter() - t < 1.0
    assert status_of(first) == 413
    raw = first + recv_all(s, 4)  # the body may come in a second segment
    assert "Request body too large: Content-Length 1000000000" in json_body(raw)["error"]
    s.close()


def test_defect8_expect_continue_over_the_limit_is_refused_unread(server):
    """A client waiting for ``100 Continue`` is told 413 at once, not invited to send 1 GB."""
    s = connect(server)
    s.sendall(b"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
              b"expect: 100-continue\r\ncontent-length: 1000000000\r\n\r\n")
    t = time.perf_counter()
    raw = recv_all(s, 3)
    assert time.perf_counter() - t < 1.0
    assert raw.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in raw
    s.close()


def test_defect8_streamed_body_over_the_limit_is_refused(server):
    s = connect(server)
    s.sendall(b"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
              b"transfer-encoding: chunked\r\n\r\n")
    chunk = b"x" * 65536
    try:
        for _ in range(8):
            s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    raw = recv_all(s, 5)
    assert status_of(raw) == 413 and b"more than 262144 bytes sent" in raw
    s.close()


def test_defect8_half_sent_requests_are_closed(server, client):
    """300 half-sent bodies were still open after 20 s: bodies now have 1.5 s here, headers 1 s."""
    half_bodies, half_headers, silent = [], [], []
    for _ in range(20):
        s = connect(server)
        s.sendall(b"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                  b"content-length: 100\r\n\r\n{\"image")
        half_bodies.append(s)
        s = connect(server)
        s.sendall(b"POST /v1/query HTTP/1.1\r\nHost: 127.0")
        half_headers.append(s)
        silent.append(connect(server))
    t = time.perf_counter()
    assert client.get("/health").status_code == 200  # meanwhile others are served
    results = {}
    for name, socks in (("body", half_bodies), ("headers", half_headers), ("silent", silent)):
        results[name] = [recv_all(s, 6) for s in socks]
        for s in socks:
            s.close()
    assert time.perf_counter() - t < 8
    assert all(status_of(r) == 408 and b"did not arrive within 1.5 s" in r for r in results["body"])
    assert all(status_of(r) == 408 and b"headers not received within 1 s" in r for r in results["headers"])
    assert all(r == b"" for r in results["silent"])  # closed without a word


def test_defect8_slow_header_drip_is_cut_off(server):
    """One header byte every 0.3 s cancelled uvicorn's keep-alive timer forever."""
    s = connect(server)
    t = time.perf_counter()
    closed = False
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
    try:
        for b in request:
            s.sendall(bytes([b]))
            time.sleep(0.3)
            if time.perf_counter() - t > 4:
                break
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    raw = recv_all(s, 3)
    assert closed or status_of(raw) == 408
    assert time.perf_counter() - t < 6
    s.close()


def test_defect8_bad_http_is_answered_in_json(server):
    s = connect(server)
    s.sendall(b"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-length: -5\r\n\r\n")
    raw = recv_all(s, 3)
    assert status_of(raw) == 400 and "error" in json_body(raw)
    s.close()
    s = connect(server)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
    raw = recv_all(s, 3)
    assert status_of(raw) in (400, 431) and "error" in json_body(raw)
    s.close()


# ---------------------------------------------------------------------------- 9: stale builds
_KILLED_BUILD = r"""
import sys, time
from compnn_index.data import open_dataset
from compnn_index.index import build_index
from compnn_index.models import build_model

class Slow:
    def __init__(self, base): self.base = base
    def __len__(self): return len(self.base)
    def __getitem__(self, i):
        if i == 4:
            print("building", flush=True)
            time.sleep(60)
        return self.base[i]
    def __getattr__(self, name): return getattr(self.base, name)

model = build_model("unet", task="translate", out_channels=3, ngf=4, size=32).eval()
build_index(model, Slow(open_dataset("synthetic", size=32, limit=6)), layers=["decoder2"],
            out=sys.argv[1], batch_size=2, progress=False, threads=1)
"""


def test_defect9_a_killed_build_is_cleaned_by_the_next(tmp_path):
    """Defect 9: ``kill -9`` left ``.NAME.building-*`` (276 MB) and a rerun kept it."""
    from compnn_index.data import open_dataset
    from compnn_index.index import build_index
    from compnn_index.models import build_model

    out = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_BUILD, str(out)], stdout=subprocess.PIPE,
                            env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "building"
        stale = list(tmp_path.glob(".store.building-*"))
        assert len(stale) == 1 and (stale[0] / integrity.BUILD_LOCK).is_file()
    finally:
        proc.kill()
        proc.wait(10)
    # a folder of a build that is still running (this process) is left alone
    live = tmp_path / ".store.building-live"
    live.mkdir()
    integrity.claim_build_dir(live)
    model = build_model("unet", task="translate", out_channels=3, ngf=4, size=32).eval()
    build_index(model, open_dataset("synthetic", size=32, limit=3), layers=["decoder2"], out=out,
                batch_size=2, progress=False)
    assert not stale[0].exists()
    assert live.exists()
    assert not (out / integrity.BUILD_LOCK).exists()
    # one without a lock (an older build) is named, not removed
    orphan = tmp_path / ".store.building-orphan"
    orphan.mkdir()
    with pytest.warns(UserWarning, match=r"building-orphan' \(0.0 MB\) .* delete it if no build is running"):
        build_index(model, open_dataset("synthetic", size=32, limit=3), layers=["decoder2"], out=out,
                    batch_size=2, progress=False, overwrite=True)
    assert orphan.exists()


# ---------------------------------------------------------------------------- checksums
def test_store_checksums_cover_every_file_and_verify(capsys, index_dir, tmp_path):
    man = json.loads((index_dir / "manifest.json").read_text())
    assert set(man["checksums"]) == set(integrity.store_files(index_dir))
    assert {"global.faiss", "layers/decoder2.faiss", "arrays/outputs.npy"} <= set(man["checksums"])
    code = main(["verify", str(index_dir)])
    out = capsys.readouterr().out
    assert code == 0 and "layers/decoder2.faiss: sha256 ok" in out and out.strip().endswith(": ok")

    store = copy_store(index_dir, tmp_path / "flip")
    f = store / "layers" / "decoder3.faiss"
    data = bytearray(f.read_bytes())
    data[-7] ^= 0x40
    f.write_bytes(bytes(data))
    code, err = run_cli(capsys, "verify", store)
    assert_one_line(code, err, "verify", "layers/decoder3.faiss' is corrupt: its SHA-256 is")


def test_large_files_are_verified_only_with_verify(index_dir, tmp_path, monkeypatch):
    store = copy_store(index_dir, tmp_path / "big")
    f = store / "layers" / "decoder2.faiss"
    data = bytearray(f.read_bytes())
    data[HEADER_BYTES + 3] ^= 1
    f.write_bytes(bytes(data))
    monkeypatch.setattr(integrity, "VERIFY_ON_OPEN_BYTES", 1024)  # every vector file is "large"
    IndexStore.open(store)  # cheap open: sizes and small files only
    with pytest.raises(IndexStoreError, match="decoder2.faiss' is corrupt"):
        IndexStore.open(store, verify=True)
    with pytest.raises(IndexStoreError, match="decoder2.faiss' is corrupt"):
        CompNN.load(store, verify=True)


def test_verify_without_checksums_scans_for_nan(capsys, index_dir, tmp_path):
    store = copy_store(index_dir, tmp_path / "old")
    edit_manifest(store, lambda m: m.update(checksums=None))
    assert main(["verify", str(store)]) == 0
    assert "no checksums recorded" in capsys.readouterr().out
    poison(store / "layers" / "decoder4.faiss")
    code, err = run_cli(capsys, "verify", store)
    assert_one_line(code, err, "verify", "layer 'decoder4' vectors 0.. in 'layers/decoder4.faiss'")


@pytest.mark.parametrize("change,match", [
    (lambda m: m.update(image_size="big"), "expected image_size to be [height, width]"),
    (lambda m: m.update(images=[{"id": 0}]), "expected images[0] to be an object with a \"name\""),
    (lambda m: m["layers"]["decoder2"].update(grid="x"), "expected layers['decoder2'].grid to be [Hp, Wp]"),
    (lambda m: m["layers"]["decoder2"].update(file="/etc/passwd"), "layers['decoder2'].file to be a relative path"),
    (lambda m: m["arrays"]["inputs"].update(file="../../x.npy"), "arrays['inputs'].file to be a relative path"),
    (lambda m: m["global"].update(dim=-1), "expected global.dim to be a positive integer"),
    (lambda m: m.update(checksums={"global.faiss": "abc"}), "checksums['global.faiss']"),
    (lambda m: m.update(task=None), "expected task to be \"translate\" or \"segment\""),
])
def test_defect10_malformed_manifest_is_one_line(capsys, index_dir, tmp_path, change, match):
    """Defect 10: a manifest with ``"image_size": "big"`` raised a traceback."""
    store = copy_store(index_dir, tmp_path / "bad")
    edit_manifest(store, change)
    code, err = run_cli(capsys, "query", store, "1", "--out", tmp_path / "q")
    assert_one_line(code, err, "query", match)


# ---------------------------------------------------------------------------- 10: CLI inputs
def test_defect10_png_declaring_a_huge_size(capsys, index_dir, tmp_path):
    """Defect 10: a PNG declaring a huge size raised ``DecompressionBombError``."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(raw_png(100_000, 100_000, pixels=False))
    code, err = run_cli(capsys, "query", index_dir, bomb, "--out", tmp_path / "q")
    assert_one_line(code, err, "query", "bomb.png: refused to decode (Image size (10000000000 pixels)")
    big = tmp_path / "big.png"  # under Pillow's bomb limit, but not the index's size: not decoded
    big.write_bytes(raw_png(9000, 9000, pixels=False))
    code, err = run_cli(capsys, "query", index_dir, big, "--out", tmp_path / "q")
    assert_one_line(code, err, "query", f"expected a {TINY_SIZE}×{TINY_SIZE} image (height×width, "
                                        "the index's image size), got 9000×9000")


def test_defect10_checkpoint_whose_config_is_not_a_dict(capsys, tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"arch": "unet", "config": [1, 2], "state_dict": {}}, bad)
    code, err = run_cli(capsys, "build", "--model", bad, "--data", "synthetic", "--out", tmp_path / "o")
    assert_one_line(code, err, "build", "expected a string 'arch', a dict 'config'")
    torch.save({"arch": "unet", "config": {"ngf": "big"}, "state_dict": {}}, bad)
    code, err = run_cli(capsys, "build", "--model", bad, "--data", "synthetic", "--out", tmp_path / "o")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("bits,channels", [(16, 1), (16, 3), (16, 4), (8, 1), (8, 4)])
def test_defect10_16_bit_pngs_are_handled_alike(client, cnn, bits, channels):
    """16-bit grey PNGs were refused (422) while 16-bit RGB/RGBA were accepted."""
    from compnn_index.data.query_image import load_image

    data = raw_png(TINY_SIZE, TINY_SIZE, bits=bits, channels=channels)
    arr = load_image(Image.open(io.BytesIO(data)))
    assert arr.shape == (3, TINY_SIZE, TINY_SIZE) and np.all(arr == -1.0)
    r = client.post("/v1/query", files={"image": ("q.png", data, "image/png")}, params={})
    assert r.status_code == 200, r.text
