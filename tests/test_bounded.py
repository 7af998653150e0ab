"""Certified exact search (``exact_search(method="bounded")``): the exact field, whatever the seed."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from compnn_index.errors import QueryError
from compnn_index.index import codecs
from compnn_index.index.codecs import CodecDecoder
from compnn_index.index.layer import LayerVectors
from compnn_index.index.screen import compute_screen
from compnn_index.search.exact import exact_search
from compnn_index.search.field import NNField

pytest.importorskip("compnn_index.search._bounded", reason="native kernel not built")


def _unit(a: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    n[n == 0] = 1
    return (a / n).astype(np.float32)


def _with_screen(lv: LayerVectors) -> LayerVectors:
    lv.screen = compute_screen(lv)
    return lv


def _layer(x: np.ndarray, grids, codec: str = "fp32", tmp_path=None) -> LayerVectors:
    grids = np.asarray(grids, dtype=np.int64).reshape(-1, 2)
    if codec == "fp32":
        return _with_screen(LayerVectors.from_array(np.ascontiguousarray(x, dtype=np.float32), grids=grids))
    path = tmp_path / f"{codec}.faiss"
    with codecs.layer_writer(path, x.shape[1], codec, codecs.train_codec(codec, x)) as w:
        w.add(x)
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    raw = codecs.codes_view(index)
    dec = CodecDecoder(codec, raw, x.shape[1], codecs.trained_of(index))
    lv = LayerVectors(codec, None, grids, raw=raw, dim=x.shape[1], codec=codec, decoder=dec,
                      codec_params=dec.params(), owner=index)
    return _with_screen(lv)


def _brute(q: np.ndarray, lv: LayerVectors, images) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 similarities of every query with every candidate: (best id, best sim, runner-up gap)."""
    ids = np.concatenate([np.arange(*lv.image_range(int(i))) for i in images])
    db = np.concatenate([b for a, z in lv.runs(np.asarray(images)) for _, b in lv.blocks(a, z)]).astype(np.float64)
    s = q.reshape(-1, q.shape[-1]).astype(np.float64) @ db.T
    top = np.argmax(s, axis=1)
    best = s[np.arange(len(s)), top]
    second = np.partition(s, -2, axis=1)[:, -2] if s.shape[1] > 1 else np.full(len(s), -np.inf)
    return ids[top], best, best - second


def _assert_exact(field: NNField, lv: LayerVectors, q: np.ndarray, images, tol: float = 1e-5) -> None:
    ids, best, gap = _brute(q, lv, images)
    got = lv.positions_to_ids(field.image, field.y, field.x).ravel()
    np.testing.assert_allclose(field.similarity.ravel(), best, atol=tol)
    clear = gap > 1e-5  # ids must agree wherever the best is not (nearly) tied
    assert np.array_equal(got[clear], ids[clear])


def _clustered(rng, n, d, centres=5, spread=0.15):
    c = rng.standard_normal((centres, d))
    return _unit(c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, d)))


STORES = {
    "random": lambda rng, n, d: _unit(rng.standard_normal((n, d))),
    "clustered": _clustered,
    "low_rank": lambda rng, n, d: _unit(rng.standard_normal((n, 4)) @ rng.standard_normal((4, d))
                                        + 0.3 * rng.standard_normal((n, d))),
}


@pytest.mark.parametrize("kind", sorted(STORES))
@pytest.mark.parametrize("codec", ["fp32", "fp16", "sq8"])
def test_bounded_equals_brute_force_on_every_codec(kind, codec, tmp_path):
    rng = np.random.default_rng(hash((kind, codec)) % 2**32)
    grids = [(9, 11), (7, 13), (12, 5), (10, 10), (3, 17)]
    n, d = sum(h * w for h, w in grids), 40
    x = STORES[kind](rng, n, d)
    lv = _layer(x, grids, codec, tmp_path)
    q = _unit(x[rng.integers(0, n, 13 * 7)].reshape(13, 7, d) + 0.25 * rng.standard_normal((13, 7, d)))
    images = [0, 2, 3, 4]
    info = {}
    field = exact_search(q, lv, images, method="bounded", info=info)
    assert info["exact_method"] == "bounded"
    _assert_exact(field, lv, q, images)
    faiss_field = exact_search(q, lv, images, method="faiss")
    np.testing.assert_allclose(field.similarity, faiss_field.similarity, atol=1e-5)


def test_clustered_store_prunes_most_candidates_at_the_coarse_grains():
    """On a store with structure the tile bounds must do most of the work (else they are dead code)."""
    rng = np.random.default_rng(7)
    grids = [(24, 24)] * 6
    centres = rng.standard_normal((12, 64))
    blocks = rng.integers(0, 12, (6, 3, 3))  # one centre per 8 x 8 block: spatially coherent, as images are
    label = np.kron(blocks, np.ones((1, 8, 8), dtype=np.int64)).reshape(-1)
    x = _unit(centres[label] + 0.05 * rng.standard_normal((label.size, 64)))
    lv = _layer(x, grids)
    q = _unit(x[:576].reshape(24, 24, 64) + 0.02 * rng.standard_normal((24, 24, 64)))
    info = {}
    field = exact_search(q, lv, range(1, 6), method="bounded", info=info)
    _assert_exact(field, lv, q, range(1, 6))
    pruned = info["bounded_pruned"]
    assert pruned["scored"] < 0.25
    assert pruned["tile_pairs"] + pruned["query_tiles"] > 0.3


def test_all_vectors_equal_ties_go_to_the_lowest_id():
    v = _unit(np.ones((1, 24)))
    lv = _layer(np.repeat(v, 4 * 30, axis=0), [(5, 6)] * 4)
    q = np.repeat(v, 12, axis=0).reshape(3, 4, 24)
    # seed every position at the *last* candidate: the bound equals the seed's similarity everywhere,
    # so nothing may be pruned and the lowest id (image 1, (0, 0)) must win the tie
    seed = NNField(np.full((3, 4), 3), np.full((3, 4), 4), np.full((3, 4), 5), np.zeros((3, 4)))
    info = {}
    field = exact_search(q, lv, [1, 2, 3], method="bounded", seed=seed, info=info)
    assert (field.image == 1).all() and (field.y == 0).all() and (field.x == 0).all()
    assert info["bounded_counts"]["exact"] == info["bounded_counts"]["candidates"]


def test_one_outlier_is_found_whatever_the_seed():
    rng = np.random.default_rng(3)
    x = _unit(rng.standard_normal((3 * 64, 32)) * 0.01 + np.eye(32)[0])  # everything near e0
    outlier = _unit(np.eye(32)[1] + 0.01 * rng.standard_normal(32))
    x[2 * 64 + 37] = outlier                                            # one vector near e1
    lv = _layer(x, [(8, 8)] * 3)
    q = np.repeat(outlier[None], 6, axis=0).reshape(2, 3, 32)
    field = exact_search(q, lv, [0, 1, 2], method="bounded")
    assert (field.image == 2).all() and (field.y == 37 // 8).all() and (field.x == 37 % 8).all()


def test_garbage_seed_entries_still_yield_the_exact_field():
    rng = np.random.default_rng(11)
    grids = [(10, 12)] * 5
    x = _clustered(rng, 600, 32)
    lv = _layer(x, grids)
    q = _unit(rng.standard_normal((9, 8, 32)))
    images = [0, 1, 3]
    shape = (9, 8)
    garbage = NNField(rng.integers(-3, 9, shape), rng.integers(-5, 20, shape), rng.integers(-5, 20, shape),
                      np.ones(shape))  # outside the store, outside the grid, or outside the shortlist (2, 4)
    info = {}
    field = exact_search(q, lv, images, method="bounded", seed=garbage, info=info)
    assert info["bounded_seed"] == "given"
    _assert_exact(field, lv, q, images)
    assert info["bounded_counts"]["seeded"] < 9 * 8


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_field_and_counts_do_not_depend_on_the_thread_count(threads):
    rng = np.random.default_rng(5)
    x = _clustered(rng, 8 * 130, 48)
    lv = _layer(x, [(10, 13)] * 8)
    q = _unit(x[130:260].reshape(10, 13, 48) + 0.2 * rng.standard_normal((10, 13, 48)))
    ref_info, info = {}, {}
    ref = exact_search(q, lv, range(8), method="bounded", threads=1, info=ref_info)
    got = exact_search(q, lv, range(8), method="bounded", threads=threads, info=info)
    for name in ("image", "y", "x", "similarity"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name))
    assert info["bounded_counts"] == ref_info["bounded_counts"]


def test_layer_without_screen_falls_back_with_the_reason():
    rng = np.random.default_rng(0)
    lv = LayerVectors.from_array(_unit(rng.standard_normal((60, 16))), grids=np.tile([6, 5], (2, 1)))
    q = _unit(rng.standard_normal((2, 3, 16)))
    info = {}
    field = exact_search(q, lv, [0, 1], info=info)
    assert info["exact_method"] == "faiss"
    assert "bounded: layer" in info["exact_fallback"] and "no screen" in info["exact_fallback"]
    assert "compnn upgrade" in info["exact_fallback"]
    with pytest.raises(QueryError, match="bounded exact search cannot run: .*no screen"):
        exact_search(q, lv, [0, 1], method="bounded")
    assert field.shape == (2, 3)


def test_auto_picks_bounded_where_the_layer_has_a_screen():
    rng = np.random.default_rng(1)
    lv = _layer(_unit(rng.standard_normal((120, 16))), [(6, 10)] * 2)
    info = {}
    exact_search(_unit(rng.standard_normal((4, 4, 16))), lv, [0, 1], info=info)
    assert info["exact_method"] == "bounded" and "exact_fallback" not in info
    assert set(info["bounded_pruned"]) == {"tile_pairs", "query_tiles", "vectors", "scored"}


def test_seed_of_the_wrong_shape_is_refused():
    rng = np.random.default_rng(2)
    lv = _layer(_unit(rng.standard_normal((60, 16))), [(6, 10)])
    bad = NNField(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(QueryError, match=r"seed NNField of the query grid's shape \(3, 3\)"):
        exact_search(_unit(rng.standard_normal((3, 3, 16))), lv, [0], method="bounded", seed=bad)


def test_property_bounded_equals_brute_force_on_random_layouts():
    """Random grids, dimensions, duplicate-heavy or smooth stores and garbage seeds (hypothesis)."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import given, settings, strategies as st

    @settings(max_examples=30, deadline=None, derandomize=True)
    @given(st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=4),
           st.sampled_from([16, 24]), st.sampled_from(["random", "duplicates", "smooth"]),
           st.integers(1, 7), st.integers(1, 7), st.integers(0, 2**31 - 1), st.booleans())
    def check(grids, d, kind, hq, wq, seed, garbage_seed):
        rng = np.random.default_rng(seed)
        n = sum(h * w for h, w in grids)
        if kind == "duplicates":  # a handful of distinct vectors: exact ties everywhere
            x = _unit(rng.standard_normal((3, d)))[rng.integers(0, 3, n)]
        elif kind == "smooth":
            x = _unit(np.cumsum(rng.standard_normal((n, d)), axis=0))
        else:
            x = _unit(rng.standard_normal((n, d)))
        lv = _layer(np.ascontiguousarray(x), grids)
        q = x[rng.integers(0, n, hq * wq)].reshape(hq, wq, d) if kind == "duplicates" else \
            _unit(rng.standard_normal((hq, wq, d)))
        images = sorted(set(rng.integers(0, len(grids), len(grids)).tolist()))
        seed_field = None
        if garbage_seed:
            shape = (hq, wq)
            seed_field = NNField(rng.integers(-1, len(grids) + 1, shape), rng.integers(-1, 10, shape),
                                 rng.integers(-1, 10, shape), np.zeros(shape))
        field = exact_search(q, lv, images, method="bounded", seed=seed_field)
        ids, best, _ = _brute(q, lv, images)
        got = lv.positions_to_ids(field.image, field.y, field.x).ravel()
        np.testing.assert_allclose(field.similarity.ravel(), best, atol=1e-5)
        if kind == "duplicates":  # exact ties: the lowest id among the equal best
            assert np.array_equal(got, ids)

    check()


@pytest.mark.parametrize("kernel", ["generic", "avx2+fma+f16c", "avx512f"])
def test_every_bound_kernel_gives_the_same_field_and_counts(kernel):
    from compnn_index.search import _bounded

    rng = np.random.default_rng(9)
    x = _clustered(rng, 4 * 120, 40)
    lv = _layer(x, [(10, 12)] * 4)
    q = _unit(x[:120].reshape(10, 12, 40) + 0.1 * rng.standard_normal((10, 12, 40)))
    ref_info, info = {}, {}
    ref = exact_search(q, lv, [1, 2, 3], method="bounded", info=ref_info)
    try:
        _bounded.set_kernel(kernel)
    except ValueError:
        pytest.skip(f"this CPU has no {kernel}")
    try:
        got = exact_search(q, lv, [1, 2, 3], method="bounded", info=info)
    finally:
        _bounded.set_kernel("auto")
    assert info["exact_kernel"].startswith(kernel)
    for name in ("image", "y", "x", "similarity"):  # the exact field, whatever rounds the bounds
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name))
    _assert_exact(got, lv, q, [1, 2, 3])


def _big_layers(rng, d=32, side=40, n_img=8):
    """Two layers of 8 images of 40 x 40 positions (4096 x 12800 pairs: auto's pilot runs): random
    unit vectors, whose screen bounds prune little, and spatially coherent clusters, which prune."""
    random = _layer(_unit(rng.standard_normal((n_img * side * side, d))), [(side, side)] * n_img)
    centres = rng.standard_normal((10, d))
    blocks = rng.integers(0, 10, (n_img, side // 8, side // 8))
    label = np.kron(blocks, np.ones((1, 8, 8), dtype=np.int64)).reshape(-1)
    clustered = _layer(_unit(centres[label] + 0.03 * rng.standard_normal((label.size, d))), [(side, side)] * n_img)
    return random, clustered, centres


def test_auto_measures_once_per_layer_whether_bounded_pays():
    rng = np.random.default_rng(4)
    random, clustered, centres = _big_layers(rng)
    q_random = _unit(rng.standard_normal((64, 64, 32)))
    q_clustered = _unit(centres[rng.integers(0, 10, (64, 64))] + 0.03 * rng.standard_normal((64, 64, 32)))
    info = {}
    field = exact_search(q_random, random, range(8), info=info)
    assert info["exact_method"] == "faiss"  # the pilot scored most pairs: FAISS is faster there
    assert "pilot on 4 of 64 query rows" in info["exact_fallback"] and "faiss is faster" in info["exact_fallback"]
    np.testing.assert_allclose(field.similarity, exact_search(q_random, random, range(8), method="bounded").similarity,
                               atol=1e-5)
    info = {}
    exact_search(q_clustered, clustered, range(8), info=info)
    assert info["exact_method"] == "bounded" and "bounded is faster" in info["exact_auto"]
    assert set(clustered._bounded_pays) == {"faiss"}  # measured once, kept on the layer
    info = {}
    exact_search(q_clustered[:40], clustered, range(8), info=info)
    assert info["exact_method"] == "bounded" and info["exact_auto"].startswith("pilot on 4 of 64")


@pytest.mark.parametrize("width", [24, 32, 48])
@pytest.mark.parametrize("codec", ["fp32", "sq8"])
def test_wider_screens_are_read_nested_and_give_the_exact_field(width, codec, tmp_path):
    """A screen wider than 16 bounds grains A-C through its nested 16-wide view, then its full rows."""
    rng = np.random.default_rng(width)
    grids = [(12, 12)] * 4
    x = _unit(rng.standard_normal((576, 6)) @ rng.standard_normal((6, 64)) + 0.2 * rng.standard_normal((576, 64)))
    lv = _layer(x, grids, codec, tmp_path)
    lv.screen = compute_screen(lv, width=width)
    q = _unit(x[:144].reshape(12, 12, 64) + 0.1 * rng.standard_normal((12, 12, 64)))
    info = {}
    field = exact_search(q, lv, [1, 2, 3], method="bounded", info=info)
    _assert_exact(field, lv, q, [1, 2, 3])
    assert "full_rows" in info["bounded_pruned"] and info["bounded_counts"]["full_bounds"] > 0
    c = info["bounded_counts"]  # the full rows judge exactly the candidates the nested view kept
    assert c["full_bounds"] == c["vector_bounds"] - c["vector_bounds_pruned"]
    assert c["exact"] == c["full_bounds"] - c["full_bounds_pruned"]


def test_a_non_finite_query_window_is_refused_with_a_clear_error():
    rng = np.random.default_rng(8)
    lv = _layer(_unit(rng.standard_normal((120, 16))), [(6, 10)] * 2)
    q = _unit(rng.standard_normal((3, 3, 16)))
    q[1, 1] = np.nan
    with pytest.raises(QueryError, match="1 query positions matched nothing"):
        exact_search(q, lv, [0, 1], method="bounded", seed=NNField(np.full((3, 3), -1), *(np.zeros((3, 3)),) * 3))
