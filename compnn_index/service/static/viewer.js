// CompNN viewer: run a query against the index service and explore where each output pixel
// was copied from. Plain browser JavaScript, no build step and no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { index: null, result: null, pinned: null, images: new Map() };

function setStatus(text, isError) {
  const el = $("status");
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

function loadImage(url) {
  if (!state.images.has(url)) {
    state.images.set(url, new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error(`cannot load ${url}`));
      img.src = url;
    }));
  }
  return state.images.get(url);
}

function option(value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  return o;
}

// ------------------------------------------------------------------ index metadata → controls
async function init() {
  const info = await fetchJSON("/v1/index");
  state.index = info;
  const [h, w] = info.image_size;
  const model = info.model && info.model.arch ? `${info.model.arch}, ` : "";
  $("index-info").textContent =
    `${info.num_images} database images of ${w}×${h} px · ${model}task ${info.task} · ` +
    `layers ${info.layers.join(", ")}`;

  const sel = $("image-select");
  for (const im of info.images) sel.appendChild(option(String(im.id), `${im.id}: ${im.name}`));

  const layerSel = $("layer-select");
  for (const layer of info.layers) {
    const s = info.specs[layer];
    layerSel.appendChild(option(layer, `${layer} (stride ${s.stride}, ${s.k}×${s.k})`));
  }

  const pm = $("search-patchmatch");
  if (!info.searches.includes("patchmatch")) {
    pm.disabled = true;
    pm.parentElement.title = info.patchmatch_error || "HyperPatch-Match is not available";
  }

  const topk = $("top-k");
  topk.max = info.num_images;
  topk.value = Math.min(16, info.num_images);

  const restrict = $("restrict-meta");
  for (const [key, values] of Object.entries(info.meta_values || {})) {
    const group = document.createElement("optgroup");
    group.label = key;
    for (const v of values) group.appendChild(option(`${key}=${v}`, `${key} = ${v}`));
    restrict.appendChild(group);
  }

  $("upload").addEventListener("change", () => {
    if ($("upload").files.length) sel.value = "";
  });
  sel.addEventListener("change", () => { $("upload").value = ""; });
  $("controls").addEventListener("submit", (ev) => { ev.preventDefault(); runQuery(); });

  const canvas = $("output-canvas");
  canvas.addEventListener("mousemove", (ev) => { if (!state.pinned) selectAt(ev); });
  canvas.addEventListener("click", (ev) => { state.pinned = selectAt(ev); });
  canvas.addEventListener("mouseleave", () => { if (state.pinned) highlight(...state.pinned); });
  document.body.dataset.state = "idle";
  setStatus("");
}

// ------------------------------------------------------------------ queries
function queryForm() {
  const form = new FormData();
  const file = $("upload").files[0];
  if (file) form.append("image", file);
  else form.append("image_id", $("image-select").value);
  form.append("layer", $("layer-select").value);
  const search = document.querySelector("input[name=search]:checked").value;
  form.append("search", search);
  if (search === "patchmatch") {
    form.append("iterations", $("iterations").value);
    form.append("init", $("init").value);
  }
  form.append("top_k", $("top-k").value);
  const restrict = restriction(file ? null : Number($("image-select").value));
  if (restrict) form.append("restrict", restrict);
  form.append("sources", "target,input");
  return form;
}

// Python's str() of a meta value, as the server compares them ("True", not "true").
const pyStr = (v) => (typeof v === "boolean" ? (v ? "True" : "False") : String(v));

// The database restriction: an id list, a KEY=VALUE meta filter, or nothing; with "leave the
// query image out" and a database query image, the explicit id list without that image.
function restriction(selfId) {
  const ids = $("restrict-ids").value.trim();
  const meta = $("restrict-meta").value;
  if (!$("exclude-self").checked || selfId === null) return ids || meta || null;
  const images = state.index.images;
  let pool;
  if (ids) {
    pool = ids.split(",").map((s) => s.trim()).filter(Boolean);
  } else if (meta) {
    const eq = meta.indexOf("=");
    const key = meta.slice(0, eq), value = meta.slice(eq + 1);
    pool = images.filter((im) => pyStr(im.meta[key]) === value).map((im) => String(im.id));
  } else {
    pool = images.map((im) => String(im.id));
  }
  pool = pool.filter((s) => s !== String(selfId) && s !== images[selfId].name);
  if (!pool.length) throw new Error("no database image is left once the query image is left out");
  return pool.join(",");
}

async function runQuery() {
  document.body.dataset.state = "running";
  setStatus("running…");
  $("run").disabled = true;
  const t0 = performance.now();
  try {
    const body = queryForm();
    const res = await fetchJSON("/v1/query", { method: "POST", body });
    const rtt = (performance.now() - t0) / 1000;
    await showResult(res);
    const t = res.timings;
    $("query-time").textContent =
      `${res.search}: ${t.total.toFixed(3)} s (search ${t.search.toFixed(3)} s, ` +
      `round trip ${rtt.toFixed(3)} s)`;
    setStatus("");
    document.body.dataset.state = "ready";
  } catch (err) {
    setStatus(err.message, true);
    document.body.dataset.state = "error";
  } finally {
    $("run").disabled = false;
  }
}

async function showResult(res) {
  state.result = res;
  state.pinned = null;
  const links = res.links;
  $("input-image").src = links.input;
  $("correspondence-map").src = links.correspondence_map;

  const recon = $("reconstructions");
  recon.replaceChildren();
  for (const [name, url] of Object.entries(links)) {
    if (!name.startsWith("reconstruction_")) continue;
    const fig = document.createElement("figure");
    const cap = document.createElement("figcaption");
    cap.textContent = `CompNN reconstruction (training ${name.slice("reconstruction_".length)}s)`;
    const img = document.createElement("img");
    img.id = name.replace("_", "-");
    img.src = url;
    img.alt = cap.textContent;
    fig.append(cap, img);
    recon.appendChild(fig);
  }

  const out = await loadImage(links.output);
  const canvas = $("output-canvas");
  canvas.width = out.naturalWidth;
  canvas.height = out.naturalHeight;
  canvas.dataset.queryId = res.query_id;
  drawOutput(null);

  $("shortlist").textContent = res.shortlist
    .map((id, i) => `${id} (${res.shortlist_similarity[i].toFixed(3)})`).join(", ");
  const hl = $("source-highlight");
  delete hl.dataset.image; delete hl.dataset.y; delete hl.dataset.x;
  hl.textContent = "click an output pixel";
}

// ------------------------------------------------------------------ pixel → source patch
// The query pixel (py, px) lies in the hyperpatch at feature position (py // stride, px // stride),
// clipped to the NN field's grid; that position was matched to (image, y, x), which stands for
// the region×region pixel block at (y*stride, x*stride) of that training image.
function matchAt(py, px) {
  const res = state.result;
  const f = res.nn_field;
  const stride = res.spec.stride;
  const fy = Math.max(0, Math.min(f.image.length - 1, Math.floor(py / stride)));
  const fx = Math.max(0, Math.min(f.image[0].length - 1, Math.floor(px / stride)));
  return {
    fy, fx, image: f.image[fy][fx], y: f.y[fy][fx], x: f.x[fy][fx],
    similarity: f.similarity[fy][fx], stride, region: res.spec.region,
  };
}

function pixelOf(ev) {
  const canvas = $("output-canvas");
  const rect = canvas.getBoundingClientRect();
  const px = Math.floor((ev.clientX - rect.left) * canvas.width / rect.width);
  const py = Math.floor((ev.clientY - rect.top) * canvas.height / rect.height);
  return [Math.max(0, Math.min(canvas.height - 1, py)), Math.max(0, Math.min(canvas.width - 1, px))];
}

function selectAt(ev) {
  if (!state.result) return null;
  const [py, px] = pixelOf(ev);
  highlight(py, px);
  return [py, px];
}

function drawRect(ctx, x, y, size, color) {
  ctx.strokeStyle = color;
  ctx.lineWidth = Math.max(1, ctx.canvas.width / 128);
  ctx.strokeRect(x + 0.5, y + 0.5, size - 1, size - 1);
}

async function drawOutput(m) {
  const out = await loadImage(state.result.links.output);
  const ctx = $("output-canvas").getContext("2d");
  ctx.drawImage(out, 0, 0);
  if (m) drawRect(ctx, m.fx * m.stride, m.fy * m.stride, m.region, "#e8336d");
}

async function highlight(py, px) {
  const m = matchAt(py, px);
  const hl = $("source-highlight");
  hl.dataset.image = m.image;
  hl.dataset.y = m.y;
  hl.dataset.x = m.x;
  hl.dataset.py = py;
  hl.dataset.px = px;
  hl.dataset.similarity = m.similarity;
  const info = state.index.images[m.image] || { name: "?" };
  hl.textContent = `pixel (${py}, ${px}) → training image ${m.image} (${info.name}), ` +
    `patch at (${m.y * m.stride}, ${m.x * m.stride}) px, ${m.region}×${m.region}; ` +
    `similarity ${m.similarity.toFixed(3)}`;
  drawOutput(m);
  const src = await loadImage(`/v1/images/${m.image}?kind=input`);
  if (hl.dataset.image !== String(m.image) || hl.dataset.py !== String(py) || hl.dataset.px !== String(px)) return;
  const canvas = $("source-image");
  canvas.width = src.naturalWidth;
  canvas.height = src.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(src, 0, 0);
  drawRect(ctx, m.x * m.stride, m.y * m.stride, m.region, "#e8336d");
  canvas.dataset.image = m.image;
  canvas.dataset.y = m.y;
  canvas.dataset.x = m.x;
}

init().catch((err) => {
  setStatus(`cannot load the index: ${err.message}`, true);
  document.body.dataset.state = "error";
});
