"""The HTTP service over a real uvicorn server on a loopback port (httpx as the client).

The index is the session's tiny translation store (``translate_index`` in conftest: 12 synthetic
facades of 64×64, label map → photo, U-Net ngf 8, layers decoder2/3/4), built once per session. Every endpoint, every refused input (status and message), the result
cache, the worker pool (responsive while a query computes, replicas agree with sequential
answers) are checked.
"""
from __future__ import annotations

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from compnn_index.api import CompNN
from compnn_index.data.query_image import load_image
from compnn_index.service.background import BackgroundServer
from compnn_index.service.server import create_app, is_loopback
from compnn_index.pictures import to_rgb

from conftest import TINY_IMAGES, TINY_LAYERS, TINY_SIZE

NUM_IMAGES = TINY_IMAGES
SIZE = TINY_SIZE
LAYERS = list(TINY_LAYERS)
MAX_UPLOAD = 64 * 1024
CACHE_SIZE = 4


@pytest.fixture(scope="module")
def index_dir(translate_index):
    """The shared tiny translation store (read-only: the service never writes to it)."""
    return translate_index.index


@pytest.fixture(scope="module")
def cnn(index_dir) -> CompNN:
    """The same index loaded in-process: the reference the HTTP answers are checked against."""
    return CompNN.load(index_dir, threads=1)


@pytest.fixture(scope="module")
def server(index_dir):
    app = create_app(index_dir, workers=2, threads=1, cache_size=CACHE_SIZE,
                     max_upload_bytes=MAX_UPLOAD)
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def png(arr: np.ndarray | Image.Image, fmt: str = "PNG") -> bytes:
    img = arr if isinstance(arr, Image.Image) else Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def db_png(cnn: CompNN, i: int) -> bytes:
    return png(to_rgb(np.asarray(cnn.array("inputs")[i], dtype=np.float32), None))


def form(**fields) -> list:
    """Multipart form fields without files (httpx sends ``data=`` alone url-encoded, which the
    service refuses: any web page can send such a form cross-site)."""
    return [(k, (None, v)) for k, vs in fields.items() for v in (vs if isinstance(vs, list) else [vs])]


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def assert_error(resp: httpx.Response, status: int, match: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    assert match in body["error"], body["error"]


# ---------------------------------------------------------------------------- metadata
def test_server_listens_on_loopback(server):
    assert server.url.startswith("http://127.0.0.1:")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_health(client):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["images"] == NUM_IMAGES and body["workers"] == 2


def test_openapi_lists_endpoints(client):
    schema = client.get("/openapi.json").json()
    for path in ("/health", "/v1/index", "/v1/images/{image_id}", "/v1/query", "/v1/correspond",
                 "/v1/results/{query_id}/{filename}"):
        assert path in schema["paths"], path
    body = schema["paths"]["/v1/query"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)


def test_index_describes_the_store(client, cnn):
    info = client.get("/v1/index").json()
    man = cnn.store.manifest
    assert info["layers"] == LAYERS
    assert info["num_images"] == NUM_IMAGES and info["image_size"] == [SIZE, SIZE]
    assert info["specs"]["decoder2"] == cnn.store.spec("decoder2").to_dict()
    assert info["task"] == "translate"
    assert info["model"]["hash"] == man["model"]["hash"] and info["model"]["arch"] == "unet"
    assert info["dataset"] == man["dataset"]
    assert [im["name"] for im in info["images"]] == cnn.store.image_names
    materials = sorted({m["material"] for m in cnn.store.image_meta})
    assert info["meta_values"]["material"] == materials
    assert "checkpoint" not in info["model"]  # no server file paths


def test_viewer_page_and_assets(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for needle in ('id="output-canvas"', 'id="source-image"', 'id="source-highlight"',
                   'src="/static/viewer.js"'):
        assert needle in r.text
    assert "http" not in r.text.replace("http-equiv", "")  # no external resources
    js = client.get("/static/viewer.js")
    assert js.status_code == 200 and "nn_field" in js.text
    assert client.get("/static/viewer.css").status_code == 200


@pytest.mark.parametrize("kind,array", [("input", "inputs"), ("target", "targets"), ("output", "outputs")])
def test_database_image_png(client, cnn, kind, array):
    r = client.get(f"/v1/images/5?kind={kind}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    expected = to_rgb(np.asarray(cnn.array(array)[5], dtype=np.float32), None)
    np.testing.assert_array_equal(decode(r.content), expected)


# ---------------------------------------------------------------------------- queries
def test_query_by_id_matches_the_api(client, cnn):
    r = client.post("/v1/query", json={"image_id": 3, "layer": "decoder3", "top_k": 5,
                                       "sources": ["target", "input", "self"]})
    assert r.status_code == 200, r.text
    doc = r.json()
    ref = cnn.query(3, layer="decoder3", top_k=5, sources=("target", "input", "self"))
    assert doc["layer"] == "decoder3" and doc["search"] == "exact"
    assert doc["spec"]["stride"] == ref.spec.stride and doc["spec"]["region"] == ref.spec.region
    assert doc["shortlist"] == ref.shortlist.tolist()
    field = doc["nn_field"]
    for key in ("image", "y", "x"):
        np.testing.assert_array_equal(np.asarray(field[key]), getattr(ref.field, key))
    np.testing.assert_allclose(np.asarray(field["similarity"]), ref.field.similarity, atol=1e-5)
    assert set(np.unique(field["image"])) <= set(doc["shortlist"])
    assert {"features", "search", "total", "queued", "server"} <= set(doc["timings"])
    assert set(doc["links"]) == {"input", "output", "reconstruction_target", "reconstruction_input",
                                 "reconstruction_self", "correspondence_map"}
    pics = {name: client.get(url) for name, url in doc["links"].items()}
    assert all(p.status_code == 200 and p.headers["content-type"] == "image/png" for p in pics.values())
    np.testing.assert_array_equal(decode(pics["output"].content), to_rgb(ref.output, None))
    np.testing.assert_array_equal(decode(pics["reconstruction_target"].content),
                                  to_rgb(ref.reconstructions["target"], None))
    assert decode(pics["correspondence_map"].content).shape[0] >= SIZE


def test_query_upload_form(client, cnn):
    data = db_png(cnn, 7)
    r = client.post("/v1/query", files={"image": ("q.png", data, "image/png")},
                    data={"layer": "decoder2", "top_k": "4", "sources": "target"})
    assert r.status_code == 200, r.text
    doc = r.json()
    ref = cnn.query(load_image(Image.open(io.BytesIO(data))), layer="decoder2", top_k=4, sources=("target",))
    np.testing.assert_array_equal(np.asarray(doc["nn_field"]["image"]), ref.field.image)
    np.testing.assert_array_equal(np.asarray(doc["nn_field"]["y"]), ref.field.y)
    assert doc["image"] == "upload 'image'"
    assert set(doc["links"]) == {"input", "output", "reconstruction_target", "correspondence_map"}
    np.testing.assert_array_equal(decode(client.get(doc["links"]["input"]).content), decode(data))


def test_query_jpeg_upload(client, cnn):
    data = png(to_rgb(np.asarray(cnn.array("inputs")[2], dtype=np.float32), None), fmt="JPEG")
    r = client.post("/v1/query", files={"image": ("q.jpg", data, "image/jpeg")}, data={"top_k": "2"})
    assert r.status_code == 200, r.text
    assert len(r.json()["shortlist"]) == 2


def test_restrict_by_meta_and_ids(client, cnn):
    meta = cnn.store.image_meta
    material = meta[0]["material"]
    allowed = {i for i, m in enumerate(meta) if m["material"] == material}
    r = client.post("/v1/query", json={"image_id": 1, "restrict": f"material={material}"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert set(doc["shortlist"]) == allowed  # default top_k = all candidates when fewer than 16
    assert set(np.unique(doc["nn_field"]["image"])) <= allowed

    r = client.post("/v1/query", files=form(image_id="1", restrict="4, 9"))
    assert r.status_code == 200, r.text
    assert sorted(r.json()["shortlist"]) == [4, 9]
    name = cnn.store.image_names[6]
    r = client.post("/v1/query", json={"image_id": 1, "restrict": [name, 8], "top_k": 1})
    assert r.status_code == 200 and len(r.json()["shortlist"]) == 1
    assert r.json()["shortlist"][0] in (6, 8)


def test_query_patchmatch(client, cnn):
    r = client.post("/v1/query", json={"image_id": 2, "search": "patchmatch", "iterations": 3,
                                       "samples": 2, "seed": 5, "top_k": 6})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["search"] == "patchmatch"
    assert doc["params"]["iterations"] == 3 and doc["params"]["seed"] == 5
    ref = cnn.query(2, search="patchmatch", iterations=3, samples=2, seed=5, top_k=6)
    np.testing.assert_allclose(np.asarray(doc["nn_field"]["similarity"]), ref.field.similarity, atol=1e-5)
    assert set(np.unique(doc["nn_field"]["image"])) <= set(doc["shortlist"])


def test_query_patchmatch_coarse_to_fine(client, cnn):
    r = client.post("/v1/query", files=form(image_id="4", search="patchmatch", init="coarse",
                                            layer="decoder2", iterations="2", top_k="5"))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["params"]["init"] == "coarse"
    ref = cnn.query(4, search="patchmatch", init="coarse", layer="decoder2", iterations=2, top_k=5)
    np.testing.assert_allclose(np.asarray(doc["nn_field"]["similarity"]), ref.field.similarity, atol=1e-5)


def test_index_reports_the_native_kernel(client):
    """HyperPatch-Match always runs (the native kernel, or its NumPy fallback): no 501 any more."""
    from compnn_index.api import native_available

    info = client.get("/v1/index").json()
    assert info["searches"] == ["exact", "patchmatch"]
    assert info["native_kernel"] is native_available()
    assert "patchmatch_error" not in info


def test_correspond_ids_and_uploads(client, cnn):
    r = client.post("/v1/correspond", json={"image_a_id": 1, "image_b_id": 2, "layer": "decoder3"})
    assert r.status_code == 200, r.text
    doc = r.json()
    ref = cnn.correspond(1, 2, layer="decoder3")
    np.testing.assert_array_equal(np.asarray(doc["nn_field"]["y"]), ref.field.y)
    np.testing.assert_array_equal(np.asarray(doc["nn_field"]["x"]), ref.field.x)
    assert set(np.unique(doc["nn_field"]["image"])) == {0}
    pic = client.get(doc["links"]["correspondence"])
    assert pic.status_code == 200 and decode(pic.content).shape[1] > 2 * SIZE

    r = client.post("/v1/correspond", files={"image_a": ("a.png", db_png(cnn, 1), "image/png")},
                    data={"image_b_id": "1"})
    assert r.status_code == 200, r.text
    sim = np.asarray(r.json()["nn_field"]["similarity"])
    assert sim.min() > 0.9  # an image matched to (a PNG of) itself


# ---------------------------------------------------------------------------- refused input
GOOD = {"image_id": 1}


@pytest.mark.parametrize("body,status,match", [
    ({"image_id": 99}, 404, f"image id 99 does not exist; expected 0 <= id < {NUM_IMAGES}"),
    ({"image_id": -1}, 404, "image id -1 does not exist"),
    ({"image_id": "x"}, 422, "Expected image_id to be an integer, but image_id = 'x'"),
    ({"image_id": True}, 422, "Expected image_id to be an integer"),
    ({}, 422, "Missing query image: upload 'image' or give 'image_id'"),
    ({"image": "abc"}, 422, "image: expected a file upload"),
    ({**GOOD, "layer": "decoder9"}, 422, f"Unknown layer 'decoder9'; expected one of {', '.join(LAYERS)}"),
    ({**GOOD, "search": "fast"}, 422, "Unknown search 'fast'; expected one of exact, patchmatch"),
    ({**GOOD, "top_k": 0}, 422, f"Expected 1 <= top_k <= {NUM_IMAGES}, but top_k = 0"),
    ({**GOOD, "top_k": NUM_IMAGES + 1}, 422, f"Expected 1 <= top_k <= {NUM_IMAGES}, but top_k = {NUM_IMAGES + 1}"),
    ({**GOOD, "top_k": 1.5}, 422, "Expected top_k to be an integer, but top_k = 1.5"),
    ({**GOOD, "restrict": [1, 2], "top_k": 3}, 400, "Expected 1 <= top_k <= number of database images (2)"),
    ({**GOOD, "restrict": []}, 422, "restrict is empty"),
    ({**GOOD, "restrict": ""}, 422, "restrict is empty"),
    ({**GOOD, "restrict": "material=gold"}, 400, "matches no database image"),
    ({**GOOD, "restrict": "=brick"}, 422, "Expected restrict as KEY=VALUE"),
    ({**GOOD, "restrict": [50]}, 400, "restrict: image id 50 does not exist"),
    ({**GOOD, "restrict": ["no_such_image"]}, 400, "no database image named 'no_such_image'"),
    ({**GOOD, "sources": ["target", "labels"]}, 422, "Unknown source 'labels'"),
    ({**GOOD, "sources": []}, 422, "sources is empty"),
    ({**GOOD, "iterations": 1000}, 422, "Expected 0 <= iterations <= 256, but iterations = 1000"),
    ({**GOOD, "seed": -3}, 422, "Expected 0 <= seed"),
    ({**GOOD, "init": "zeros"}, 422, "Unknown init 'zeros'; expected one of random, staged, coarse"),
    ({**GOOD, "colour": "red"}, 422, "Unknown field(s) 'colour'"),
    # integers are parsed by compnn_index.checks: junk that str.isdigit let through is a 422, not a 500
    ({"image_id": "²"}, 422, "Expected image_id to be an integer, but image_id = '²'"),
    ({"image_id": "+-3"}, 422, "Expected image_id to be an integer, but image_id = '+-3'"),
    ({"image_id": "--3"}, 422, "Expected image_id to be an integer, but image_id = '--3'"),
    ({**GOOD, "top_k": "--3"}, 422, "Expected top_k to be an integer, but top_k = '--3'"),
    ({**GOOD, "top_k": "²"}, 422, "Expected top_k to be an integer, but top_k = '²'"),
    ({**GOOD, "iterations": "+-3"}, 422, "Expected iterations to be an integer, but iterations = '+-3'"),
    ({**GOOD, "seed": "٣"}, 422, "Expected seed to be an integer"),
    ({**GOOD, "restrict": [{"a": 1}]}, 422, "restrict: expected image ids or names"),
])
def test_query_refuses_bad_json(client, body, status, match):
    assert_error(client.post("/v1/query", json=body), status, match)


def _pil_bytes(mode: str, size=(SIZE, SIZE), fmt="PNG") -> bytes:
    return png(Image.new(mode, size), fmt=fmt)


@pytest.mark.parametrize("data,status,match", [
    (b"this is not an image", 415, "image: the uploaded file is not a readable image"),
    (b"", 422, "image: the uploaded file is empty"),
    ("truncated", 415, "truncated or corrupt"),
    (_pil_bytes("RGB", size=(32, 32)), 422, "expected an image of 64×64 pixels (width×height, the index's image size), got 32×32"),
    (_pil_bytes("RGB", size=(64, 128)), 422, "got 64×128"),
    (_pil_bytes("F", fmt="TIFF"), 422, "expected an RGB or grey image (8 or 16 bits), got PIL mode 'F'"),
    (_pil_bytes("CMYK", fmt="JPEG"), 422, "expected an RGB or grey image (8 or 16 bits), got PIL mode 'CMYK'"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * (MAX_UPLOAD + 10), 413, f"the limit is {MAX_UPLOAD} bytes"),
])
def test_query_refuses_bad_uploads(client, cnn, data, status, match):
    if data == "truncated":
        data = db_png(cnn, 0)[:-200]
    r = client.post("/v1/query", files={"image": ("q.png", data, "image/png")})
    assert_error(r, status, match)


def test_chunked_upload_over_limit_is_refused(client):
    def body():
        for _ in range(20):
            yield b"x" * 8192

    r = client.post("/v1/query", content=body(), headers={"content-type": "application/json"})
    assert_error(r, 413, "Request body too large")


@pytest.mark.parametrize("kwargs,status,match", [
    (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON"),
    (dict(json=[1, 2]), 422, "Expected a JSON object, got list"),
    (dict(content=b"image_id=1", headers={"content-type": "text/plain"}), 415,
     "Expected Content-Type multipart/form-data or application/json, got 'text/plain'"),
    (dict(files={"image": ("a.png", b"x", "image/png"), "other": ("b.png", b"y", "image/png")}), 422,
     "Unexpected file field 'other'; expected uploads named 'image'"),
    (dict(files=[("image", ("a.png", b"x", "image/png")), ("image", ("b.png", b"y", "image/png"))]), 422,
     "More than one file in field 'image'"),
    (dict(content=b"--xx\r\nContent-Disposition: form-data\r\n\r\n1\r\n--xx--\r\n",
          headers={"content-type": "multipart/form-data; boundary=xx"}), 400,
     'A multipart part lacks the Content-Disposition "name"'),
    (dict(content=b"", headers={"content-type": "multipart/form-data"}), 400,
     "multipart/form-data without a boundary"),
    (dict(files={"image": ("q.png", b"xx", "image/png")}, data={"image_id": "1"}), 422,
     "Give either an upload 'image' or 'image_id', not both"),
    (dict(files=form(image_id="1", top_k=["2", "3"])), 422, "Expected top_k to be an integer"),
    (dict(files=form(image_id="²")), 422, "Expected image_id to be an integer, but image_id = '²'"),
    (dict(files=form(image_id="1", top_k="--3")), 422, "Expected top_k to be an integer, but top_k = '--3'"),
    (dict(files=form(image_id="1", jumps="+-3")), 422, "Expected jumps to be an integer, but jumps = '+-3'"),
])
def test_query_refuses_malformed_requests(client, kwargs, status, match):
    assert_error(client.post("/v1/query", **kwargs), status, match)


@pytest.mark.parametrize("body,status,match", [
    ({"image_a_id": 1}, 422, "Missing query image: upload 'image_b' or give 'image_b_id'"),
    ({"image_a_id": 1, "image_b_id": 40}, 404, "image_b_id: image id 40 does not exist"),
    ({"image_a_id": 1, "image_b_id": 2, "layer": "encoder1"}, 422, "Unknown layer 'encoder1'"),
    ({"image_a_id": 1, "image_b_id": 2, "top_k": 3}, 422, "Unknown field(s) 'top_k'"),
])
def test_correspond_refuses_bad_input(client, body, status, match):
    assert_error(client.post("/v1/correspond", json=body), status, match)


@pytest.mark.parametrize("path,status,match", [
    (f"/v1/images/{NUM_IMAGES}", 404, f"image id {NUM_IMAGES} does not exist; expected 0 <= id < {NUM_IMAGES}"),
    ("/v1/images/-1", 404, "image id -1 does not exist"),
    ("/v1/images/abc", 422, "image_id: Input should be a valid integer"),
    ("/v1/images/1?kind=label", 422, "kind: Input should be 'input', 'target' or 'output'"),
    ("/v1/results/0123456789abcdef0123456789abcdef/input.png", 404, "is unknown or was evicted"),
    ("/v1/results/nonsense/input.png", 404, "is unknown or was evicted"),
    ("/v1/results/0123456789abcdef0123456789abcdef/manifest.json", 404, "Unknown picture 'manifest.json'"),
    ("/v1/results/0123456789abcdef0123456789abcdef/..%2F..%2Fmanifest.png", 404, ""),
    ("/v1/results/..%2F..%2F/input.png", 404, ""),
    ("/static/..%2F..%2Fapi.py", 404, ""),
    ("/nowhere", 404, "Not Found"),
])
def test_get_refuses_bad_paths(client, path, status, match):
    assert_error(client.get(path), status, match)


def test_picture_not_in_this_result(client):
    doc = client.post("/v1/query", json={"image_id": 0, "sources": ["target"]}).json()
    qid = doc["query_id"]
    assert_error(client.get(f"/v1/results/{qid}/reconstruction_self.png"), 404,
                 "has no picture 'reconstruction_self'")
    assert_error(client.get(f"/v1/results/{qid}/image_a.png"), 404, "has no picture 'image_a'")


def test_result_cache_evicts_least_recent(client):
    ids = [client.post("/v1/query", json={"image_id": i, "top_k": 1}).json()["query_id"]
           for i in range(CACHE_SIZE + 1)]
    assert_error(client.get(f"/v1/results/{ids[0]}/output.png"), 404,
                 f"was evicted from the result cache (it keeps the {CACHE_SIZE} most recent)")
    for qid in ids[1:]:
        assert client.get(f"/v1/results/{qid}/output.png").status_code == 200


def test_server_healthy_after_refusals(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["queries_in_flight"] == 0
    assert client.post("/v1/query", json={"image_id": 0, "top_k": 2}).status_code == 200


def test_store_is_read_only(server, cnn):
    store = cnn.store
    assert not store.vectors("decoder2").flags.writeable
    assert not np.asarray(store.array("inputs")).flags.writeable


# ---------------------------------------------------------------------------- worker pool
def test_concurrent_queries_match_sequential(client, cnn):
    """Per-worker model replicas: concurrent queries don't read each other's activations."""
    ids = list(range(8))

    def ask(i):
        r = client.post("/v1/query", json={"image_id": i, "top_k": 3, "layer": "decoder2"})
        assert r.status_code == 200, r.text
        return np.asarray(r.json()["nn_field"]["image"]), np.asarray(r.json()["nn_field"]["y"])

    with ThreadPoolExecutor(6) as ex:
        got = list(ex.map(ask, ids))
    for i, (image, y) in zip(ids, got):
        ref = cnn.query(i, top_k=3, layer="decoder2", sources=())
        np.testing.assert_array_equal(image, ref.field.image)
        np.testing.assert_array_equal(y, ref.field.y)


class _GatedCompNN(CompNN):
    """A CompNN whose queries wait for a gate, to hold a worker busy."""

    gate = threading.Event()
    entered = threading.Event()

    def query(self, image, **kwargs):
        type(self).entered.set()
        assert type(self).gate.wait(30)
        return super().query(image, **kwargs)


def test_health_answers_while_a_query_computes(index_dir):
    base = CompNN.load(index_dir, threads=1)
    gated = _GatedCompNN(base.store, base.model, threads=1)
    app = create_app(index_dir, workers=1, threads=1, cnn=gated)
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        with ThreadPoolExecutor(2) as ex:
            first = ex.submit(c.post, "/v1/query", json={"image_id": 0, "top_k": 2})
            assert _GatedCompNN.entered.wait(10)
            second = ex.submit(c.post, "/v1/query", json={"image_id": 1, "top_k": 2})
            t = time.perf_counter()
            health = c.get("/health")
            assert time.perf_counter() - t < 2.0
            assert health.json()["queries_in_flight"] == 1  # one worker: the second query waits
            assert c.get("/v1/index").status_code == 200
            assert not first.done() and not second.done()
            _GatedCompNN.gate.set()
            r1, r2 = first.result(30), second.result(30)
        assert r1.status_code == r2.status_code == 200
        assert r2.json()["timings"]["queued"] > 0
        assert c.get("/health").json()["queries_completed"] == 2


def test_create_app_validates_options(index_dir):
    with pytest.raises(ValueError, match=r"Expected 1 <= workers <= \d+, but workers = 0"):
        create_app(index_dir, workers=0)
    with pytest.raises(ValueError, match="Expected cache_size >= 1, but cache_size = 0"):
        create_app(index_dir, cache_size=0)
    with pytest.raises(ValueError, match="Expected max_upload_bytes >= 1024"):
        create_app(index_dir, max_upload_bytes=10)
    with pytest.raises(ValueError, match=r"Expected 1 <= threads <= \d+, but threads = 100000"):
        create_app(index_dir, threads=100000)


def test_query_defaults_come_from_query_options():
    """The service holds no defaults of its own: an empty request gets QueryOptions()."""
    from compnn_index.options import QueryOptions
    from compnn_index.service.params import Fields, parse_query

    p = parse_query(Fields(values={"image_id": 1}), layers=LAYERS, num_images=NUM_IMAGES)
    assert p.options == QueryOptions() and p.restrict is None and p.sources == ("target", "input")
    p = parse_query(Fields(values={"image_id": "2", "search": "patchmatch", "iterations": "3", "top_k": "4"},
                           form=True), layers=LAYERS, num_images=NUM_IMAGES)
    assert p.options == QueryOptions(search="patchmatch", iterations=3, top_k=4)


def test_create_app_refuses_missing_index(tmp_path):
    from compnn_index.errors import IndexStoreError

    with pytest.raises(IndexStoreError, match=str(tmp_path / "nothing")):
        create_app(tmp_path / "nothing")


def test_result_json_is_plain_json(client):
    doc = client.post("/v1/query", json={"image_id": 0, "top_k": 1}).json()
    assert json.loads(json.dumps(doc)) == doc


# ---------------------------------------------------------------------------- tools/load_test.py
def _load_test_module():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "load_test.py"
    spec = importlib.util.spec_from_file_location("load_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_load_test_tool(server):
    lt = _load_test_module()
    with pytest.raises(SystemExit, match="refusing non-loopback host '10.1.2.3'"):
        lt.check_url("http://10.1.2.3:8000")
    with pytest.raises(SystemExit, match="expected --url http://127.0.0.1:PORT"):
        lt.check_url("ftp://127.0.0.1/")
    rep = lt.run(lt.check_url(server.url), clients=3, queries=4, deadline_s=60, timeout=60)
    assert rep["completed"] == 12 and rep["errors"] == 0 and rep["skipped"] == 0
    assert {k.split("/")[1] for k in rep["by_kind"]} == {"id", "upload"}
    assert 0 < rep["latency_s"]["p50"] <= rep["latency_s"]["p99"]
    rep = lt.run(server.url, clients=2, queries=3, deadline_s=0.0, timeout=60)
    assert rep["completed"] == 0 and rep["skipped"] == 6
