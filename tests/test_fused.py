"""Fused exact search (``compnn_index.search._fused``) against brute force and the FAISS path.

Data are *consistent* hyperpatches: built by the project's own extraction (``hyperpatches`` on
random activations, with ``return_norms``), so the pixel-level and the hyperpatch-level products
answer the same question.
"""
from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from compnn_index.errors import IndexStoreError, QueryError
from compnn_index.features import LayerSpec, hyperpatches
from compnn_index.index import IndexStore, LayerVectors
from compnn_index.index.flatfile import FlatIPWriter
from compnn_index.index.manifest import upgrade_store
from compnn_index.search import exact_search
from compnn_index.search import _fused

ATOL = 1e-5


def _images(rng, k, sizes, c, *, smooth=False):
    """(vectors (N, k*k*c), norms (N,), grids (n, 2)) of random activations of the given sizes."""
    vecs, norms, grids = [], [], []
    for h, w in sizes:
        act = rng.standard_normal((1, c, h, w)).astype(np.float32)
        if smooth:
            act = np.cumsum(np.cumsum(act, 2), 3).astype(np.float32)
        v, n = hyperpatches(act, k, return_norms=True)
        vecs.append(v[0].reshape(-1, v.shape[-1]))
        norms.append(n[0].ravel())
        grids.append(v.shape[1:3])
    return (np.ascontiguousarray(np.concatenate(vecs)), np.ascontiguousarray(np.concatenate(norms)),
            np.asarray(grids, dtype=np.int64))


def _layer(vecs, norms, grids, k, name="layer"):
    return LayerVectors.from_array(vecs, grids=grids, spec=LayerSpec(name, "m", k=k), name=name, norms=norms)


def _query(rng, k, c, h, w, **kw):
    v, n, g = _images(rng, k, [(h, w)], c, **kw)
    return v.reshape(g[0, 0], g[0, 1], -1), n.reshape(g[0, 0], g[0, 1])


def _brute(q, layer, images):
    """Best (id, similarity) per query row by NumPy brute force (float64), ties → lowest id."""
    flat = q.reshape(-1, q.shape[-1]).astype(np.float64)
    mask = np.zeros(layer.ntotal, bool)
    for i in images:
        a, b = layer.image_range(int(i))
        mask[a:b] = True
    sims = flat @ np.asarray(layer.vectors, dtype=np.float64).T
    sims[:, ~mask] = -np.inf
    return sims.argmax(1), sims.max(1), sims


def _check_against_brute(field, q, layer, images):
    ids, best, sims = _brute(q, layer, images)
    got = layer.positions_to_ids(field.image, field.y, field.x).ravel()
    np.testing.assert_allclose(field.similarity.ravel(), best, atol=ATOL, rtol=0)
    # ids equal, except where another candidate is within rounding of the best
    differ = got != ids
    if differ.any():
        rows = np.flatnonzero(differ)
        assert np.all(np.abs(sims[rows, got[rows]] - best[rows]) <= ATOL)
    return differ.mean()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_fused_matches_brute_force_on_unequal_grids(k):
    rng = np.random.default_rng(k)
    c = 6
    sizes = [(7, 9), (5, 5), (12, 20), (4, 11)]
    vecs, norms, grids = _images(rng, k, sizes, c)
    layer = _layer(vecs, norms, grids, k)
    q, qn = _query(rng, k, c, 10, 13)
    for images in ([0, 1, 2, 3], [2], [0, 3], [1, 2]):
        info = {}
        field = exact_search(q, layer, images, query_norms=qn, info=info)
        assert info["exact_method"] == "fused"
        assert _check_against_brute(field, q, layer, images) < 0.01
        assert set(np.unique(field.image)) <= set(images)


def test_fused_and_faiss_agree_on_smooth_activations():
    rng = np.random.default_rng(5)
    k, c = 2, 16
    vecs, norms, grids = _images(rng, k, [(20, 24), (18, 30), (21, 21)], c, smooth=True)
    layer = _layer(vecs, norms, grids, k)
    q, qn = _query(rng, k, c, 17, 19, smooth=True)
    fused = exact_search(q, layer, [0, 1, 2], method="fused", query_norms=qn)
    ref = exact_search(q, layer, [0, 1, 2], method="faiss")
    np.testing.assert_allclose(fused.similarity, ref.similarity, atol=ATOL, rtol=0)
    assert np.mean((fused.image == ref.image) & (fused.y == ref.y) & (fused.x == ref.x)) > 0.99


def test_wide_grids_span_several_column_blocks():
    # query columns > 128 and database columns > 240: the tile and block edges are crossed
    rng = np.random.default_rng(11)
    k, c = 2, 3
    vecs, norms, grids = _images(rng, k, [(4, 260), (3, 250)], c)
    layer = _layer(vecs, norms, grids, k)
    q, qn = _query(rng, k, c, 3, 140)
    field = exact_search(q, layer, [0, 1], method="fused", query_norms=qn)
    assert _check_against_brute(field, q, layer, [0, 1]) < 0.01


def test_unaligned_memory_mapped_view(tmp_path):
    rng = np.random.default_rng(3)
    k, c = 2, 8
    vecs, norms, grids = _images(rng, k, [(9, 9), (9, 9)], c)
    path = tmp_path / "layer.faiss"
    with FlatIPWriter(path, vecs.shape[1]) as w:
        w.add(vecs)
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    view = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
    assert view.ctypes.data % 4 != 0  # the vectors start at file byte 45
    np.save(tmp_path / "norms.npy", norms)
    mapped_norms = np.load(tmp_path / "norms.npy", mmap_mode="r")
    layer = LayerVectors("layer", LayerSpec("layer", "m", k=k), grids, raw=view, dim=index.d,
                         owner=index, norms=mapped_norms)
    q, qn = _query(rng, k, c, 8, 8)
    field = exact_search(q, layer, [0, 1], method="fused", query_norms=qn)
    assert _check_against_brute(field, q, layer, [0, 1]) < 0.01


def test_ties_go_to_the_lowest_id():
    # four identical images: every best similarity is an exact tie between them
    rng = np.random.default_rng(7)
    k, c = 2, 4
    vecs, norms, grids = _images(rng, k, [(6, 7)], c)
    layer = _layer(np.ascontiguousarray(np.tile(vecs, (4, 1))), np.ascontiguousarray(np.tile(norms, 4)),
                   np.tile(grids, (4, 1)), k)
    q, qn = _query(rng, k, c, 5, 5)
    fused = exact_search(q, layer, [1, 2, 3], method="fused", query_norms=qn)
    assert (fused.image == 1).all()
    ref = exact_search(q, layer, [1, 2, 3], method="faiss")
    assert (ref.image == 1).all()
    # a constant database: every position of an image ties, the lowest id (0, 0) wins
    ones = np.ones((1, c, 4, 5), np.float32)
    v, n = hyperpatches(ones, k, return_norms=True)
    flat = LayerVectors.from_array(np.ascontiguousarray(v[0].reshape(-1, v.shape[-1])), grids=v.shape[1:3],
                                   spec=LayerSpec("layer", "m", k=k), norms=np.ascontiguousarray(n[0].ravel()))
    f = exact_search(q, flat, [0], method="fused", query_norms=qn)
    assert (f.y == 0).all() and (f.x == 0).all()


def test_single_image_database_and_identity():
    rng = np.random.default_rng(9)
    k, c = 2, 8
    q, qn = _query(rng, k, c, 11, 9)
    layer = _layer(np.ascontiguousarray(q.reshape(-1, q.shape[-1])), np.ascontiguousarray(qn.ravel()),
                   np.asarray([q.shape[:2]]), k)
    field = exact_search(q, layer, [0], method="fused", query_norms=qn)
    yy, xx = np.mgrid[: q.shape[0], : q.shape[1]]
    assert (field.image == 0).all()
    np.testing.assert_array_equal(field.y, yy)
    np.testing.assert_array_equal(field.x, xx)
    np.testing.assert_allclose(field.similarity, 1.0, atol=ATOL)


def test_zero_windows_match_like_faiss():
    rng = np.random.default_rng(4)
    k, c = 2, 4
    act = rng.standard_normal((1, c, 8, 8)).astype(np.float32)
    act[:, :, :3, :3] = 0  # windows (0..1, 0..1) are all zero
    v, n = hyperpatches(act, k, return_norms=True)
    layer = _layer(np.ascontiguousarray(v[0].reshape(-1, v.shape[-1])), np.ascontiguousarray(n[0].ravel()),
                   np.asarray([v.shape[1:3]]), k)
    fused = exact_search(v[0], layer, [0], method="fused", query_norms=n[0])
    ref = exact_search(v[0], layer, [0], method="faiss")
    np.testing.assert_allclose(fused.similarity, ref.similarity, atol=ATOL, rtol=0)
    assert fused.similarity[0, 0] == 0 and fused.y[0, 0] == 0 and fused.x[0, 0] == 0


def test_thread_count_does_not_change_the_field():
    rng = np.random.default_rng(2)
    k, c = 2, 8
    vecs, norms, grids = _images(rng, k, [(30, 17), (25, 25)], c)
    layer = _layer(vecs, norms, grids, k)
    q, qn = _query(rng, k, c, 40, 21)
    one = exact_search(q, layer, [0, 1], method="fused", query_norms=qn, threads=1)
    three = exact_search(q, layer, [0, 1], method="fused", query_norms=qn, threads=3)
    for a, b in ((one.image, three.image), (one.y, three.y), (one.x, three.x), (one.similarity, three.similarity)):
        assert a.tobytes() == b.tobytes()
    # nor does the tiling (the kernel's tile_rows)
    args = (q, qn, layer.vectors, layer.norms, np.array([0, 1]), layer.offsets, layer.grids, k)
    ids1, sim1, _ = _fused.search(*args, 1, 1)
    ids7, sim7, stats = _fused.search(*args, 3, 7)
    assert ids1.tobytes() == ids7.tobytes() and sim1.tobytes() == sim7.tobytes()
    assert stats["tile_rows"] == 7


def test_fallback_to_faiss_says_why():
    rng = np.random.default_rng(1)
    k, c = 2, 4
    vecs, norms, grids = _images(rng, k, [(6, 6)], c)
    q, qn = _query(rng, k, c, 5, 5)
    no_norms = LayerVectors.from_array(vecs, grids=grids, spec=LayerSpec("l", "m", k=k))
    info = {}
    f = exact_search(q, no_norms, [0], query_norms=qn, info=info)
    assert info["exact_method"] == "faiss" and "norms" in info["exact_fallback"]
    with pytest.raises(QueryError, match="fused exact search cannot run.*norms"):
        exact_search(q, no_norms, [0], method="fused", query_norms=qn)
    # no query norms, or no spec: FAISS too
    layer = _layer(vecs, norms, grids, k)
    info = {}
    g = exact_search(q, layer, [0], info=info)
    assert info["exact_method"] == "faiss" and "query_norms" in info["exact_fallback"]
    assert g.similarity.tobytes() == f.similarity.tobytes()
    info = {}
    exact_search(q, LayerVectors.from_array(vecs, grids=grids, norms=norms), [0], query_norms=qn, info=info)
    assert info["exact_method"] == "faiss" and "LayerSpec" in info["exact_fallback"]
    with pytest.raises(QueryError, match="query_norms"):
        exact_search(q, layer, [0], query_norms=qn[:2])
    with pytest.raises(QueryError, match="method"):
        exact_search(q, layer, [0], method="blas")


def test_store_records_norms_and_queries_run_fused(tmp_path):
    from compnn_index.api import CompNN
    from compnn_index.data import open_dataset
    from compnn_index.index import build_index
    from compnn_index.models import build_model

    ds = open_dataset("synthetic", size=64, limit=3, seed=0)
    model = build_model("unet", task="translate", ngf=8, size=64, seed=0).eval()
    out = build_index(model, ds, layers=["decoder2"], out=tmp_path / "s", progress=False, threads=1)
    man = json.loads((out / "manifest.json").read_text())
    assert man["format_version"] == 2
    assert man["layers"]["decoder2"]["norms"] == "layers/decoder2.norms.npy"
    store = IndexStore.open(out)
    lv = store.layer("decoder2")
    assert lv.norms is not None and lv.norms.shape == (lv.ntotal,) and not lv.norms.flags.writeable
    # the norms are those of the stored vectors' windows: unit vectors times norms are the pixels
    assert np.all(lv.norms > 0)
    assert "up to date" in upgrade_store(out)
    cnn = CompNN.load(out, model=model, threads=2)
    q = open_dataset("synthetic", split="test", size=64, limit=1, seed=0)[0].input
    from compnn_index.options import QueryOptions
    assert cnn.explain(q, top_k=3).params["exact_method"] == "bounded"  # auto: the store has a screen
    fused = cnn.explain(q, top_k=3, options=QueryOptions(exact_method="fused"))
    assert fused.params["exact_method"] == "fused"
    feats = cnn.extract(q)
    ref = exact_search(feats.hyperpatches["decoder2"], lv, fused.shortlist, method="faiss")
    np.testing.assert_allclose(fused.field.similarity, ref.similarity, atol=ATOL, rtol=0)

    # a store without norms (as built before, and without a screen): FAISS, and `compnn upgrade`
    # refuses with the rebuild command
    entry = man["layers"]["decoder2"]
    entry["norms"] = None
    entry["screen"] = None
    (out / "manifest.json").write_text(json.dumps(man))
    cnn2 = CompNN.load(out, model=model, threads=2)
    res = cnn2.explain(q, top_k=3)
    assert res.params["exact_method"] == "faiss" and "norms" in res.params["exact_fallback"]
    assert res.field.similarity.tobytes() == ref.similarity.tobytes()
    with pytest.raises(IndexStoreError, match="cannot be recovered.*compnn build"):
        upgrade_store(out)
