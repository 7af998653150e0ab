"""The viewer page driven in headless Chromium over the DevTools protocol.

Loads the page from a real server, runs a query with the page's own controls, clicks an output
pixel with a real mouse event, and checks that the highlighted training image and patch are
the ones the NN field names for that pixel (computed here, independently of the page's script).
Set ``COMPNN_VIEWER_SCREENSHOT=/path.png`` to keep a screenshot of the page after the query.
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from cli_server import CliServer
from conftest import TINY_LAYERS, TINY_SIZE

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
websocket = pytest.importorskip(
    "websocket", reason="websocket-client is needed to drive Chromium (pip install websocket-client)"
)
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason=f"Chromium not found at {CHROMIUM} (tools/install_chromium.sh installs Debian's chromium)",
)
HIGHLIGHT_RGB = (0xE8, 0x33, 0x6D)  # the rectangle colour in viewer.js


class DevTools:
    """A minimal Chrome DevTools Protocol client for one page target."""

    def __init__(self, ws_url: str, timeout: float = 30.0) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self._id = 0

    def call(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression!r} raised {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        state = self.evaluate("document.body.dataset.state + ' / ' + document.getElementById('status').textContent")
        raise AssertionError(f"timed out waiting for {expression!r} (page state: {state})")

    def click(self, x: float, y: float) -> None:
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def index_dir(translate_index):
    """The session's shared tiny translation store (conftest), read-only here."""
    return translate_index.index


@pytest.fixture(scope="module")
def server(index_dir):
    """``compnn serve`` started as a user starts it (the console script, its own process)."""
    with CliServer(index_dir, "--workers", "2", "--threads", "1") as srv:
        assert srv.seconds_to_health < 10, f"/health answered {srv.seconds_to_health:.1f} s after start"
        yield srv


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium with a fresh profile; yields the DevTools client of its page."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1400,1100",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Chromium did not start its DevTools endpoint (exit code {proc.poll()})")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        cdp = DevTools(page["webSocketDebuggerUrl"])
        cdp.call("Emulation.setDeviceMetricsOverride", width=1400, height=1100,
                 deviceScaleFactor=1, mobile=False)
        yield cdp
        cdp.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def open_viewer(cdp: DevTools, url: str) -> None:
    cdp.call("Page.navigate", url=url + "/")
    cdp.wait_for("document.readyState === 'complete' && document.body.dataset.state === 'idle'")


def run_query(cdp: DevTools, *, image_id: int, layer: str, top_k: int, search: str = "exact",
              restrict_meta: str = "", restrict_ids: str = "", exclude_self: bool = False) -> str:
    cdp.evaluate(f"""(() => {{
        document.getElementById('image-select').value = '{image_id}';
        document.getElementById('layer-select').value = '{layer}';
        document.getElementById('top-k').value = '{top_k}';
        document.getElementById('search-{search}').checked = true;
        document.getElementById('restrict-meta').value = '{restrict_meta}';
        document.getElementById('restrict-ids').value = '{restrict_ids}';
        document.getElementById('exclude-self').checked = {'true' if exclude_self else 'false'};
        document.getElementById('run').click();
        return true; }})()""")
    return wait_done(cdp)


def wait_done(cdp: DevTools) -> str:
    return cdp.wait_for("['ready', 'error'].includes(document.body.dataset.state) && "
                        "document.body.dataset.state")


def canvas_box(cdp: DevTools, canvas_id: str = "output-canvas") -> dict:
    return cdp.evaluate(f"""(() => {{ const c = document.getElementById('{canvas_id}');
        const r = c.getBoundingClientRect();
        return {{left: r.left, top: r.top, width: r.width, height: r.height, w: +c.dataset.w,
                 h: +c.dataset.h, scale: +c.dataset.scale}}; }})()""")


def click_pixel(cdp: DevTools, box: dict, py: int, px: int) -> None:
    cdp.click(box["left"] + (px + 0.5) * box["width"] / box["w"],
              box["top"] + (py + 0.5) * box["height"] / box["h"])


def wait_highlight(cdp: DevTools, py: int, px: int, search: str | None = None, layer: str | None = None) -> dict:
    """The highlight after a click at (py, px), once every canvas shows the same match."""
    extra = (f" || h.search !== '{search}'" if search else "") + (f" || h.layer !== '{layer}'" if layer else "")
    return cdp.wait_for(f"""(() => {{ const h = document.getElementById('source-highlight').dataset;
        const same = (id) => {{ const c = document.getElementById(id).dataset;
            return c.image === h.image && c.y === h.y && c.x === h.x; }};
        if (h.py !== '{py}' || h.px !== '{px}' || !['source-image', 'source-output', 'patch-source',
            'patch-source-output'].every(same){extra}) return null;
        return {{image: +h.image, y: +h.y, x: +h.x, similarity: +h.similarity, search: h.search,
                 layer: h.layer}}; }})()""")


def canvas_pixels(cdp: DevTools, canvas_id: str) -> np.ndarray:
    """A canvas's pixels as uint8 (H, W, 3)."""
    data = cdp.evaluate(f"""(() => {{ const c = document.getElementById('{canvas_id}');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const rgb = []; for (let i = 0; i < d.length; i += 4) rgb.push(d[i], d[i + 1], d[i + 2]);
        return {{w: c.width, h: c.height, rgb}}; }})()""")
    return np.asarray(data["rgb"], np.uint8).reshape(data["h"], data["w"], 3)


def db_picture(server, image_id: int, kind: str) -> np.ndarray:
    data = httpx.get(f"{server.url}/v1/images/{image_id}?kind={kind}", timeout=30).content
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_no_broken_images_before_the_first_query(browser, server):
    cdp = browser
    open_viewer(cdp, server.url)
    state = cdp.evaluate("""(() => ({
        resultHidden: document.getElementById('result').hidden,
        hint: !document.getElementById('empty-hint').hidden,
        visibleImgs: Array.from(document.querySelectorAll('img')).filter(i => i.offsetParent !== null).length,
        exportDisabled: document.getElementById('export-png').disabled }))()""")
    assert state == {"resultHidden": True, "hint": True, "visibleImgs": 0, "exportDisabled": True}


def test_click_highlights_the_matched_source_patch(browser, server, tmp_path):
    cdp = browser
    open_viewer(cdp, server.url)
    assert run_query(cdp, image_id=3, layer="decoder3", top_k=5, exclude_self=True) == "ready"
    assert cdp.evaluate("document.getElementById('query-time').textContent").startswith("exact:")

    # the same query over HTTP: the NN field the highlight must agree with
    doc = httpx.post(server.url + "/v1/query", json={"image_id": 3, "layer": "decoder3", "top_k": 5,
                                                     "keep_self": False}, timeout=60).json()
    assert 3 not in np.unique(doc["nn_field"]["image"]) and 3 not in doc["shortlist"]
    field, stride, region = doc["nn_field"], doc["spec"]["stride"], doc["spec"]["region"]
    hq, wq = np.asarray(field["image"]).shape
    box = canvas_box(cdp)
    assert (box["h"], box["w"]) == (TINY_SIZE, TINY_SIZE)
    assert box["scale"] >= 4 and box["width"] >= 256  # drawn enlarged: outlines at screen size

    # the shortlist: a thumbnail per searched image, each linking to its database picture
    links = cdp.evaluate("""Array.from(document.querySelectorAll('#shortlist a')).map(a => ({
        href: a.getAttribute('href'), loaded: a.querySelector('img').complete && a.querySelector('img').naturalWidth }))""")
    assert [x["href"] for x in links] == [f"/v1/images/{i}?kind=input" for i in doc["shortlist"]]
    cdp.wait_for("Array.from(document.querySelectorAll('#shortlist img')).every(i => i.complete && i.naturalWidth > 0)")
    assert httpx.get(server.url + links[0]["href"]).headers["content-type"] == "image/png"

    for py, px in [(41, 22), (63, 63), (2, 50)]:  # (63, 63) lies past the last window: clipped
        click_pixel(cdp, box, py, px)
        fy, fx = min(py // stride, hq - 1), min(px // stride, wq - 1)
        want = {"image": field["image"][fy][fx], "y": field["y"][fy][fx], "x": field["x"][fy][fx]}
        got = wait_highlight(cdp, py, px)
        assert {k: got[k] for k in want} == want, (py, px)
        assert got["similarity"] == pytest.approx(field["similarity"][fy][fx], abs=1e-5)
        text = cdp.evaluate("document.getElementById('source-highlight').textContent")
        assert f"training image {want['image']}" in text
        current = cdp.evaluate("Array.from(document.querySelectorAll('#shortlist a.current')).map(a => +a.dataset.image)")
        assert current == [want["image"]]

        # the outline is drawn over the training image at (y*stride, x*stride), region wide, at
        # the canvas's scale (screen pixels)
        top, left = want["y"] * stride, want["x"] * stride
        for cid in ("source-image", "source-output"):
            s = cdp.evaluate(f"+document.getElementById('{cid}').dataset.scale")
            corners = cdp.evaluate(f"""(() => {{ const ctx = document.getElementById('{cid}').getContext('2d');
                const at = (x, y) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3));
                return [at({left * s}, {top * s}), at({(left + region) * s - 1}, {(top + region) * s - 1})]; }})()""")
            for rgb in corners:
                assert np.abs(np.asarray(rgb) - HIGHLIGHT_RGB).max() <= 2, (rgb, cid, py, px)

        # the magnified patches are the training image's block (input and output), enlarged
        for cid, kind in (("patch-source", "input"), ("patch-source-output", "target")):
            patch = canvas_pixels(cdp, cid)
            m = patch.shape[0] // region
            assert patch.shape == (region * m, region * m, 3) and m >= 4
            block = db_picture(server, want["image"], kind)[top:top + region, left:left + region]
            np.testing.assert_array_equal(patch[m // 2::m, m // 2::m], block)

    # a layer switch re-runs the query and keeps the clicked pixel
    cdp.evaluate("""(() => { const s = document.getElementById('layer-select'); s.value = 'decoder2';
        s.dispatchEvent(new Event('change')); return true; })()""")
    got = wait_highlight(cdp, 2, 50, layer="decoder2")
    doc2 = httpx.post(server.url + "/v1/query", json={"image_id": 3, "layer": "decoder2", "top_k": 5,
                                                      "keep_self": False}, timeout=60).json()
    s2 = doc2["spec"]["stride"]
    g2 = np.asarray(doc2["nn_field"]["image"])
    fy, fx = min(2 // s2, g2.shape[0] - 1), min(50 // s2, g2.shape[1] - 1)
    # (the sky is uniform: equally similar patches may tie, so the similarity is what must agree)
    assert got["similarity"] == pytest.approx(doc2["nn_field"]["similarity"][fy][fx], abs=1e-5)

    # export: the result as JSON, and one PNG of its pictures
    exported = json.loads(cdp.evaluate("compnnViewer.exportJSON().then(b => b.text())"))
    assert exported["layer"] == "decoder2" and exported["nn_field"] == doc2["nn_field"]
    assert exported["pinned_pixel"] == [2, 50]
    png_info = cdp.evaluate("compnnViewer.exportPNG().then(b => ({type: b.type, size: b.size}))")
    assert png_info["type"] == "image/png" and png_info["size"] > 1000

    shot = base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])
    img = Image.open(io.BytesIO(shot))
    assert img.size == (1400, 1100)
    (tmp_path / "viewer.png").write_bytes(shot)
    if os.environ.get("COMPNN_VIEWER_SCREENSHOT"):
        Path(os.environ["COMPNN_VIEWER_SCREENSHOT"]).write_bytes(shot)


def test_exact_and_patchmatch_side_by_side(browser, server):
    cdp = browser
    open_viewer(cdp, server.url)
    assert run_query(cdp, image_id=5, layer="decoder3", top_k=6, search="both", exclude_self=True) == "ready"
    assert not cdp.evaluate("document.getElementById('compare-panel').hidden")
    assert not cdp.evaluate("document.getElementById('search-toggle').hidden")
    ratio = float(cdp.evaluate("document.getElementById('agreement').dataset.ratio"))
    agreement = float(cdp.evaluate("document.getElementById('agreement').dataset.agreement"))
    assert 0 < ratio <= 1 + 1e-5 and 0 <= agreement <= 1
    assert "faster" in cdp.evaluate("document.getElementById('agreement').textContent")
    cdp.wait_for("['compare-exact', 'compare-patchmatch'].every(id => { const i = document.getElementById(id); "
                 "return i.complete && i.naturalWidth > 0; })")

    exact = httpx.post(server.url + "/v1/query", json={"image_id": 5, "layer": "decoder3", "top_k": 6,
                                                       "keep_self": False}, timeout=60).json()
    fields = {"exact": exact["nn_field"], "patchmatch": cdp.evaluate(
        "compnnViewer.state.results.patchmatch.nn_field")}
    stride = exact["spec"]["stride"]
    box = canvas_box(cdp)
    py, px = 30, 17
    fy, fx = py // stride, px // stride
    click_pixel(cdp, box, py, px)
    for search in ("exact", "patchmatch", "exact"):  # toggle which search drives the highlight
        cdp.evaluate(f"document.getElementById('active-{search}').click()")
        got = wait_highlight(cdp, py, px, search=search)
        f = fields[search]
        assert got["similarity"] == pytest.approx(f["similarity"][fy][fx], abs=1e-5), search
        if search == "patchmatch":  # the page's own field: exactly the match it names
            assert (got["image"], got["y"], got["x"]) == (f["image"][fy][fx], f["y"][fy][fx], f["x"][fy][fx])
        assert cdp.evaluate("document.getElementById('output-canvas').dataset.search") == search
        assert cdp.evaluate("document.getElementById('query-time').textContent").startswith(f"{search}:")


def test_correspond_two_images(browser, server):
    cdp = browser
    open_viewer(cdp, server.url)
    cdp.evaluate("""(() => { document.getElementById('corr-a').value = '2';
        document.getElementById('corr-b').value = '7'; document.getElementById('corr-run').click();
        return true; })()""")
    cdp.wait_for("!document.getElementById('corr-result').hidden && "
                 "document.getElementById('corr-canvas-a').dataset.image === '2'")
    doc = httpx.post(server.url + "/v1/correspond", json={"image_a_id": 2, "image_b_id": 7,
                                                          "layer": TINY_LAYERS[0]}, timeout=60).json()
    box = canvas_box(cdp, "corr-canvas-a")
    stride = doc["spec"]["stride"]
    click_pixel(cdp, box, 20, 33)
    fy, fx = 20 // stride, 33 // stride
    got = cdp.wait_for("(() => { const d = document.getElementById('corr-canvas-b').dataset; "
                       "return d.y === undefined ? null : {y: +d.y, x: +d.x}; })()")
    assert got == {"y": doc["nn_field"]["y"][fy][fx], "x": doc["nn_field"]["x"][fy][fx]}


def test_switches_restrict_and_patchmatch(browser, server):
    cdp = browser
    open_viewer(cdp, server.url)
    info = httpx.get(server.url + "/v1/index").json()
    material = info["meta_values"]["material"][0]
    allowed = {im["id"] for im in info["images"] if im["meta"]["material"] == material}
    options = cdp.evaluate("Array.from(document.querySelectorAll('#restrict-meta option')).map(o => o.value)")
    assert f"material={material}" in options

    first = lambda: int(cdp.evaluate("document.querySelector('#shortlist a').dataset.image"))  # noqa: E731
    assert run_query(cdp, image_id=1, layer="decoder2", top_k=1, restrict_meta=f"material={material}") == "ready"
    assert first() in allowed
    if len(allowed - {1}) >= 1:  # the meta filter combined with leaving the query image out
        assert run_query(cdp, image_id=1, layer="decoder2", top_k=1, exclude_self=True,
                         restrict_meta=f"material={material}") == "ready"
        assert first() in allowed - {1}

    assert run_query(cdp, image_id=1, layer="decoder2", top_k=4, search="patchmatch") == "ready"
    assert cdp.evaluate("document.getElementById('query-time').textContent").startswith("patchmatch:")

    # a refused query shows the server's message, and the page keeps working
    assert run_query(cdp, image_id=1, layer="decoder2", top_k=4, restrict_ids="99") == "error"
    assert "image id 99 does not exist" in cdp.evaluate("document.getElementById('status').textContent")
    assert run_query(cdp, image_id=2, layer="decoder2", top_k=4) == "ready"
