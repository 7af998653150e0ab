"""The query API (``compnn_index.api.CompNN``) on the session's tiny index stores.

Every check here is computed independently of the code under test where it can be (brute-force
NumPy over the store's vectors, the manifest's per-image metadata), and every user error is
pinned by its message.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from compnn_index.api import CompNN
from compnn_index.data import FACADES_CLASSES, FACADES_PALETTE, labels_from_colors, open_dataset
from compnn_index.errors import IndexStoreError, QueryError
from compnn_index.metrics import psnr
from compnn_index.models import load_checkpoint
from compnn_index.options import QueryOptions
from compnn_index.search import NNField, patchmatch, search_field
from compnn_index.pictures import to_rgb

from conftest import TINY_IMAGES, TINY_LAYERS, TINY_SIZE

N = TINY_IMAGES


# ---------------------------------------------------------------------------- helpers
def query_vectors(cnn: CompNN, image, layer: str) -> np.ndarray:
    """The query's hyperpatches at ``layer``, (Hq, Wq, D)."""
    img = cnn.resolve_image(image)
    feats = cnn.extract(img, [layer]).hyperpatches
    return feats[layer]


def db_vectors(cnn: CompNN, layer: str, image: int) -> np.ndarray:
    """A copy of one database image's hyperpatches, (Hp, Wp, D)."""
    lv = cnn.layer(layer)
    start, stop = lv.image_range(image)
    hp, wp = (int(v) for v in lv.grids[image])
    return np.array(lv.vectors[start:stop]).reshape(hp, wp, -1)


def matched_vectors(cnn: CompNN, layer: str, field: NNField) -> np.ndarray:
    """The database vector each field position names, (Hq, Wq, D)."""
    ids = cnn.layer(layer).positions_to_ids(field.image, field.y, field.x)
    return np.array(cnn.layer(layer).vectors)[ids]


def brute_force(cnn: CompNN, layer: str, q: np.ndarray, images) -> np.ndarray:
    """Best cosine similarity per query position over ``images``' hyperpatches (float64)."""
    base = np.concatenate([db_vectors(cnn, layer, n).reshape(-1, q.shape[-1]) for n in images])
    sims = q.reshape(-1, q.shape[-1]).astype(np.float64) @ base.T.astype(np.float64)
    return sims.max(1).reshape(q.shape[:2])


def store_digest(path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def wall_mask(cnn: CompNN, image: int) -> np.ndarray:
    """Facade-wall pixels of a translate (label map → photo) store's input label map."""
    labels = labels_from_colors(to_rgb(np.asarray(cnn.array("inputs")[image]), None), FACADES_PALETTE)
    return labels == FACADES_CLASSES.index("facade")


# ---------------------------------------------------------------------------- 1. identity
def assert_identity(cnn: CompNN, i: int, layer: str, result) -> None:
    """Training image ``i`` queried against the whole store matches itself."""
    f = result.field
    q = query_vectors(cnn, i, layer)
    own = db_vectors(cnn, layer, i)
    assert f.shape == own.shape[:2] == q.shape[:2]
    assert (f.similarity >= 0.999).mean() >= 0.99
    assert (f.image == i).mean() >= 0.99
    # Where the match is not the query's own (y, x), the matched vector must tie with it.
    own_sim = np.einsum("hwd,hwd->hw", q.astype(np.float64), own.astype(np.float64))
    yy, xx = np.mgrid[: f.shape[0], : f.shape[1]]
    at_own = (f.image == i) & (f.y == yy) & (f.x == xx)
    assert at_own.mean() >= 0.9
    np.testing.assert_array_less(own_sim[~at_own] - 1e-5, f.similarity[~at_own])
    np.testing.assert_allclose(own_sim[at_own], f.similarity[at_own], atol=1e-5)


@pytest.mark.parametrize("layer", TINY_LAYERS)
def test_translate_training_image_explains_itself(translate_cnn, layer):
    cnn = translate_cnn
    targets = cnn.array("targets")
    for i in range(N):
        res = cnn.query(i, layer=layer, top_k=N, restrict=None, sources=("target",))
        assert_identity(cnn, i, layer, res)
        assert psnr(res.reconstructions["target"], np.asarray(targets[i])) >= 40.0


@pytest.mark.parametrize("layer", TINY_LAYERS)
def test_segment_training_image_explains_itself(segment_cnn, layer):
    cnn = segment_cnn
    targets = cnn.array("targets")
    for i in range(N):
        res = cnn.query(i, layer=layer, top_k=N, sources=("target",))
        assert_identity(cnn, i, layer, res)
        recon = res.reconstructions["target"]
        assert recon.dtype == np.int64 and recon.shape == (TINY_SIZE, TINY_SIZE)
        assert (recon == np.asarray(targets[i])).mean() >= 0.99


@pytest.mark.parametrize("which", ["translate", "segment"])
def test_identity_by_array_equals_identity_by_id(translate_cnn, segment_cnn, which):
    cnn = translate_cnn if which == "translate" else segment_cnn
    for i in (0, 7):
        arr = np.array(cnn.array("inputs")[i])
        by_arr = cnn.query(arr, layer="decoder2", top_k=N, sources=("target",))
        assert_identity(cnn, i, "decoder2", by_arr)
        by_id = cnn.query(i, layer="decoder2", top_k=N, sources=("target",))
        np.testing.assert_array_equal(by_arr.field.image, by_id.field.image)
        np.testing.assert_allclose(by_arr.field.similarity, by_id.field.similarity, atol=1e-6)
        np.testing.assert_array_equal(by_arr.query_input, arr)


# ---------------------------------------------------------------------------- 2. exact = brute force
@pytest.mark.parametrize("layer", TINY_LAYERS)
def test_exact_search_equals_brute_force(translate_cnn, layer):
    cnn = translate_cnn
    test = open_dataset("synthetic", split="test", size=TINY_SIZE, limit=2, direction="BtoA",
                        task="translate")
    for s in test:
        res = cnn.query(s.input, layer=layer, top_k=5, sources=())
        q = query_vectors(cnn, s.input, layer)
        np.testing.assert_allclose(res.field.similarity, brute_force(cnn, layer, q, res.shortlist),
                                   atol=1e-5)
        # the field names the vector it reports the similarity of
        sim = np.einsum("hwd,hwd->hw", q, matched_vectors(cnn, layer, res.field))
        np.testing.assert_allclose(res.field.similarity, sim, atol=1e-5)
        assert set(np.unique(res.field.image)) <= set(res.shortlist.tolist())
        assert res.field.shape == cnn.store.grid(layer)


# ---------------------------------------------------------------------------- 3. shortlist, restrict
def test_shortlist_is_top_k_by_global_cosine_best_first(segment_cnn):
    cnn = segment_cnn
    test = open_dataset("synthetic", split="test", size=TINY_SIZE, limit=1, task="segment")
    img = test[0].input
    res = cnn.query(img, top_k=5, sources=())
    g = cnn.extract(img, ()).global_descriptor
    sims = np.array(cnn.store.global_vectors()).astype(np.float64) @ g.astype(np.float64)
    order = np.argsort(-sims, kind="stable")
    assert res.shortlist.tolist() == order[:5].tolist()
    np.testing.assert_allclose(res.shortlist_similarity, sims[order[:5]], atol=1e-5)
    assert np.all(np.diff(res.shortlist_similarity) <= 0)
    # a training image is its own best global match
    res = cnn.query(4, top_k=3, sources=())
    assert res.shortlist[0] == 4 and res.shortlist_similarity[0] >= 0.999


def test_default_top_k_is_16_or_every_candidate(translate_cnn):
    assert len(translate_cnn.query(1, sources=()).shortlist) == min(16, N)
    res = translate_cnn.query(1, restrict=[4, 9, 1], sources=())
    assert sorted(res.shortlist.tolist()) == [1, 4, 9] and res.params["top_k"] == 3


@pytest.mark.parametrize("kind", ["ids", "names", "meta"])
def test_restrict_limits_the_database_before_shortlisting(translate_cnn, kind):
    cnn = translate_cnn
    meta = cnn.store.image_meta
    material = meta[0]["material"]
    allowed = [i for i, m in enumerate(meta) if m["material"] == material and i != 0]
    assert len(allowed) >= 2, "the fixture needs two more images of image 0's material"
    restrict = {"ids": allowed, "names": [cnn.store.image_names[i] for i in allowed],
                "meta": {"material": material}}[kind]
    if kind == "meta":
        allowed = allowed + [0]
    res = cnn.query(0, top_k=len(allowed), restrict=restrict, sources=())
    assert sorted(res.shortlist.tolist()) == sorted(allowed)
    assert set(np.unique(res.field.image)) <= set(allowed)
    # before shortlisting: top_k=1 is the best *allowed* image, not the global best (image 0)
    one = cnn.query(0, top_k=1, restrict=restrict, sources=())
    assert one.shortlist.tolist() == [res.shortlist[0]]
    assert (kind == "meta") == (one.shortlist[0] == 0)


def test_restrict_by_material_controls_the_wall_colour(translate_cnn):
    """The papers' property control: the same query, two materials, two wall colours."""
    cnn = translate_cnn
    meta = cnn.store.image_meta
    by_material: dict[str, list[int]] = {}
    for i, m in enumerate(meta):
        by_material.setdefault(m["material"], []).append(i)
    materials = sorted(by_material)
    assert len(materials) >= 2
    rgb = {m: np.mean([meta[i]["wall_rgb"] for i in ids], axis=0) for m, ids in by_material.items()}
    # the two materials whose wall colours are furthest apart
    a, b = max(((x, y) for x in materials for y in materials if x < y),
               key=lambda p: np.linalg.norm(rgb[p[0]] - rgb[p[1]]))
    query = next(i for i in range(N) if meta[i]["material"] not in (a, b))
    mask = wall_mask(cnn, query)
    assert mask.mean() > 0.1
    walls = {}
    for m in (a, b):
        res = cnn.query(query, top_k=len(by_material[m]), restrict={"material": m}, sources=("target",))
        assert set(np.unique(res.field.image)) <= set(by_material[m])
        photo = to_rgb(res.reconstructions["target"], None).astype(np.float64)
        walls[m] = photo[mask].mean(0)
    assert np.linalg.norm(walls[a] - walls[b]) > 20
    for m, other in ((a, b), (b, a)):
        assert np.linalg.norm(walls[m] - rgb[m]) < np.linalg.norm(walls[m] - rgb[other])


# ---------------------------------------------------------------------------- 4. patchmatch
@pytest.mark.parametrize("init", ["random", "coarse"])
def test_patchmatch_through_the_api(translate_cnn, init):
    cnn = translate_cnn
    kw = dict(layer="decoder2", top_k=6, sources=("target",))
    exact = cnn.query(3, **kw)
    pm = cnn.query(3, search="patchmatch", init=init, iterations=4, samples=3, seed=11, **kw)
    assert pm.search == "patchmatch" and pm.params["init"] == init and pm.params["seed"] == 11
    assert pm.field.shape == exact.field.shape
    assert pm.shortlist.tolist() == exact.shortlist.tolist()
    assert set(np.unique(pm.field.image)) <= set(pm.shortlist.tolist())
    assert np.all(pm.field.similarity <= exact.field.similarity + 1e-5)
    q = query_vectors(cnn, 3, "decoder2")
    sim = np.einsum("hwd,hwd->hw", q, matched_vectors(cnn, "decoder2", pm.field))
    np.testing.assert_allclose(pm.field.similarity, sim, atol=1e-5)
    # a training image in its own shortlist: HyperPatch-Match finds it almost everywhere
    assert pm.field.similarity.mean() >= 0.95
    again = cnn.query(3, search="patchmatch", init=init, iterations=4, samples=3, seed=11, **kw)
    for key in ("image", "y", "x", "similarity"):
        np.testing.assert_array_equal(getattr(again.field, key), getattr(pm.field, key))


def test_staged_coarse_patchmatch_over_the_whole_set(translate_cnn):
    """More database images than ``seed_images``: the coarse pyramid runs on the best-ranked few,
    then one HyperPatch-Match over all of them, seeded with that field."""
    cnn = translate_cnn
    query = 5
    # shortlist order with the query image itself ranked last, outside the 4 seed images
    ids = np.array([n for n in range(N) if n != query] + [query], dtype=np.int64)
    pyramid = cnn.pyramid("decoder2")
    feats = cnn.extract(query, pyramid).hyperpatches
    opts = QueryOptions(search="patchmatch", iterations=4, samples=3, seed=2, init="coarse", seed_images=4)
    kw = dict(layer="decoder2", options=opts, pyramid=pyramid)
    staged = search_field(feats, cnn.store.layer, ids, **kw)
    assert staged.shape == cnn.store.grid("decoder2")
    exact = search_field(feats, cnn.store.layer, ids, layer="decoder2", options=QueryOptions())
    assert np.all(staged.similarity <= exact.similarity + 1e-5)
    # the seed stage could not see the query image; the whole-set pass found it
    seeded = search_field(feats, cnn.store.layer, ids[:4], **kw)
    assert query not in np.unique(seeded.image)
    assert (staged.image == query).mean() > 0.5
    assert staged.similarity.mean() > seeded.similarity.mean()
    # ... and it is exactly that pass: HyperPatch-Match over all ids from the seed stage's field
    ref = patchmatch(feats["decoder2"], cnn.layer("decoder2"), ids, iterations=4,
                     samples=3, seed=2, init=seeded, threads=1)
    np.testing.assert_array_equal(staged.image, ref.image)
    np.testing.assert_array_equal(staged.similarity, ref.similarity)
    again = search_field(feats, cnn.store.layer, ids, **kw)
    np.testing.assert_array_equal(again.image, staged.image)
    np.testing.assert_array_equal(again.y, staged.y)


def test_pyramid_lists_coarser_layers(translate_cnn):
    cnn = translate_cnn
    assert cnn.pyramid("decoder2") == ["decoder2", "decoder3", "decoder4"]
    assert cnn.pyramid("decoder3") == ["decoder3", "decoder4"]
    assert cnn.pyramid("decoder4") == ["decoder4"]
    with pytest.raises(QueryError, match="Unknown layer 'decoder9'"):
        cnn.pyramid("decoder9")


# ---------------------------------------------------------------------------- 5. bad input
LAYERS_TEXT = ", ".join(TINY_LAYERS)


@pytest.mark.parametrize("kwargs,match", [
    (dict(layer="nope"), f"Unknown layer 'nope': this index has layers {LAYERS_TEXT}$"),
    (dict(top_k=0), rf"Expected 1 <= top_k <= number of database images \({N}\), but top_k = 0$"),
    (dict(top_k=N + 1), rf"Expected 1 <= top_k <= number of database images \({N}\), but top_k = {N + 1}$"),
    (dict(top_k=2.0), r"Expected top_k to be an integer, but top_k = 2\.0"),
    (dict(top_k=True), "Expected top_k to be an integer, but top_k = True"),
    (dict(restrict=[1, 2], top_k=3), r"number of database images \(2\), but top_k = 3"),
    (dict(restrict=[N + 5]), f"restrict: image id {N + 5} does not exist; expected 0 <= id < {N}$"),
    (dict(restrict=["-1"]), "restrict: image id -1 does not exist"),
    (dict(restrict=["no_such_image"]), "restrict: no database image named 'no_such_image'"),
    (dict(restrict=[]), "restrict is empty: expected at least one database image id or name"),
    (dict(restrict={"material": "gold"}), r"restrict=\{'material': 'gold'\} matches no database image"),
    (dict(restrict={"colour": "red"}), "matches no database image"),
    (dict(search="fast"), "Unknown search 'fast'; expected one of exact, patchmatch$"),
    (dict(sources=("target", "labels")), "Unknown source 'labels'; expected any of target, input, self$"),
    (dict(search="patchmatch", init="zeros"), "Unknown init 'zeros'; expected one of random, staged, coarse, screen or an NNField"),
])
def test_query_refuses_bad_options(translate_cnn, kwargs, match):
    opts = dict(top_k=2)
    opts.update(kwargs)
    with pytest.raises(QueryError, match=match):
        translate_cnn.query(1, **opts)


@pytest.mark.parametrize("make,match", [
    (lambda: N, f"image: image id {N} does not exist; expected 0 <= id < {N}"),
    (lambda: -1, "image: image id -1 does not exist"),
    (lambda: np.zeros((3, 32, 32), np.float32),
     f"image: expected a {TINY_SIZE}×{TINY_SIZE} image \\(the index's image size\\), got 32×32"),
    (lambda: np.zeros((TINY_SIZE, 2 * TINY_SIZE, 3), np.uint8), f"got {TINY_SIZE}×{2 * TINY_SIZE}"),
    (lambda: np.zeros((1, TINY_SIZE, TINY_SIZE), np.float32),
     r"image: expected an array of shape \(3, H, W\) or \(H, W, 3\), got \(1, 64, 64\)"),
    (lambda: np.zeros((TINY_SIZE, TINY_SIZE), np.uint8), r"got \(64, 64\)"),
    (lambda: np.zeros((3, TINY_SIZE, TINY_SIZE), np.int32), "image: expected uint8 or float array, got dtype int32"),
    (lambda: np.full((3, TINY_SIZE, TINY_SIZE), 200.0, np.float32),
     r"image: expected float values in \[-1, 1\] \(or uint8\), got range \[200, 200\]"),
    (lambda: np.full((3, TINY_SIZE, TINY_SIZE), np.nan, np.float32), "image: array contains NaN"),
    (lambda: [[0.0]], "image: expected an array, PIL image, path or dataset id, got list"),
])
def test_query_refuses_bad_images(translate_cnn, make, match):
    with pytest.raises(QueryError, match=match):
        translate_cnn.query(make(), top_k=2)


def test_query_refuses_paths_that_are_not_images(translate_cnn, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(QueryError, match=f"{text}: cannot read as an image"):
        translate_cnn.query(text, top_k=2)
    missing = tmp_path / "missing.png"
    with pytest.raises(QueryError, match=f"image: no such image file: '{missing}'"):
        translate_cnn.query(str(missing), top_k=2)
    with pytest.raises(QueryError, match=f"image: '{tmp_path}' is a directory, expected an image file"):
        translate_cnn.query(tmp_path, top_k=2)  # a folder


def test_image_files_are_accepted(translate_cnn, tmp_path):
    from PIL import Image

    arr = np.array(translate_cnn.array("inputs")[2])
    path = tmp_path / "q.png"
    Image.fromarray(to_rgb(arr, None)).save(path)
    res = translate_cnn.query(path, top_k=3, sources=())
    assert res.shortlist[0] == 2
    assert (res.field.image == 2).mean() >= 0.9


def test_load_refuses_a_model_that_does_not_match(translate_index, segment_index):
    other = load_checkpoint(segment_index.model)
    with pytest.raises(IndexStoreError, match="does not match index store") as exc:
        CompNN.load(translate_index.index, model=other)
    msg = str(exc.value)
    assert str(translate_index.index) in msg
    assert "model hash" in msg and "config task 'segment' vs 'translate'" in msg
    # same architecture and config, one weight changed: only the hash differs
    same = load_checkpoint(translate_index.model)
    with torch.no_grad():
        next(same.parameters()).view(-1)[0] += 1.0
    with pytest.raises(IndexStoreError, match=r"model hash \w+… differs from the index's \w+…$"):
        CompNN.load(translate_index.index, model=same)
    CompNN.load(translate_index.index, model=load_checkpoint(translate_index.model))  # the right one


def test_load_refuses_a_folder_that_is_not_a_store(tmp_path):
    with pytest.raises(IndexStoreError, match=str(tmp_path)):
        CompNN.load(tmp_path)


def test_queries_never_modify_the_store(translate_index, translate_cnn):
    cnn = translate_cnn
    before = store_digest(translate_index.index)
    assert {"manifest.json", "global.faiss"} <= set(before)
    cnn.query(1, top_k=4, sources=("target", "input", "self"))
    cnn.query(np.array(cnn.array("inputs")[2]), layer="decoder3", search="patchmatch", init="coarse",
              top_k=N, iterations=2)
    cnn.correspond(1, 2)
    cnn.global_nn(3, by="decoder2", exclude=[3])
    with pytest.raises(QueryError):
        cnn.query(1, layer="nope")
    assert store_digest(translate_index.index) == before
    assert not cnn.store.vectors("decoder2").flags.writeable
    assert not cnn.array("targets").flags.writeable


# ---------------------------------------------------------------------------- 6. correspond, global NN
@pytest.mark.parametrize("layer", ["decoder2", "decoder4"])
def test_correspond_image_with_itself_is_the_identity(segment_cnn, layer):
    cnn = segment_cnn
    c = cnn.correspond(6, np.array(cnn.array("inputs")[6]), layer=layer)
    f = c.field
    assert c.layer == layer and f.shape == cnn.store.grid(layer)
    assert set(np.unique(f.image)) == {0}
    assert (f.similarity >= 0.999).mean() >= 0.99
    yy, xx = np.mgrid[: f.shape[0], : f.shape[1]]
    assert ((f.y == yy) & (f.x == xx)).mean() >= 0.9
    np.testing.assert_array_equal(c.image_a, c.image_b)


def test_correspond_two_images_matches_brute_force(segment_cnn):
    cnn = segment_cnn
    c = cnn.correspond(1, 8, layer="decoder3")
    qa, vb = query_vectors(cnn, 1, "decoder3"), query_vectors(cnn, 8, "decoder3")
    sims = qa.reshape(-1, qa.shape[-1]) @ vb.reshape(-1, vb.shape[-1]).T
    np.testing.assert_allclose(c.field.similarity.ravel(), sims.max(1), atol=1e-5)
    assert c.field.similarity.mean() < 0.999  # two different facades
    with pytest.raises(QueryError, match="image_b: image id 99 does not exist"):
        cnn.correspond(1, 99)
    with pytest.raises(QueryError, match="Unknown layer 'encoder1'"):
        cnn.correspond(1, 2, layer="encoder1")


@pytest.mark.parametrize("by", ["bottleneck", "decoder2", "output"])
def test_global_nn_finds_the_training_image_unless_excluded(translate_cnn, by):
    cnn = translate_cnn
    for i in (0, 9):
        g = cnn.global_nn(i, by=by)
        assert g.image == i and g.by == by and g.similarity >= 0.999
        assert sorted(g.ranking.tolist()) == list(range(N))
        assert np.all(np.diff(g.similarities) <= 0)
        other = cnn.global_nn(i, by=by, exclude=[i])
        assert other.image != i and i not in other.ranking
        assert other.image == g.ranking[1] and other.similarity < g.similarity


def test_global_nn_by_layer_is_mean_aligned_cosine(translate_cnn):
    cnn = translate_cnn
    g = cnn.global_nn(4, by="decoder3")
    q = query_vectors(cnn, 4, "decoder3")
    expected = [np.einsum("hwd,hwd->", q, db_vectors(cnn, "decoder3", n)) / np.prod(q.shape[:2])
                for n in range(N)]
    np.testing.assert_allclose(g.similarities, np.sort(expected)[::-1], atol=1e-5)
    restricted = cnn.global_nn(4, by="bottleneck", restrict={"material": cnn.store.image_meta[1]["material"]})
    assert all(cnn.store.image_meta[n]["material"] == cnn.store.image_meta[1]["material"]
               for n in restricted.ranking)


def test_global_nn_refuses_bad_input(translate_cnn):
    cnn = translate_cnn
    with pytest.raises(QueryError, match=f"Unknown global_nn by='nope'; expected 'bottleneck', 'output' "
                                         rf"or a layer of this index \({LAYERS_TEXT}\)"):
        cnn.global_nn(1, by="nope")
    with pytest.raises(QueryError, match=r"global_nn: no database image is left "
                                         r"\(restrict=\[1, 2\], exclude=\[1, 2\]\)"):
        cnn.global_nn(1, restrict=[1, 2], exclude=[1, 2])
    with pytest.raises(QueryError, match=f"exclude: image id 99 does not exist; expected 0 <= id < {N}"):
        cnn.global_nn(1, exclude=[99])


def test_global_nn_excludes_an_array_of_ids(translate_cnn):
    g = translate_cnn.global_nn(2, exclude=np.array([2, 5, 7]))
    assert not {2, 5, 7} & set(g.ranking.tolist()) and len(g.ranking) == N - 3


@pytest.mark.parametrize("bad", [1.7, True, None])
def test_restrict_refuses_ids_that_are_not_integers(translate_cnn, bad):
    with pytest.raises(QueryError, match=f"restrict: expected an integer image id or a name, got {bad!r}"):
        translate_cnn.query(0, top_k=1, restrict=[bad])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_threads_must_be_a_positive_integer(translate_cnn, bad):
    with pytest.raises(QueryError, match=r"Expected (threads to be an integer|1 <= threads <= \d+), but threads = "):
        translate_cnn.query(0, top_k=1, threads=bad)
