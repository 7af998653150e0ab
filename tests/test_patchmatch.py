"""HyperPatch-Match: native kernel vs NumPy reference, quality against brute force, errors."""
from __future__ import annotations

import importlib
import tracemalloc

import numpy as np
import pytest

from compnn_index.errors import QueryError
from compnn_index.search.field import NNField
from compnn_index.search.hyperpatchmatch import (
    PatchMatchStats,
    native_available,
    patchmatch,
    patchmatch_reference,
    upsample_field,
)
from compnn_index.index.layer import LayerVectors

_hpm = pytest.importorskip("compnn_index.search._hpm", reason="native kernel not built")


# ------------------------------------------------------------------------------------------------
# Data



def lay(vectors, offsets, grids):
    """The (vectors, offsets, grids) triple as the LayerVectors every search takes."""
    return LayerVectors.from_array(vectors, grids=grids, offsets=offsets)

def _store(vectors_per_image: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack per-image (Hp, Wp, D) grids into (vectors, offsets, grids) like an index store."""
    grids = np.array([v.shape[:2] for v in vectors_per_image], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(grids[:, 0] * grids[:, 1])]).astype(np.int64)
    vectors = np.concatenate([v.reshape(-1, v.shape[-1]) for v in vectors_per_image]).astype(np.float32)
    return np.ascontiguousarray(vectors), offsets, grids


def _normalise(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def _smooth_images(rng: np.random.Generator, n: int, hp: int, wp: int, channels: int) -> list[np.ndarray]:
    """Hyperpatches (2x2 windows, L2-normalised) of blurred random feature maps."""
    out = []
    for _ in range(n):
        a = rng.standard_normal((hp + 1, wp + 1, channels))
        for axis in (0, 1):
            for _ in range(3):  # box blur of width 5, three times ~ Gaussian
                a = sum(np.roll(a, s, axis=axis) for s in range(-2, 3)) / 5
        windows = [a[dy : dy + hp, dx : dx + wp] for dy in (0, 1) for dx in (0, 1)]
        out.append(_normalise(np.concatenate(windows, axis=-1)))
    return out


def _exact_grid(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values k/8, |k| <= 8: every dot product is exact in float32, whatever the summation order."""
    return (rng.integers(-8, 9, size=shape) / 8).astype(np.float32)


def _brute_force(queries: np.ndarray, vectors: np.ndarray, images, offsets, grids) -> np.ndarray:
    """Best similarity per query position over the given images."""
    ids = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in images])
    sims = queries.reshape(-1, queries.shape[-1]).astype(np.float64) @ vectors[ids].astype(np.float64).T
    return sims.max(axis=1).reshape(queries.shape[:2])


def _recomputed(field: NNField, queries, vectors, offsets, grids) -> np.ndarray:
    ids = offsets[field.image] + field.y * grids[field.image, 1] + field.x
    return np.einsum("hwd,hwd->hw", queries.astype(np.float64), vectors[ids].astype(np.float64))


def _assert_valid(field: NNField, queries, vectors, images, offsets, grids) -> None:
    assert field.shape == queries.shape[:2]
    assert np.isin(field.image, images).all()
    assert (field.y >= 0).all() and (field.y < grids[field.image, 0]).all()
    assert (field.x >= 0).all() and (field.x < grids[field.image, 1]).all()
    np.testing.assert_allclose(field.similarity, _recomputed(field, queries, vectors, offsets, grids), atol=2e-6)


@pytest.fixture(scope="module")
def exact_problem():
    """Small database where all arithmetic is exact, so kernel and reference must agree bit for bit."""
    rng = np.random.default_rng(1)
    vectors, offsets, grids = _store([_exact_grid(rng, (h, w, 24)) for h, w in [(9, 11), (7, 7), (12, 5), (10, 10)]])
    queries = _exact_grid(rng, (8, 9, 24))
    return queries, vectors, np.array([0, 1, 3], dtype=np.int64), offsets, grids


@pytest.fixture(scope="module")
def smooth_problem():
    """Six smooth images; the query is image 4 with a little noise, so identity is the answer."""
    rng = np.random.default_rng(2)
    per_image = _smooth_images(rng, 6, 20, 22, 16)
    vectors, offsets, grids = _store(per_image)
    queries = _normalise(per_image[4] + 0.02 * rng.standard_normal(per_image[4].shape))
    return queries, vectors, np.arange(6, dtype=np.int64), offsets, grids


# ------------------------------------------------------------------------------------------------
# Kernel vs reference


def test_native_kernel_is_built():
    assert native_available()
    assert _hpm.dot_kernel in {"avx512f", "avx2+fma", "generic"}


def _fields_equal(a: NNField, b: NNField) -> None:
    for name in ("image", "y", "x", "similarity"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_propagation_only_matches_reference_from_same_initial_field(exact_problem):
    queries, vectors, images, offsets, grids = exact_problem
    rng = np.random.default_rng(5)
    image = rng.choice(images, size=queries.shape[:2])
    init = NNField(image, rng.integers(0, grids[image, 0]), rng.integers(0, grids[image, 1]),
                   np.zeros(queries.shape[:2]))
    kw = dict(iterations=4, samples=0, jumps=0, init=init, return_stats=True)
    layer = lay(vectors, offsets, grids)
    native, ns = patchmatch(queries, layer, images, **kw)
    ref, rs = patchmatch_reference(queries, layer, images, **kw)
    _fields_equal(native, ref)
    assert ns.candidates == rs.candidates
    assert ns.mean_similarity[-1] > ns.mean_similarity[0]  # propagation did something


@pytest.mark.parametrize("samples, jumps", [(3, 1), (9, 4)])
def test_full_search_matches_reference(exact_problem, samples, jumps):
    queries, vectors, images, offsets, grids = exact_problem
    kw = dict(iterations=5, samples=samples, jumps=jumps, seed=11, return_stats=True)
    layer = lay(vectors, offsets, grids)
    native, ns = patchmatch(queries, layer, images, **kw)
    ref, rs = patchmatch_reference(queries, layer, images, **kw)
    _fields_equal(native, ref)
    assert (ns.iterations, ns.candidates, ns.mean_similarity) == (rs.iterations, rs.candidates, rs.mean_similarity)
    assert ns.native and not rs.native


def test_reported_similarity_is_dot_product_and_never_above_exact(smooth_problem):
    queries, vectors, images, offsets, grids = smooth_problem
    noise = _normalise(queries + 0.3 * np.random.default_rng(3).standard_normal(queries.shape))
    field = patchmatch(noise, lay(vectors, offsets, grids), images[:4], iterations=2, seed=4)
    _assert_valid(field, noise, vectors, images[:4], offsets, grids)
    assert (field.similarity <= _brute_force(noise, vectors, images[:4], offsets, grids) + 1e-5).all()


# ------------------------------------------------------------------------------------------------
# Search quality


def test_finds_the_query_image_itself(smooth_problem):
    queries, vectors, images, offsets, grids = smooth_problem
    field, stats = patchmatch(queries, lay(vectors, offsets, grids), images, iterations=4, seed=0,
                              return_stats=True)
    hq, wq = queries.shape[:2]
    identity = (field.image == 4) & (field.y == np.arange(hq)[:, None]) & (field.x == np.arange(wq)[None, :])
    assert identity.mean() >= 0.99, identity.mean()
    assert stats.iterations == 4
    assert np.all(np.diff(stats.mean_similarity) >= 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_many_iterations_reach_exact_on_tiny_problem(seed):
    rng = np.random.default_rng(6 + seed)
    vectors, offsets, grids = _store([_normalise(rng.standard_normal((4, 5, 16))) for _ in range(3)])
    queries = _normalise(rng.standard_normal((4, 4, 16)))
    images = np.arange(3)
    field = patchmatch(queries, lay(vectors, offsets, grids), images, iterations=60, samples=4, jumps=4,
                       seed=seed)
    best = _brute_force(queries, vectors, images, offsets, grids)
    assert np.mean(field.similarity >= best - 1e-5) >= 0.99


def test_tol_stops_early(smooth_problem):
    queries, vectors, images, offsets, grids = smooth_problem
    _, stats = patchmatch(queries, lay(vectors, offsets, grids), images, iterations=50, tol=1e-4,
                          return_stats=True)
    assert 1 <= stats.iterations < 50
    assert len(stats.mean_similarity) == stats.iterations + 1
    assert stats.mean_similarity[-1] - stats.mean_similarity[-2] < 1e-4


def test_zero_iterations_returns_scored_initial_field(smooth_problem):
    queries, vectors, images, offsets, grids = smooth_problem
    field, stats = patchmatch(queries, lay(vectors, offsets, grids), images[2:], iterations=0,
                              return_stats=True)
    _assert_valid(field, queries, vectors, images[2:], offsets, grids)
    assert stats.iterations == 0 and stats.candidates == queries.shape[0] * queries.shape[1]


def test_initial_field_from_upsampled_coarse_field(smooth_problem):
    queries, vectors, images, offsets, grids = smooth_problem
    hq, wq = queries.shape[:2]
    cy, cx = np.mgrid[0 : (hq + 1) // 2, 0 : (wq + 1) // 2]
    coarse = NNField(np.full(cy.shape, 4), cy, cx, np.ones(cy.shape))
    init = upsample_field(coarse, (hq, wq), 2, layer=lay(vectors, offsets, grids))
    assert np.isnan(init.similarity).all()
    np.testing.assert_array_equal(init.y, np.broadcast_to(np.arange(hq)[:, None], (hq, wq)))
    np.testing.assert_array_equal(init.x, np.broadcast_to(np.arange(wq)[None, :], (hq, wq)))
    field = patchmatch(queries, lay(vectors, offsets, grids), images, iterations=0, init=init)
    np.testing.assert_allclose(field.similarity, _recomputed(init, queries, vectors, offsets, grids), atol=2e-6)


def test_upsample_field_clips_to_image_grid():
    grids = np.array([[4, 5], [3, 3]])
    coarse = NNField(np.array([[0, 1]]), np.array([[1, 2]]), np.array([[2, 2]]), np.zeros((1, 2)))
    layer = LayerVectors.from_array(np.zeros((29, 1), np.float32), grids=grids)
    fine = upsample_field(coarse, (2, 4), 2, layer=layer)
    np.testing.assert_array_equal(fine.image, [[0, 0, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(fine.y, [[2, 2, 2, 2], [3, 3, 2, 2]])
    np.testing.assert_array_equal(fine.x, [[4, 4, 2, 2], [4, 4, 2, 2]])


# ------------------------------------------------------------------------------------------------
# Threads and determinism


def test_same_seed_same_field_for_any_thread_count(smooth_problem):
    queries, vectors, images, offsets, grids = smooth_problem
    noise = _normalise(queries + 0.3 * np.random.default_rng(7).standard_normal(queries.shape))
    runs = [patchmatch(noise, lay(vectors, offsets, grids), images, iterations=3, seed=9, threads=t)
            for t in (2, 2, 1, 3)]
    for other in runs[1:]:
        _fields_equal(runs[0], other)
    _assert_valid(runs[2], noise, vectors, images, offsets, grids)
    different = patchmatch(noise, lay(vectors, offsets, grids), images, iterations=3, seed=10, threads=2)
    assert not np.array_equal(different.x, runs[0].x)


# ------------------------------------------------------------------------------------------------
# FAISS storage, read in place


class _MappedView:
    """Read-only, zero-copy view of a FAISS flat index's storage that keeps the index alive
    (what ``IndexStore.vectors`` hands out)."""

    def __init__(self, index) -> None:
        import faiss

        self.index = index
        self.__array_interface__ = {
            "data": (faiss.rev_swig_ptr(index.get_xb(), 1).ctypes.data, True),  # read-only
            "shape": (int(index.ntotal), int(index.d)),
            "typestr": "<f4",
            "version": 3,
        }


@pytest.fixture(scope="module")
def mapped_store(tmp_path_factory):
    """An IndexFlatIP written to disk and memory-mapped back, as a store's layer index is.

    D = 44 leaves a scalar tail in every dot-product loop (12 floats after the AVX2 loop, 4 after
    the generic one), and values k/8 make all arithmetic exact, so results must agree bit for bit.
    """
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(8)
    vectors, offsets, grids = _store([_exact_grid(rng, (h, w, 44)) for h, w in [(30, 31), (28, 30), (25, 33), (30, 30)]])
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    path = tmp_path_factory.mktemp("mapped") / "layer.faiss"
    faiss.write_index(index, str(path))
    view = np.asarray(_MappedView(faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)))
    queries = _exact_grid(rng, (9, 10, 44))
    return queries, view, vectors, np.array([0, 2, 3], dtype=np.int64), offsets, grids


def test_reads_memory_mapped_store_in_place_at_its_unaligned_offset(mapped_store, monkeypatch):
    queries, view, vectors, images, offsets, grids = mapped_store
    # The vectors start at file byte 45 (the FAISS header): the view is not 4-byte aligned.
    assert view.ctypes.data % 4 != 0 and not view.flags.aligned
    np.testing.assert_array_equal(view, vectors)
    kw = dict(iterations=4, samples=4, jumps=2, seed=3)
    seen = []
    original = _hpm.patchmatch

    def spy(q, v, *args):
        seen.append(v)
        return original(q, v, *args)

    aligned = np.ascontiguousarray(vectors)
    assert aligned.ctypes.data % 4 == 0
    expected = patchmatch(queries, lay(aligned, offsets, grids), images, threads=1, **kw)  # warms up lazy imports
    monkeypatch.setattr(_hpm, "patchmatch", spy)
    tracemalloc.start()
    try:
        field = patchmatch(queries, lay(view, offsets, grids), images, threads=3, **kw)
        used, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        copy = np.array(view)  # what a copy would cost, measured the same way
        copy_peak = tracemalloc.get_traced_memory()[1] - used
        del copy
    finally:
        tracemalloc.stop()
    monkeypatch.undo()
    assert seen[0] is view
    assert copy_peak >= view.nbytes and peak < view.nbytes // 8, (peak, copy_peak, view.nbytes)
    _fields_equal(field, expected)
    _fields_equal(field, patchmatch_reference(queries, lay(aligned, offsets, grids), images, **kw))


def test_dot_many_reads_unaligned_view(mapped_store):
    queries, view, vectors, *_ = mapped_store
    q = queries[3, 4]
    expected = vectors.astype(np.float64) @ q.astype(np.float64)  # exact: values k/8
    np.testing.assert_array_equal(_hpm.dot_many(q, view), expected.astype(np.float32))
    np.testing.assert_array_equal(_hpm.dot_many(q, view), _hpm.dot_many(q, np.ascontiguousarray(vectors)))


@pytest.mark.parametrize("init", ["random", "given"])
def test_kernel_thread_count_does_not_change_result(mapped_store, init):
    """1 thread, 3 threads, and more threads than any pass has tasks give the same bits."""
    queries, view, _, images, offsets, grids = mapped_store
    rng = np.random.default_rng(9)
    shape = queries.shape[:2]
    if init == "random":
        given = (None, None, None)
    else:
        image = rng.choice(images, size=shape).astype(np.int64)
        given = (image, rng.integers(0, grids[image, 0]).astype(np.int32),
                 rng.integers(0, grids[image, 1]).astype(np.int32))
    runs = [_hpm.patchmatch(queries, view, images, offsets, grids, *given, 5, 6, 3, 21, threads, 0.0)
            for threads in (1, 3, 64)]
    for other in runs[1:]:
        for a, b in zip(runs[0][:4], other[:4]):
            np.testing.assert_array_equal(a, b)
        assert other[4] == runs[0][4]


# ------------------------------------------------------------------------------------------------
# Errors


def _call(problem, **overrides):
    queries, vectors, images, offsets, grids = problem
    args = dict(queries=queries, vectors=vectors, images=images, offsets=offsets, grids=grids)
    args.update(overrides)
    layer = lay(args.pop("vectors"), args.pop("offsets"), args.pop("grids"))
    return patchmatch(args.pop("queries"), layer, args.pop("images"), **args)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"iterations": -1}, r"Expected 0 <= iterations <= 256, but iterations = -1"),
        ({"samples": 2.5}, r"Expected samples to be an integer, but samples = 2.5"),
        ({"threads": 0}, r"Expected 1 <= threads <= \d+, but threads = 0"),
        ({"tol": -0.1}, r"Expected tol >= 0, but tol = -0.1"),
        ({"images": np.array([], dtype=np.int64)}, r"at least one database image to search, but images is empty"),
        ({"images": np.array([0, 9])}, r"Expected image ids 0 <= id < 4, but images contains \[9\]"),
        ({"queries": np.zeros((2, 2, 23), np.float32)}, r"query hyperpatches have 23 dims but the layer holds 24"),
        ({"queries": np.zeros((4, 24), np.float32)}, r"queries of shape \(Hq, Wq, D\), but queries.shape = \(4, 24\)"),
        ({"init": "zeros"}, r"init = 'random' or an NNField, but init = 'zeros'"),
        ({"offsets": np.array([0, 99])}, r"offsets to be the running sum of the grids' sizes .* but their shape differ"),
        ({"grids": np.array([[9, 11], [7, 7], [12, 5], [10, 9]])},
         r"offsets to be the running sum of the grids' sizes .* but their values differ"),
    ],
)
def test_bad_arguments_raise_query_error(exact_problem, overrides, message):
    with pytest.raises(QueryError, match=message):
        _call(exact_problem, **overrides)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda v: v.astype(np.float64), r"C-contiguous float32 array .*never copied.*vectors.dtype = float64"),
        (lambda v: np.asfortranarray(v), r"C-contiguous float32 array .*C-contiguous = False"),
        (lambda v: v[::2], r"C-contiguous float32 array .*C-contiguous = False"),
    ],
)
def test_vectors_that_would_need_a_copy_are_refused(exact_problem, make, message):
    with pytest.raises(QueryError, match=message):
        _call(exact_problem, vectors=make(exact_problem[1]))


def test_bad_initial_field(exact_problem):
    queries, vectors, images, offsets, grids = exact_problem
    shape = queries.shape[:2]
    wrong_shape = NNField(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(QueryError, match=r"query grid's shape \(8, 9\), but init.shape = \(2, 2\)"):
        _call(exact_problem, init=wrong_shape)
    not_listed = NNField(np.full(shape, 2), np.zeros(shape), np.zeros(shape), np.zeros(shape))
    with pytest.raises(QueryError, match=r"among the searched images, but init.image contains 2"):
        _call(exact_problem, init=not_listed)
    outside = NNField(np.full(shape, 1), np.full(shape, 7), np.zeros(shape), np.zeros(shape))
    with pytest.raises(QueryError, match=r"init at \(0, 0\) is \(y, x\) = \(7, 0\) in image 1 of grid 7 x 7"):
        _call(exact_problem, init=outside)


def test_kernel_validates_direct_calls(exact_problem):
    queries, vectors, images, offsets, grids = exact_problem

    def call(**kw):
        args = dict(queries=queries, vectors=vectors, images=images, offsets=offsets, grids=grids,
                    init_image=None, init_y=None, init_x=None, iterations=1, samples=1, jumps=1, seed=0,
                    threads=1, tol=0.0)
        args.update(kw)
        return _hpm.patchmatch(**args)

    with pytest.raises(ValueError, match=r"vectors to be C-contiguous \(it is read in place, never copied\)"):
        call(vectors=vectors[:, :12])
    with pytest.raises(ValueError, match=r"Expected vectors of dtype float32, but vectors.dtype = float64"):
        call(vectors=vectors.astype(np.float64))
    with pytest.raises(ValueError, match=r"vectors of dimension D = 24 .*vectors.shape = \(\d+, 12\)"):
        call(vectors=np.ascontiguousarray(vectors[:, :12]))
    with pytest.raises(ValueError, match=r"image ids in \[0, 4\), but images\[1\] = 7"):
        call(images=np.array([0, 7], dtype=np.int64))
    with pytest.raises(ValueError, match=r"offsets\[-1\] <= N .* offsets\[-1\] = \d+, N = 10"):
        call(vectors=np.ascontiguousarray(vectors[:10]))
    with pytest.raises(ValueError, match=r"Expected iterations >= 0, but iterations = -2"):
        call(iterations=-2)
    bad_y = np.full(queries.shape[:2], 99, dtype=np.int32)
    with pytest.raises(ValueError, match=r"position \(0, 0\) has \(y, x\) = \(99, 0\) in image 0"):
        call(init_image=np.zeros(queries.shape[:2], np.int64), init_y=bad_y,
             init_x=np.zeros(queries.shape[:2], np.int32))


def test_missing_native_kernel_falls_back_to_reference_with_a_warning(exact_problem, monkeypatch):
    module = importlib.import_module("compnn_index.search.hyperpatchmatch")
    queries, vectors, images, offsets, grids = exact_problem
    expected = patchmatch(queries, lay(vectors, offsets, grids), images, iterations=2)
    monkeypatch.setattr(module, "_hpm", None)
    monkeypatch.setattr(module, "_NATIVE_ERROR", "ImportError: no _hpm")
    assert not module.native_available()
    with pytest.warns(RuntimeWarning, match=r"could not be imported \(ImportError: no _hpm\); falling back to "
                                            r"patchmatch_reference"):
        field = module.patchmatch(queries, lay(vectors, offsets, grids), images, iterations=2)
    _fields_equal(field, expected)


def test_stats_to_dict():
    stats = PatchMatchStats(2, [0.5, 0.75, 0.8], 120, True, 300)
    assert stats.to_dict() == {"iterations": 2, "mean_similarity": [0.5, 0.75, 0.8], "candidates": 120,
                               "native": True, "screened": 300}
