// CompNN viewer: run a query against the index service and explore where each output pixel
// was copied from. Plain browser JavaScript, no build step and no external resources.
// Requests are JSON (database images) or multipart (uploads), never url-encoded forms.
"use strict";

const $ = (id) => document.getElementById(id);
const ACCENT = "#e8336d";
const DISPLAY = 320;       // target on-screen size of the output and training images, px
const PATCH_DISPLAY = 120; // target size of a magnified patch, px
const state = {
  index: null, results: {}, active: "exact", pinned: null, images: new Map(), busy: false,
  corr: null,
};

function setStatus(text, isError, el) {
  el = el || $("status");
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

async function fetchJSON(url, options) {
  const resp = await fetch(url, options);
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    const msg = body && body.error ? body.error : `HTTP ${resp.status}`;
    throw new Error(msg);
  }
  return body;
}

const postJSON = (url, doc) => fetchJSON(url, {
  method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(doc),
});

function loadImage(url) {
  if (!state.images.has(url)) {
    state.images.set(url, new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => { state.images.delete(url); reject(new Error(`cannot load ${url}`)); };
      img.src = url;
    }));
  }
  return state.images.get(url);
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

const option = (value, text) => el("option", { value, text });
const dbImage = (id, kind) => `/v1/images/${id}?kind=${kind}`;
const imageName = (id) => (state.index.images[id] || { name: "?" }).name;

// ------------------------------------------------------------------ drawing helpers
// Pictures are drawn enlarged by an integer factor with smoothing off, so every image pixel is
// a visible block and outlines can be drawn at screen resolution.
function scaleFor(w, target) { return Math.max(1, Math.floor((target || DISPLAY) / w)); }

function drawScaled(canvas, img, scale) {
  canvas.width = img.naturalWidth * scale;
  canvas.height = img.naturalHeight * scale;
  canvas.dataset.scale = scale;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  return ctx;
}

// A region×region block at image pixel (x, y), outlined on a canvas drawn at `scale`: a white
// casing for contrast on any background, then the accent colour centred on the block's border.
function outlineBlock(ctx, x, y, size, scale) {
  const X = x * scale, Y = y * scale, S = size * scale;
  ctx.lineWidth = 5; ctx.strokeStyle = "rgba(255,255,255,0.9)";
  ctx.strokeRect(X, Y, S, S);
  ctx.lineWidth = 3; ctx.strokeStyle = ACCENT;
  ctx.strokeRect(X, Y, S, S);
}

function magnify(canvas, img, x, y, size) {
  const m = Math.max(2, Math.floor(PATCH_DISPLAY / size));
  canvas.width = size * m;
  canvas.height = size * m;
  canvas.dataset.magnification = m;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(img, x, y, size, size, 0, 0, size * m, size * m);
}

// ------------------------------------------------------------------ index metadata → controls
async function init() {
  const info = await fetchJSON("/v1/index");
  state.index = info;
  const [h, w] = info.image_size;
  const model = info.model && info.model.arch ? `${info.model.arch}, ` : "";
  const kernel = info.native_kernel ? "native kernel" : "NumPy fallback";
  $("index-info").textContent =
    `${info.num_images} database images of ${w}×${h} px · ${model}task ${info.task} · ` +
    `layers ${info.layers.join(", ")} · HyperPatch-Match: ${kernel}`;

  for (const sel of [$("image-select"), $("corr-a"), $("corr-b")]) {
    for (const im of info.images) sel.appendChild(option(String(im.id), `${im.id}: ${im.name}`));
  }
  if (info.images.length > 1) $("corr-b").value = "1";

  const layerSel = $("layer-select");
  for (const layer of info.layers) {
    const s = info.specs[layer];
    layerSel.appendChild(option(layer, `${layer} (stride ${s.stride}, ${s.region}×${s.region} px)`));
  }

  const topk = $("top-k");
  topk.max = info.num_images;
  topk.value = Math.min(16, Math.max(1, info.num_images - 1));

  const restrict = $("restrict-meta");
  for (const [key, values] of Object.entries(info.meta_values || {})) {
    const group = el("optgroup", { label: key });
    for (const v of values) group.appendChild(option(`${key}=${v}`, `${key} = ${v}`));
    restrict.appendChild(group);
  }
  drawClassLegend();

  const sel = $("image-select");
  $("upload").addEventListener("change", () => { if ($("upload").files.length) sel.value = ""; });
  sel.addEventListener("change", () => { $("upload").value = ""; });
  $("controls").addEventListener("submit", (ev) => { ev.preventDefault(); runQuery(); });
  layerSel.addEventListener("change", () => { if (Object.keys(state.results).length && !state.busy) runQuery(); });
  for (const r of document.querySelectorAll("input[name=active]")) {
    r.addEventListener("change", () => setActive(r.value));
  }
  $("export-png").addEventListener("click", () => exportPNG().then((b) => download(b, "png")));
  $("export-json").addEventListener("click", () => exportJSON().then((b) => download(b, "json")));

  const canvas = $("output-canvas");
  canvas.addEventListener("mousemove", (ev) => { if (!state.pinned) selectAt(ev, false); });
  canvas.addEventListener("click", (ev) => { selectAt(ev, true); });
  canvas.addEventListener("mouseleave", () => { if (state.pinned) highlight(...state.pinned); });

  $("correspond-controls").addEventListener("submit", (ev) => { ev.preventDefault(); runCorrespond(); });
  $("corr-canvas-a").addEventListener("click", (ev) => correspondAt(ev));
  document.body.dataset.state = "idle";
  setStatus("");
}

function drawClassLegend() {
  const info = state.index;
  const box = $("class-legend");
  box.replaceChildren();
  if (info.task !== "segment" || !info.palette) return;
  info.palette.forEach((rgb, i) => {
    const name = (info.class_names && info.class_names[i]) || `class ${i}`;
    const swatch = el("i");
    swatch.style.backgroundColor = `rgb(${rgb.join(",")})`; // CSSOM: allowed by the page's CSP
    box.appendChild(el("span", { class: "entry", "data-class": i }, swatch, name));
  });
}

// ------------------------------------------------------------------ queries
// How many database images a query may search: the restriction, minus the query image.
function candidateCount(selfId) {
  const images = state.index.images;
  const ids = $("restrict-ids").value.trim();
  const meta = $("restrict-meta").value;
  let pool;
  if (ids) pool = ids.split(",").map((s) => s.trim()).filter(Boolean);
  else if (meta) {
    const eq = meta.indexOf("=");
    const key = meta.slice(0, eq), value = meta.slice(eq + 1);
    pool = images.filter((im) => pyStr(im.meta[key]) === value).map((im) => String(im.id));
  } else pool = images.map((im) => String(im.id));
  if (selfId !== null && $("exclude-self").checked) {
    pool = pool.filter((s) => s !== String(selfId) && s !== images[selfId].name);
  }
  return pool.length;
}

// Python's str() of a meta value, as the server compares them ("True", not "true").
const pyStr = (v) => (typeof v === "boolean" ? (v ? "True" : "False") : String(v));

function queryRequest(search) {
  const file = $("upload").files[0];
  const selfId = file ? null : Number($("image-select").value);
  const doc = { layer: $("layer-select").value, search, sources: ["target", "input"] };
  if (search === "patchmatch") {
    doc.iterations = Number($("iterations").value);
    doc.init = $("init").value;
  }
  const left = candidateCount(selfId);
  let k = Number($("top-k").value);
  if (left > 0 && k > left) k = left; // the shortlist cannot be longer than the database left
  doc.top_k = k;
  const restrict = $("restrict-ids").value.trim() || $("restrict-meta").value;
  if (restrict) doc.restrict = restrict;
  if (file) {
    const form = new FormData(); // multipart: the upload and the options as fields
    form.append("image", file);
    for (const [key, v] of Object.entries(doc)) form.append(key, Array.isArray(v) ? v.join(",") : String(v));
    return () => fetchJSON("/v1/query", { method: "POST", body: form });
  }
  doc.image_id = selfId;
  doc.keep_self = !$("exclude-self").checked;
  return () => postJSON("/v1/query", doc);
}

async function runQuery() {
  state.busy = true;
  document.body.dataset.state = "running";
  setStatus("running…");
  $("run").disabled = true;
  const t0 = performance.now();
  try {
    const choice = document.querySelector("input[name=search]:checked").value;
    const searches = choice === "both" ? ["exact", "patchmatch"] : [choice];
    const answers = await Promise.all(searches.map((s) => queryRequest(s)()));
    const rtt = (performance.now() - t0) / 1000;
    state.results = {};
    searches.forEach((s, i) => { state.results[s] = answers[i]; });
    const active = state.results[state.active] ? state.active : searches[0];
    $(`active-${active}`).checked = true;
    await setActive(active, { rtt });
    showComparison();
    setStatus("");
    document.body.dataset.state = "ready";
  } catch (err) {
    setStatus(err.message, true);
    document.body.dataset.state = "error";
  } finally {
    $("run").disabled = false;
    state.busy = false;
  }
}

const fmt = (s) => `${s.toFixed(3)} s`;

async function setActive(search, opts) {
  state.active = search;
  const res = state.results[search];
  if (!res) return;
  const t = res.timings;
  const rtt = opts && opts.rtt !== undefined ? `, round trip ${fmt(opts.rtt)}` : "";
  $("query-time").textContent = `${res.search}: ${fmt(t.total)} (search ${fmt(t.search)}${rtt})`;
  await showResult(res);
  if (state.pinned) await highlight(...state.pinned);
}

async function showResult(res) {
  $("empty-hint").hidden = true;
  $("result").hidden = false;
  $("search-toggle").hidden = Object.keys(state.results).length < 2;
  for (const b of [$("export-png"), $("export-json")]) b.disabled = false;
  const links = res.links;
  $("input-image").src = links.input;
  $("correspondence-map").src = links.correspondence_map;

  const recon = $("reconstructions");
  recon.replaceChildren();
  for (const [name, url] of Object.entries(links)) {
    if (!name.startsWith("reconstruction_")) continue;
    const what = name.slice("reconstruction_".length);
    const text = what === "input" ? "CompNN: training inputs pasted" : "CompNN: training outputs pasted";
    recon.appendChild(el("figure", {}, el("figcaption", { text }),
      el("img", { id: name.replace("_", "-"), src: url, alt: text })));
  }

  const out = await loadImage(links.output);
  const canvas = $("output-canvas");
  drawScaled(canvas, out, scaleFor(out.naturalWidth));
  canvas.dataset.queryId = res.query_id;
  canvas.dataset.search = res.search;
  canvas.dataset.layer = res.layer;
  canvas.dataset.w = out.naturalWidth;
  canvas.dataset.h = out.naturalHeight;
  showShortlist(res, null);
  if (!state.pinned) {
    const hl = $("source-highlight");
    for (const k of Object.keys(hl.dataset)) delete hl.dataset[k];
    hl.textContent = "click an output pixel";
  }
}

function showShortlist(res, current) {
  const box = $("shortlist");
  box.replaceChildren();
  res.shortlist.forEach((id, i) => {
    const a = el("a", { href: dbImage(id, "input"), target: "_blank", "data-image": id,
                        title: `training image ${id} (${imageName(id)}): global similarity ${res.shortlist_similarity[i].toFixed(4)}` },
      el("img", { src: dbImage(id, "input"), alt: `training image ${id}` }),
      el("span", { text: `#${id} · ${res.shortlist_similarity[i].toFixed(3)}` }));
    if (id === current) a.classList.add("current");
    box.appendChild(a);
  });
}

function showComparison() {
  const ex = state.results.exact, pm = state.results.patchmatch;
  $("compare-panel").hidden = !(ex && pm);
  if (!(ex && pm)) return;
  const fe = ex.nn_field, fp = pm.nn_field;
  let same = 0, ratio = 0, n = 0;
  for (let i = 0; i < fe.image.length; i++) {
    for (let j = 0; j < fe.image[i].length; j++) {
      n += 1;
      if (fe.image[i][j] === fp.image[i][j] && fe.y[i][j] === fp.y[i][j] && fe.x[i][j] === fp.x[i][j]) same += 1;
      ratio += fp.similarity[i][j] / Math.max(fe.similarity[i][j], 1e-6);
    }
  }
  const speed = ex.timings.search / Math.max(pm.timings.search, 1e-9);
  const p = $("agreement");
  p.dataset.agreement = (same / n).toFixed(6);
  p.dataset.ratio = (ratio / n).toFixed(6);
  p.textContent = `HyperPatch-Match found the exact match at ${(100 * same / n).toFixed(1)}% of ` +
    `${n} positions; mean similarity ratio to exact ${(ratio / n).toFixed(4)}; search ` +
    `${fmt(pm.timings.search)} vs exact ${fmt(ex.timings.search)} (${speed.toFixed(1)}× faster).`;
  $("compare-exact").src = ex.links.reconstruction_target;
  $("compare-patchmatch").src = pm.links.reconstruction_target;
  $("compare-exact-caption").textContent = `exact search: ${fmt(ex.timings.search)}`;
  $("compare-patchmatch-caption").textContent =
    `HyperPatch-Match (${pm.params.iterations} iterations, ${pm.params.init}): ${fmt(pm.timings.search)}`;
}

// ------------------------------------------------------------------ pixel → source patch
// The query pixel (py, px) lies in the hyperpatch at feature position (py // stride, px // stride),
// clipped to the NN field's grid; that position was matched to (image, y, x), which stands for
// the region×region pixel block at (y*stride, x*stride) of that training image.
function fieldAt(res, py, px) {
  const f = res.nn_field;
  const stride = res.spec.stride;
  const fy = Math.max(0, Math.min(f.image.length - 1, Math.floor(py / stride)));
  const fx = Math.max(0, Math.min(f.image[0].length - 1, Math.floor(px / stride)));
  return {
    fy, fx, image: f.image[fy][fx], y: f.y[fy][fx], x: f.x[fy][fx],
    similarity: f.similarity[fy][fx], stride, region: res.spec.region,
  };
}

function pixelOf(ev, canvas) {
  const rect = canvas.getBoundingClientRect();
  const w = Number(canvas.dataset.w || canvas.width), h = Number(canvas.dataset.h || canvas.height);
  const px = Math.floor((ev.clientX - rect.left) * w / rect.width);
  const py = Math.floor((ev.clientY - rect.top) * h / rect.height);
  return [Math.max(0, Math.min(h - 1, py)), Math.max(0, Math.min(w - 1, px))];
}

function selectAt(ev, pin) {
  const res = state.results[state.active];
  if (!res) return;
  const [py, px] = pixelOf(ev, $("output-canvas"));
  if (pin) state.pinned = [py, px];
  highlight(py, px);
}

async function drawOutput(res, m) {
  const out = await loadImage(res.links.output);
  const canvas = $("output-canvas");
  const ctx = drawScaled(canvas, out, Number(canvas.dataset.scale) || scaleFor(out.naturalWidth));
  if (m) outlineBlock(ctx, m.fx * m.stride, m.fy * m.stride, m.region, Number(canvas.dataset.scale));
}

async function highlight(py, px) {
  const res = state.results[state.active];
  const m = fieldAt(res, py, px);
  const hl = $("source-highlight");
  Object.assign(hl.dataset, { image: m.image, y: m.y, x: m.x, py, px, similarity: m.similarity,
                              search: res.search, layer: res.layer });
  hl.textContent = `pixel (${py}, ${px}) → training image ${m.image} (${imageName(m.image)}), ` +
    `patch at (${m.y * m.stride}, ${m.x * m.stride}) px, ${m.region}×${m.region}; ` +
    `similarity ${m.similarity.toFixed(3)} · ${res.search}, layer ${res.layer}`;
  drawOutput(res, m);
  showShortlist(res, m.image);
  const [src, srcOut, query] = await Promise.all([
    loadImage(dbImage(m.image, "input")), loadImage(dbImage(m.image, "target")), loadImage(res.links.input)]);
  // a later click may have superseded this one while the images loaded
  if (hl.dataset.image !== String(m.image) || hl.dataset.py !== String(py) || hl.dataset.px !== String(px)
      || hl.dataset.search !== res.search || hl.dataset.layer !== res.layer) return;
  const top = m.y * m.stride, left = m.x * m.stride;
  for (const [canvas, img] of [[$("source-image"), src], [$("source-output"), srcOut]]) {
    const scale = scaleFor(img.naturalWidth);
    outlineBlock(drawScaled(canvas, img, scale), left, top, m.region, scale);
    Object.assign(canvas.dataset, { image: m.image, y: m.y, x: m.x });
  }
  magnify($("patch-query"), query, m.fx * m.stride, m.fy * m.stride, m.region);
  magnify($("patch-source"), src, left, top, m.region);
  magnify($("patch-source-output"), srcOut, left, top, m.region);
  for (const c of [$("patch-source"), $("patch-source-output")]) Object.assign(c.dataset, { image: m.image, y: m.y, x: m.x });
}

// ------------------------------------------------------------------ export
async function exportJSON() {
  const res = state.results[state.active];
  const doc = { ...res, compared: Object.keys(state.results).length > 1 ? state.results : undefined,
                pinned_pixel: state.pinned };
  return new Blob([JSON.stringify(doc, null, 1)], { type: "application/json" });
}

// One PNG: input, output, reconstructions (at the output canvas's scale), then the map.
async function exportPNG() {
  const res = state.results[state.active];
  const names = ["input", "output", ...Object.keys(res.links).filter((n) => n.startsWith("reconstruction_"))];
  const tiles = await Promise.all(names.map((n) => loadImage(res.links[n])));
  const map = await loadImage(res.links.correspondence_map);
  const s = Number($("output-canvas").dataset.scale) || 1, pad = 8;
  const w = Math.max(tiles.reduce((a, t) => a + t.naturalWidth * s + pad, pad), map.naturalWidth + 2 * pad);
  const h = pad + Math.max(...tiles.map((t) => t.naturalHeight * s)) + pad + map.naturalHeight + pad;
  const canvas = el("canvas", { width: w, height: h });
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "white"; ctx.fillRect(0, 0, w, h);
  ctx.imageSmoothingEnabled = false;
  let x = pad;
  for (const t of tiles) { ctx.drawImage(t, x, pad, t.naturalWidth * s, t.naturalHeight * s); x += t.naturalWidth * s + pad; }
  ctx.drawImage(map, pad, pad + Math.max(...tiles.map((t) => t.naturalHeight * s)) + pad);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

function download(blob, ext) {
  const res = state.results[state.active];
  const a = el("a", { href: URL.createObjectURL(blob), download: `compnn-${res.search}-${res.query_id}.${ext}` });
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

// ------------------------------------------------------------------ correspond two images
async function runCorrespond() {
  const status = $("corr-status");
  setStatus("running…", false, status);
  $("corr-run").disabled = true;
  try {
    const a = Number($("corr-a").value), b = Number($("corr-b").value);
    const res = await postJSON("/v1/correspond", { image_a_id: a, image_b_id: b, layer: $("layer-select").value });
    state.corr = res;
    $("corr-result").hidden = false;
    $("corr-lines").src = res.links.correspondence;
    const [ia, ib] = await Promise.all([loadImage(dbImage(a, "input")), loadImage(dbImage(b, "input"))]);
    const ca = $("corr-canvas-a");
    drawScaled(ca, ia, scaleFor(ia.naturalWidth, DISPLAY * 0.8));
    Object.assign(ca.dataset, { w: ia.naturalWidth, h: ia.naturalHeight, image: a });
    drawScaled($("corr-canvas-b"), ib, scaleFor(ib.naturalWidth, DISPLAY * 0.8));
    $("corr-canvas-b").dataset.image = b;
    setStatus(`layer ${res.layer}: ${fmt(res.timings.total)}`, false, status);
  } catch (err) {
    setStatus(err.message, true, status);
  } finally {
    $("corr-run").disabled = false;
  }
}

async function correspondAt(ev) {
  const res = state.corr;
  if (!res) return;
  const ca = $("corr-canvas-a"), cb = $("corr-canvas-b");
  const [py, px] = pixelOf(ev, ca);
  const m = fieldAt(res, py, px);
  const [ia, ib] = await Promise.all([loadImage(dbImage(ca.dataset.image, "input")),
                                      loadImage(dbImage(cb.dataset.image, "input"))]);
  outlineBlock(drawScaled(ca, ia, Number(ca.dataset.scale)), m.fx * m.stride, m.fy * m.stride, m.region, Number(ca.dataset.scale));
  outlineBlock(drawScaled(cb, ib, Number(cb.dataset.scale)), m.x * m.stride, m.y * m.stride, m.region, Number(cb.dataset.scale));
  Object.assign(cb.dataset, { y: m.y, x: m.x, similarity: m.similarity });
}

window.compnnViewer = { exportJSON, exportPNG, state };

init().catch((err) => {
  setStatus(`cannot load the index: ${err.message}`, true);
  document.body.dataset.state = "error";
});
