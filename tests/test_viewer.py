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

from compnn_index.service.background import BackgroundServer
from compnn_index.service.server import create_app

from conftest import TINY_IMAGES, TINY_SIZE

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
    with BackgroundServer(create_app(index_dir, workers=2, threads=1)) as srv:
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
    return cdp.wait_for("['ready', 'error'].includes(document.body.dataset.state) && "
                        "document.body.dataset.state")


def test_click_highlights_the_matched_source_patch(browser, server, tmp_path):
    cdp = browser
    open_viewer(cdp, server.url)
    assert run_query(cdp, image_id=3, layer="decoder3", top_k=5, exclude_self=True) == "ready"
    assert cdp.evaluate("document.getElementById('query-time').textContent").startswith("exact:")

    # the same query over HTTP: the NN field the highlight must agree with
    others = [i for i in range(TINY_IMAGES) if i != 3]  # "leave the query image out"
    doc = httpx.post(server.url + "/v1/query", json={"image_id": 3, "layer": "decoder3", "top_k": 5,
                                                     "restrict": others}, timeout=60).json()
    assert 3 not in np.unique(doc["nn_field"]["image"])
    field, stride, region = doc["nn_field"], doc["spec"]["stride"], doc["spec"]["region"]
    hq, wq = np.asarray(field["image"]).shape
    canvas = cdp.evaluate("""(() => { const c = document.getElementById('output-canvas');
        const r = c.getBoundingClientRect();
        return {left: r.left, top: r.top, width: r.width, height: r.height, w: c.width, h: c.height}; })()""")
    assert (canvas["h"], canvas["w"]) == (TINY_SIZE, TINY_SIZE)

    for py, px in [(41, 22), (63, 63), (2, 50)]:  # (63, 63) lies past the last window: clipped
        x = canvas["left"] + (px + 0.5) * canvas["width"] / canvas["w"]
        y = canvas["top"] + (py + 0.5) * canvas["height"] / canvas["h"]
        cdp.click(x, y)
        fy, fx = min(py // stride, hq - 1), min(px // stride, wq - 1)
        want = {"image": field["image"][fy][fx], "y": field["y"][fy][fx], "x": field["x"][fy][fx]}
        got = cdp.wait_for(f"""(() => {{ const h = document.getElementById('source-highlight').dataset;
            const c = document.getElementById('source-image').dataset;
            if (h.py !== '{py}' || h.px !== '{px}' || c.image !== h.image || c.y !== h.y || c.x !== h.x) return null;
            return {{image: +h.image, y: +h.y, x: +h.x, similarity: +h.similarity}}; }})()""")
        assert {k: got[k] for k in want} == want, (py, px)
        assert got["similarity"] == pytest.approx(field["similarity"][fy][fx], abs=1e-5)
        text = cdp.evaluate("document.getElementById('source-highlight').textContent")
        assert f"training image {want['image']}" in text

        # the rectangle is drawn over the training image at (y*stride, x*stride), region wide
        top, left = want["y"] * stride, want["x"] * stride
        corners = cdp.evaluate(f"""(() => {{ const ctx = document.getElementById('source-image').getContext('2d');
            const at = (x, y) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3));
            return [at({left}, {top}), at({left + region - 1}, {top + region - 1})]; }})()""")
        for rgb in corners:
            assert np.abs(np.asarray(rgb) - HIGHLIGHT_RGB).max() <= 2, (rgb, py, px)

    shot = base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])
    img = Image.open(io.BytesIO(shot))
    assert img.size == (1400, 1100)
    (tmp_path / "viewer.png").write_bytes(shot)
    if os.environ.get("COMPNN_VIEWER_SCREENSHOT"):
        Path(os.environ["COMPNN_VIEWER_SCREENSHOT"]).write_bytes(shot)


def test_switches_restrict_and_patchmatch(browser, server):
    cdp = browser
    open_viewer(cdp, server.url)
    info = httpx.get(server.url + "/v1/index").json()
    material = info["meta_values"]["material"][0]
    allowed = {im["id"] for im in info["images"] if im["meta"]["material"] == material}
    options = cdp.evaluate("Array.from(document.querySelectorAll('#restrict-meta option')).map(o => o.value)")
    assert f"material={material}" in options

    assert run_query(cdp, image_id=1, layer="decoder2", top_k=1, restrict_meta=f"material={material}") == "ready"
    shortlist = cdp.evaluate("document.getElementById('shortlist').textContent")
    assert int(shortlist.split(" ")[0]) in allowed
    if len(allowed - {1}) >= 1:  # the meta filter combined with leaving the query image out
        assert run_query(cdp, image_id=1, layer="decoder2", top_k=1, exclude_self=True,
                         restrict_meta=f"material={material}") == "ready"
        shortlist = cdp.evaluate("document.getElementById('shortlist').textContent")
        assert int(shortlist.split(" ")[0]) in allowed - {1}

    if "patchmatch" in info["searches"]:
        assert run_query(cdp, image_id=1, layer="decoder2", top_k=4, search="patchmatch") == "ready"
        assert cdp.evaluate("document.getElementById('query-time').textContent").startswith("patchmatch:")

    # a refused query shows the server's message, and the page keeps working
    assert run_query(cdp, image_id=1, layer="decoder2", top_k=4, restrict_ids="99") == "error"
    assert "image id 99 does not exist" in cdp.evaluate("document.getElementById('status').textContent")
    assert run_query(cdp, image_id=2, layer="decoder2", top_k=4) == "ready"
