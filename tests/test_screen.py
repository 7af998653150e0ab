"""The screening sidecar: a valid bound, the same HyperPatch-Match field with fewer reads, and a
store file that build, compress and upgrade write atomically and loading checks."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from compnn_index.cli import main
from compnn_index.data import open_dataset
from compnn_index.errors import IndexStoreError
from compnn_index.index import IndexStore, build_index, compress_store
from compnn_index.index import screen as screen_mod
from compnn_index.index.layer import LayerVectors
from compnn_index.index.screen import MARGIN, WIDTH, compute_screen, encode, fit_basis
from compnn_index.index.screen_store import add_screens, upgrade_screens
from compnn_index.models import build_model
from compnn_index.search.hyperpatchmatch import patchmatch, patchmatch_reference

_hpm = pytest.importorskip("compnn_index.search._hpm", reason="native kernel not built")

SIZE = 32


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def _low_rank_layer(rng, n_img=6, h=14, w=15, d=48, rank=6):
    """Unit vectors with most energy in a few directions (as real hyperpatches), per image."""
    x = rng.standard_normal((n_img * h * w, rank)) @ rng.standard_normal((rank, d))
    x += 0.35 * rng.standard_normal(x.shape)
    return _unit(x), np.tile([h, w], (n_img, 1))


@pytest.fixture(scope="module")
def dataset():
    return open_dataset("synthetic", size=SIZE, limit=4)


@pytest.fixture(scope="module")
def model():
    return build_model("unet", task="translate", out_channels=3, ngf=4, size=SIZE).eval()


@pytest.fixture(scope="module")
def store(tmp_path_factory, model, dataset):
    return build_index(model, dataset, layers=["decoder2"], out=tmp_path_factory.mktemp("scr") / "s",
                       batch_size=2, progress=False)


# ------------------------------------------------------------------------------------------------
# The bound


def test_bound_is_never_below_the_similarity_it_screens():
    rng = np.random.default_rng(0)
    v, _ = _low_rank_layer(rng)
    basis = fit_basis(v[::3])
    rows = encode(v, basis).astype(np.float64)
    sc = screen_mod.Screen(basis, encode(v, basis))
    q = _unit(v[rng.integers(0, len(v), 300)] + 0.5 * rng.standard_normal((300, v.shape[1])))
    t = sc.project(q).astype(np.float64)
    bound = t @ rows.T + MARGIN
    exact = q.astype(np.float64) @ v.astype(np.float64).T
    assert (bound >= exact).all()
    # and it is a useful bound: not loose everywhere (most of the gap comes from the residual)
    assert np.median(bound - exact) < 0.5


def test_basis_is_orthonormal_and_rows_hold_residual_rounded_up():
    rng = np.random.default_rng(1)
    v, _ = _low_rank_layer(rng, d=40)
    basis = fit_basis(v, width=9)
    np.testing.assert_allclose(basis.T.astype(np.float64) @ basis, np.eye(8), atol=1e-6)
    rows = encode(v, basis)
    p = v.astype(np.float64) @ basis.astype(np.float64)
    resid = np.sqrt(np.maximum(1 - (p ** 2).sum(1), 0))
    assert rows.shape == (len(v), 9) and rows.dtype == np.float16
    assert (rows[:, -1].astype(np.float64) >= resid - 1e-7).all()


# ------------------------------------------------------------------------------------------------
# The kernel


@pytest.mark.parametrize("threads", [1, 3])
def test_screened_field_is_identical_and_reads_fewer_vectors(threads):
    rng = np.random.default_rng(2)
    v, grids = _low_rank_layer(rng)
    plain = LayerVectors.from_array(v, grids=grids)
    screened = LayerVectors.from_array(v, grids=grids, screen=compute_screen(plain))
    q = _unit(v[: 14 * 15].reshape(14, 15, -1) + 0.3 * rng.standard_normal((14, 15, v.shape[1])))
    kw = dict(iterations=6, samples=6, jumps=3, seed=4, threads=threads, return_stats=True)
    images = np.arange(1, 6)
    a, sa = patchmatch(q, plain, images, **kw)
    b, sb = patchmatch(q, screened, images, **kw)
    for name in ("image", "y", "x", "similarity"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert sa.mean_similarity == sb.mean_similarity
    assert sa.screened == 0 and sb.screened > 0
    assert sb.candidates < 0.6 * sa.candidates  # most random candidates rejected from 32 bytes
    ref = patchmatch_reference(q, plain, images, **{k: v for k, v in kw.items() if k != "return_stats"})
    np.testing.assert_array_equal(ref.image, b.image)


def test_screening_propagation_too_does_not_change_the_field():
    rng = np.random.default_rng(3)
    v, grids = _low_rank_layer(rng)
    lv = LayerVectors.from_array(v, grids=grids, screen=compute_screen(LayerVectors.from_array(v, grids=grids)))
    q = _unit(v[-14 * 15:].reshape(14, 15, -1) + 0.3 * rng.standard_normal((14, 15, v.shape[1])))
    a = patchmatch(q, lv, np.arange(5), iterations=4, seed=1)
    _hpm.set_screen_propagation(True)
    try:
        b, st = patchmatch(q, lv, np.arange(5), iterations=4, seed=1, return_stats=True)
    finally:
        _hpm.set_screen_propagation(False)
    np.testing.assert_array_equal(a.image * 10 ** 6 + a.y * 1000 + a.x, b.image * 10 ** 6 + b.y * 1000 + b.x)
    assert st.screened > 0


def test_kernel_refuses_a_screen_of_the_wrong_shape():
    rng = np.random.default_rng(4)
    v, grids = _low_rank_layer(rng, n_img=2)
    lv = LayerVectors.from_array(v, grids=grids)
    q = v[:14 * 15].reshape(14, 15, -1)
    rows = np.zeros((len(v), WIDTH), np.uint16)
    with pytest.raises(ValueError, match=r"screen_q of shape \(Hq, Wq, W\) = \(14, 15, 16\)"):
        _hpm.patchmatch(q, lv.raw, np.array([0, 1]), lv.offsets, lv.grids, None, None, None, 1, 1, 1, 0, 1, 0.0,
                        screen=rows, screen_q=np.zeros((14, 15, 8), np.float32), margin=MARGIN)
    with pytest.raises(ValueError, match="screen rows for every stored vector"):
        _hpm.patchmatch(q, lv.raw, np.array([0, 1]), lv.offsets, lv.grids, None, None, None, 1, 1, 1, 0, 1, 0.0,
                        screen=rows[:10], screen_q=np.zeros((14, 15, 16), np.float32), margin=MARGIN)


# ------------------------------------------------------------------------------------------------
# Stores


def test_build_writes_a_checksummed_screen_that_queries_use(store):
    man = json.loads((store / "manifest.json").read_text())
    entry = man["layers"]["decoder2"]["screen"]
    assert entry["width"] == WIDTH and 0 < entry["energy"] <= 1
    assert entry["rows"] in man["checksums"] and entry["basis"] in man["checksums"]
    lv = IndexStore.open(store, verify=True).layer("decoder2")
    assert lv.screen is not None and lv.screen.rows.shape == (lv.ntotal, WIDTH)
    assert not lv.screen.rows.flags.writeable
    # written during the build, row for row the screen of the vectors the layer holds
    np.testing.assert_array_equal(np.asarray(lv.screen.rows), encode(lv.decode(np.arange(lv.ntotal)), lv.screen.basis))
    hp = lv.decode(np.arange(lv.image_range(0)[0], lv.image_range(0)[1])).reshape(*lv.grids[0], -1)
    _, st = patchmatch(hp, lv, np.array([1, 2, 3]), iterations=3, return_stats=True)
    assert st.screened > 0


def test_build_without_screen_and_bad_width(model, dataset, tmp_path):
    out = build_index(model, dataset, layers=["decoder2"], out=tmp_path / "none", batch_size=2,
                      progress=False, screen=0)
    assert IndexStore.open(out).layer("decoder2").screen is None
    with pytest.raises(IndexStoreError, match=r"screen width 0 \(none\) or 2\.\.256.*screen = 1"):
        build_index(model, dataset, layers=["decoder2"], out=tmp_path / "bad", progress=False, screen=1)
    assert not (tmp_path / "bad").exists()


def test_upgrade_adds_the_screen_in_place_and_the_store_verifies(model, dataset, tmp_path, capsys):
    out = build_index(model, dataset, layers=["decoder2"], out=tmp_path / "old", batch_size=2,
                      progress=False, screen=0)
    assert main(["upgrade", str(out)]) in (0, None)
    said = capsys.readouterr().out
    assert "decoder2: wrote screen" in said and "up to date" in said
    store = IndexStore.open(out, verify=True)  # the new files' checksums are in the manifest
    assert store.layer("decoder2").screen is not None
    assert upgrade_screens(out) == []  # nothing left to do
    assert not list(out.rglob("*.tmp*")) and not (out / ".manifest.upgrade").exists()


def test_interrupted_upgrade_leaves_the_store_as_it_was(model, dataset, tmp_path, monkeypatch):
    out = build_index(model, dataset, layers=["decoder2"], out=tmp_path / "old", batch_size=2,
                      progress=False, screen=0)
    before = (out / "manifest.json").read_bytes()

    def boom(*a, **k):
        raise KeyboardInterrupt("test")

    monkeypatch.setattr(screen_mod, "encode", boom)
    with pytest.raises(KeyboardInterrupt):
        add_screens(out, progress=False)
    assert (out / "manifest.json").read_bytes() == before
    assert not list((out / "layers").glob("*screen*"))
    assert IndexStore.open(out, verify=True).layer("decoder2").screen is None


def test_compress_computes_the_screen_of_the_decoded_vectors(store, tmp_path):
    out = compress_store(store, tmp_path / "sq8", codec="sq8", progress=False)
    src = IndexStore.open(store).layer("decoder2").screen
    lv = IndexStore.open(out, verify=True).layer("decoder2")
    assert lv.screen is not None and not np.array_equal(np.asarray(lv.screen.rows), np.asarray(src.rows))
    np.testing.assert_array_equal(np.asarray(lv.screen.rows), encode(lv.decode(np.arange(lv.ntotal)), lv.screen.basis))
    # the bound holds for the cosine with the decoded, re-normalised vectors the kernel scores
    dec = lv.decode(np.arange(lv.ntotal)).astype(np.float64)
    dec /= np.linalg.norm(dec, axis=1, keepdims=True)
    q = _unit(dec[::7][:200] + 0.2 * np.random.default_rng(0).standard_normal((min(200, len(dec[::7])), lv.dim)))
    bound = lv.screen.project(q).astype(np.float64) @ np.asarray(lv.screen.rows, np.float64).T + MARGIN
    assert (bound >= q.astype(np.float64) @ dec.T).all()


def test_missing_screen_file_is_named_with_the_fix(store, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(store, bad)
    (bad / "layers" / "decoder2.screen.npy").unlink()
    with pytest.raises(IndexStoreError, match=r"screen file .*decoder2\.screen\.npy' is missing \(compnn upgrade"):
        IndexStore.open(bad)
    man = json.loads((bad / "manifest.json").read_text())
    man["layers"]["decoder2"]["screen"] = {"rows": "../x.npy", "basis": "b.npy", "width": 16}
    (bad / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(IndexStoreError, match=r"expected layers\['decoder2'\]\.screen to be null or"):
        IndexStore.open(bad)


def test_screened_search_allocates_only_query_sized_memory():
    import tracemalloc

    rng = np.random.default_rng(5)
    v, grids = _low_rank_layer(rng, n_img=40, h=20, w=20, d=64)  # 4 MB of vectors
    plain = LayerVectors.from_array(v, grids=grids)
    lv = LayerVectors.from_array(v, grids=grids, screen=compute_screen(plain))
    q = np.ascontiguousarray(v[:400].reshape(20, 20, -1))
    patchmatch(q, lv, np.arange(40), iterations=1)  # warm-up
    tracemalloc.start()
    try:
        patchmatch(q, lv, np.arange(40), iterations=3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * q.nbytes + (1 << 20) < v.nbytes / 2


# ------------------------------------------------------------------------------------------------
# The screen start


@pytest.mark.parametrize("nq,nc,w", [(37, 101, 16), (9, 5000, 16), (13, 8, 3)])
def test_screen_argmax_is_the_exact_argmax(nq, nc, w):
    rng = np.random.default_rng(nq)
    t = rng.standard_normal((nq, w)).astype(np.float32)
    c = rng.standard_normal((nc, w)).astype(np.float32)
    c[nc // 2] = c[1]  # a tie: the lower index wins
    arg, best = _hpm.screen_argmax(t, c, 2)
    ref = t.astype(np.float64) @ c.astype(np.float64).T
    np.testing.assert_array_equal(arg, ref.argmax(1))
    np.testing.assert_allclose(best, ref.max(1), atol=1e-5)
    with pytest.raises(ValueError, match=r"candidates of width W = 16"):
        _hpm.screen_argmax(rng.standard_normal((4, 16)).astype(np.float32), c[:, :3].copy(), 1)


def test_screen_start_picks_the_best_strided_position_in_projection():
    from compnn_index.search.start import screen_start, start_stride, strided_ids

    rng = np.random.default_rng(6)
    v, grids = _low_rank_layer(rng, n_img=5, h=16, w=16)
    lv = LayerVectors.from_array(v, grids=grids, screen=compute_screen(LayerVectors.from_array(v, grids=grids)))
    images = np.array([1, 3, 4])
    assert start_stride(lv, images, 3 * 64) == 2
    ids = strided_ids(lv, images, 2)
    assert len(ids) == 3 * 64
    _, ys, xs = lv.ids_to_positions(ids)
    assert set(ys.tolist()) == set(range(1, 16, 2)) and set(xs.tolist()) == set(range(1, 16, 2))
    q = _unit(v[:256].reshape(16, 16, -1) + 0.2 * rng.standard_normal((16, 16, v.shape[1])))
    info = {}
    f = screen_start(q, lv, images, candidates=3 * 64, info=info)
    assert info["start"] == "screen (stride 2, 192 candidates)"
    t = lv.screen.project(q.reshape(256, -1)).astype(np.float64)
    rows = np.asarray(lv.screen.rows[ids], np.float64)
    rows[:, -1] = 0
    expect = ids[(t @ rows.T).argmax(1)]
    np.testing.assert_array_equal(lv.positions_to_ids(f.image, f.y, f.x).ravel(), expect)


def test_search_field_screen_start_and_its_fallback_without_a_screen():
    from compnn_index.options import QueryOptions
    from compnn_index.search import search_field

    rng = np.random.default_rng(7)
    v, grids = _low_rank_layer(rng, n_img=6, h=12, w=12)
    plain = LayerVectors.from_array(v, grids=grids)
    lv = LayerVectors.from_array(v, grids=grids, screen=compute_screen(plain))
    q = _unit(v[:144].reshape(12, 12, -1) + 0.3 * rng.standard_normal((12, 12, v.shape[1])))
    opts = QueryOptions(search="patchmatch", init="screen", iterations=2, start_candidates=200)
    info: dict = {}
    screened = search_field({"l": q}, {"l": lv}, np.arange(1, 6), layer="l", options=opts, info=info)
    assert info["start"].startswith("screen (stride 2")
    random = search_field({"l": q}, {"l": lv}, np.arange(1, 6), layer="l",
                          options=opts.with_(init="random"))
    assert screened.similarity.mean() > random.similarity.mean()  # a global start helps at 2 iterations
    info = {}
    search_field({"l": q}, {"l": plain}, np.arange(1, 6), layer="l", options=opts, info=info)
    assert info["start"].startswith("staged (the layer has no screen")
    with pytest.raises(Exception, match="start_candidates"):
        QueryOptions(start_candidates=0)


def test_warm_reads_codes_and_screen_rows_into_the_page_cache(store, model):
    from compnn_index.api import CompNN

    cnn = CompNN.load(store, model=model)
    lv = cnn.layer("decoder2")
    for src in (lv.source, lv.screen_source):
        src.evict()
    (w,) = cnn.warm()
    files = [lv.source.path, lv.screen_source.path]
    assert w["layer"] == "decoder2" and w["bytes"] == sum(p.stat().st_size for p in files)
    runs = lv.runs(np.arange(lv.num_images))
    for src, arr in ((lv.source, lv.raw), (lv.screen_source, lv.screen.rows)):
        resident, total = src.resident(arr, runs)
        assert resident == total > 0


def test_warm_skips_a_layer_larger_than_the_memory_cgroup_limit_and_says_why(store, model, monkeypatch):
    from compnn_index.api import CompNN
    from compnn_index.index import readahead

    cnn = CompNN.load(store, model=model)
    need = sum(p.stat().st_size for p in (cnn.layer("decoder2").source.path, cnn.layer("decoder2").screen_source.path))
    monkeypatch.setattr(readahead, "_cgroup_memory", lambda: (need, 0))  # limit = the layer: above 80%
    (w,) = cnn.warm()
    assert w["read_bytes"] == 0
    assert "memory cgroup limit" in w["skipped"] and "queries read the pages they touch" in w["skipped"]
    assert readahead.memory_limit() == (need, "memory cgroup limit")
    assert readahead.memory_budget() <= need
    monkeypatch.setattr(readahead, "_cgroup_memory", lambda: (4 * need, 0))  # the limit fits it: warmed
    lv = cnn.layer("decoder2")
    for src in (lv.source, lv.screen_source):
        src.evict()
    (w,) = cnn.warm()
    assert "skipped" not in w
    runs = lv.runs(np.arange(lv.num_images))
    assert all(src.resident(arr, runs)[0] == src.resident(arr, runs)[1] > 0
               for src, arr in ((lv.source, lv.raw), (lv.screen_source, lv.screen.rows)))


def test_upgrade_of_a_sharded_store_screens_every_shard_and_keeps_it_openable(model, dataset, tmp_path):
    from compnn_index.index.sharded import build_sharded

    out = tmp_path / "sharded"
    build_sharded(model, dataset, shards=2, layers=["decoder2"], out=out, progress=False, screen=0)
    assert all(IndexStore.open(out).shard(i).layer("decoder2").screen is None for i in range(2))
    lines = upgrade_screens(out, progress=False)
    assert len(lines) == 2 and all("decoder2: wrote screen" in line for line in lines)
    store = IndexStore.open(out)  # the top manifest's shard hashes were updated
    assert all(store.shard(i).layer("decoder2").screen is not None for i in range(2))
    with pytest.raises(IndexStoreError, match="is sharded: its shards carry their own screens"):
        add_screens(out)


def test_rebuild_command_of_a_compressed_store_keeps_its_codec(store, tmp_path):
    from compnn_index.index.manifest import read_manifest, rebuild_command

    out = compress_store(store, tmp_path / "f16", codec="fp16", progress=False)
    assert "--codec fp16" in rebuild_command(out, read_manifest(out))
    assert "--codec" not in rebuild_command(store, read_manifest(store))
