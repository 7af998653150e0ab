"""Exact search: equals brute force, finds a database image in itself, validates its inputs."""
from __future__ import annotations

import numpy as np
import pytest

from compnn_index.data import open_dataset
from compnn_index.errors import QueryError
from compnn_index.features import capture, hyperpatches
from compnn_index.index import IndexStore, build_index
from compnn_index.models import build_model
from compnn_index.search import NNField, exact_search
from compnn_index.index.layer import LayerVectors



def lay(vectors, offsets, grids):
    """The (vectors, offsets, grids) triple as the LayerVectors every search takes."""
    return LayerVectors.from_array(vectors, grids=grids, offsets=offsets)

def unit(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_db(rng, grids, dim):
    grids = np.asarray(grids, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(grids[:, 0] * grids[:, 1])])
    return unit(rng, (int(offsets[-1]), dim)), offsets, grids


def brute_force(queries, vectors, images, offsets, grids):
    """NumPy reference: ids, similarities and (image, y, x) of the top-1 match."""
    ids = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in sorted(set(images))])
    sims = queries.reshape(-1, queries.shape[-1]).astype(np.float64) @ vectors[ids].T.astype(np.float64)
    best = ids[sims.argmax(1)]
    image = np.searchsorted(offsets, best, side="right") - 1
    local = best - offsets[image]
    return sims.max(1), image, local // grids[image, 1], local % grids[image, 1]


@pytest.mark.parametrize("block_size", [None, 1, 7, 64])
def test_exact_search_equals_brute_force(block_size):
    rng = np.random.default_rng(1)
    vectors, offsets, grids = random_db(rng, [(5, 6), (4, 4), (7, 3), (6, 6), (2, 9)], 24)
    queries = unit(rng, (5, 7, 24))
    images = [4, 1, 3, 1]  # unordered, with a duplicate and a gap (images 0 and 2 excluded)
    field = exact_search(queries, lay(vectors, offsets, grids), images, block_size=block_size)
    assert isinstance(field, NNField) and field.shape == (5, 7)
    sim, image, y, x = brute_force(queries, vectors, images, offsets, grids)
    np.testing.assert_allclose(field.similarity.ravel(), sim, atol=1e-5)
    # random continuous data: no ties, so the ids must agree too
    np.testing.assert_array_equal(field.image.ravel(), image)
    np.testing.assert_array_equal(field.y.ravel(), y)
    np.testing.assert_array_equal(field.x.ravel(), x)
    assert set(np.unique(field.image)) <= {1, 3, 4}


def test_exact_search_converts_non_float32_queries():
    rng = np.random.default_rng(2)
    vectors, offsets, grids = random_db(rng, [(3, 4), (3, 4)], 8)
    queries = unit(rng, (2, 3, 8))
    ref = exact_search(queries, lay(vectors, offsets, grids), [0, 1])
    got = exact_search(queries.astype(np.float64), lay(vectors, offsets, grids), np.array([1, 0]))
    np.testing.assert_array_equal(got.image, ref.image)
    np.testing.assert_array_equal(got.y * 4 + got.x, ref.y * 4 + ref.x)
    np.testing.assert_allclose(got.similarity, ref.similarity, atol=1e-6)


def test_exact_search_runs_faiss_with_the_thread_count_asked_for(monkeypatch):
    import faiss
    import torch

    rng = np.random.default_rng(2)
    vectors, offsets, grids = random_db(rng, [(3, 4), (3, 4)], 8)
    queries = unit(rng, (2, 3, 8))
    seen = []
    knn = faiss.knn

    def spy(*args, **kwargs):
        seen.append((faiss.omp_get_max_threads(), torch.get_num_threads()))
        return knn(*args, **kwargs)

    monkeypatch.setattr(faiss, "knn", spy)
    before = torch.get_num_threads()
    exact_search(queries, lay(vectors, offsets, grids), [0, 1], threads=1)
    assert seen and all(s == (1, 1) for s in seen)
    assert torch.get_num_threads() == before  # restored afterwards
    if before > 1:
        seen.clear()
        exact_search(queries, lay(vectors, offsets, grids), [0, 1], threads=2)
        assert all(s == (2, 2) for s in seen)


def test_ties_go_to_the_lowest_database_id():
    rng = np.random.default_rng(3)
    half, offsets, grids = random_db(rng, [(3, 3)], 8)
    vectors = np.concatenate([half, half])  # image 1 is a copy of image 0
    offsets, grids = np.array([0, 9, 18]), np.array([[3, 3], [3, 3]])
    field = exact_search(half.reshape(3, 3, 8), lay(vectors, offsets, grids), [1, 0],
                         block_size=4)
    assert (field.image == 0).all()
    np.testing.assert_array_equal(field.y * 3 + field.x, np.arange(9).reshape(3, 3))


def test_exact_search_reads_an_unaligned_read_only_view_without_copying():
    import tracemalloc

    rng = np.random.default_rng(4)
    vectors, offsets, grids = random_db(rng, [(64, 64)] * 8, 64)  # 8 MiB of database vectors
    raw = np.zeros(vectors.nbytes + 1, dtype=np.uint8)
    view = raw[1:].view(np.float32).reshape(vectors.shape)  # like a memory-mapped FAISS file
    view[:] = vectors
    view.flags.writeable = False
    assert not view.flags.aligned
    queries = unit(rng, (4, 4, 64))
    layer = lay(view, offsets, grids)
    tracemalloc.start()
    try:
        got = exact_search(queries, layer, np.arange(8))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < vectors.nbytes / 20, f"exact search allocated {peak} bytes for a {vectors.nbytes}-byte database"
    ref = exact_search(queries, lay(vectors, offsets, grids), np.arange(8))
    np.testing.assert_array_equal(got.image * 4096 + got.y * 64 + got.x, ref.image * 4096 + ref.y * 64 + ref.x)


def test_a_database_image_finds_itself(tmp_path):
    ds = open_dataset("synthetic", size=32, limit=4)
    model = build_model("unet", task="translate", ngf=4, size=32).eval()
    store = IndexStore.open(build_index(model, ds, layers=["decoder2"], out=tmp_path / "s", progress=False))
    spec = store.spec("decoder2")
    _, acts = capture(model, ds[2].input[None], [spec])
    queries = hyperpatches(acts["decoder2"], spec.k)[0]
    field = exact_search(queries, store.layer("decoder2"), np.arange(store.num_images))
    assert field.similarity.min() >= 0.999
    assert (field.image == 2).mean() > 0.95  # ties with near-identical patches elsewhere are allowed
    hp, wp = store.grid("decoder2")
    self_match = field.image == 2
    yy, xx = np.mgrid[:hp, :wp]
    assert (field.y[self_match] == yy[self_match]).mean() > 0.95
    assert (field.x[self_match] == xx[self_match]).mean() > 0.95


# ---------------------------------------------------------------------------- validation
@pytest.fixture()
def small():
    rng = np.random.default_rng(5)
    vectors, offsets, grids = random_db(rng, [(2, 2), (2, 2), (2, 2)], 4)
    return unit(rng, (2, 2, 4)), vectors, offsets, grids


def test_dimension_mismatch_is_reported(small):
    q, v, o, g = small
    with pytest.raises(QueryError, match=r"query hyperpatches have 5 dims but the layer holds 4"):
        exact_search(np.zeros((2, 2, 5), np.float32), lay(v, o, g), [0])
    with pytest.raises(QueryError, match=r"shape \(Hq, Wq, D\), but queries.shape = \(4, 4\)"):
        exact_search(q.reshape(4, 4), lay(v, o, g), [0])


def test_image_ids_are_checked(small):
    q, v, o, g = small
    with pytest.raises(QueryError, match="at least one database image to search, but images is empty"):
        exact_search(q, lay(v, o, g), [])
    with pytest.raises(QueryError, match=r"image ids 0 <= id < 3, but images contains \[-1, 3\]"):
        exact_search(q, lay(v, o, g), [3, 0, -1])
    with pytest.raises(QueryError, match=r"integer image ids, but images.dtype = float64"):
        exact_search(q, lay(v, o, g), [0.5])


def test_vectors_offsets_and_grids_are_checked(small):
    q, v, o, g = small
    with pytest.raises(QueryError, match=r"C-contiguous float32 array .* vectors.dtype = float64"):
        exact_search(q, lay(v.astype(np.float64), o, g), [0])
    with pytest.raises(QueryError, match=r"offsets to be the running sum of the grids' sizes .* values differ"):
        lay(v, np.array([0, 4, 8, 16]), g)
    with pytest.raises(QueryError, match=r"grids to hold len\(vectors\) = 12 positions, but they hold 8"):
        LayerVectors.from_array(v, grids=g[:2])
    with pytest.raises(QueryError, match=r"grids to hold len\(vectors\) = 12 positions, but they hold 14"):
        LayerVectors.from_array(v, grids=np.array([[2, 2], [2, 3], [2, 2]]))
    with pytest.raises(QueryError, match=r"Expected layer to be a LayerVectors"):
        exact_search(q, v, [0])
    with pytest.raises(QueryError, match=r"Expected 1 <= block_size|block_size >= 1, but block_size = 0"):
        exact_search(q, lay(v, o, g), [0], block_size=0)
