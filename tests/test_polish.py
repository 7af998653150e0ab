"""HyperPatch-Match's polish: a relaxed bounded search seeded by its field (``QueryOptions.polish``)."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from compnn_index.errors import QueryError
from compnn_index.index.layer import LayerVectors
from compnn_index.index.screen import compute_screen
from compnn_index.options import QueryOptions
from compnn_index.search.bounded import bounded_search
from compnn_index.search.exact import exact_search
from compnn_index.search.hyperpatchmatch import patchmatch
from compnn_index.search.strategy import polish_field

pytest.importorskip("compnn_index.search._bounded", reason="native kernel not built")


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def problem():
    """Smooth, clustered vectors (so HyperPatch-Match is far from exact) on 6 images of 12 x 12."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((6, 48))
    x = _unit(centres[rng.integers(0, 6, 6 * 144)] + 0.6 * rng.standard_normal((6 * 144, 48)))
    lv = LayerVectors.from_array(x, grids=np.full((6, 2), 12, dtype=np.int64))
    lv.screen = compute_screen(lv)
    q = _unit(centres[rng.integers(0, 6, 100)] + 0.6 * rng.standard_normal((100, 48))).reshape(10, 10, 48)
    images = np.arange(6, dtype=np.int64)
    hpm = patchmatch(q, lv, images, iterations=1, samples=2, jumps=2, threads=1)
    return q, lv, images, hpm


def test_polish_of_one_is_the_exact_field(problem):
    q, lv, images, hpm = problem
    exact = exact_search(q, lv, images, method="faiss")
    info: dict = {}
    got = polish_field(q, lv, images, hpm, polish=1.0, threads=1, info=info)
    np.testing.assert_allclose(got.similarity, exact.similarity, atol=1e-5)
    assert info["polish"]["residual_scale"] == 1.0
    assert 0.0 < info["polish"]["scored"] <= 1.0


@pytest.mark.parametrize("scale", [0.0, 0.3, 0.7])
def test_polish_never_loses_a_match_the_seed_had(problem, scale):
    q, lv, images, hpm = problem
    got = polish_field(q, lv, images, hpm, polish=scale, threads=1)
    assert np.all(got.similarity >= hpm.similarity - 1e-6)


def test_lower_residual_scale_scores_fewer_pairs_and_finds_fewer_exact_matches(problem):
    q, lv, images, hpm = problem
    exact = exact_search(q, lv, images, method="faiss")
    scored, hits = [], []
    for scale in (0.0, 0.5, 1.0):
        info: dict = {}
        got = bounded_search(q, lv, images, seed=hpm, residual_scale=scale, threads=1, info=info)
        scored.append(info["bounded_counts"]["exact"])
        hits.append(np.mean(got.similarity >= exact.similarity - 1e-6))
    assert scored[0] <= scored[1] <= scored[2]
    assert hits[0] <= hits[1] <= hits[2] == 1.0
    assert scored[0] < scored[2]  # the relaxed bound does prune more on this store


def test_polish_is_the_same_for_every_thread_count(problem):
    q, lv, images, hpm = problem
    a = polish_field(q, lv, images, hpm, polish=0.5, threads=1)
    b = polish_field(q, lv, images, hpm, polish=0.5, threads=3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.y, b.y) and np.array_equal(a.x, b.x)


def test_polish_off_or_without_a_screen_returns_the_field_and_says_why(problem):
    q, lv, images, hpm = problem
    assert polish_field(q, lv, images, hpm, polish=None) is hpm
    bare = LayerVectors.from_array(np.asarray(lv.raw).reshape(-1, 48).copy(), grids=lv.grids)
    info: dict = {}
    assert polish_field(q, bare, images, hpm, polish=0.8, info=info) is hpm
    assert info["polish"].startswith("off: ") and "screen" in info["polish"]


def test_residual_scale_outside_zero_one_is_refused_by_name(problem):
    q, lv, images, hpm = problem
    with pytest.raises(ValueError, match="residual_scale in \\[0, 1\\]"):
        bounded_search(q, lv, images, seed=hpm, residual_scale=1.5, threads=1)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), "0.5", True])
def test_query_options_refuse_a_polish_outside_zero_one(bad):
    with pytest.raises(QueryError, match="polish"):
        QueryOptions(polish=bad)


def test_cli_polish_accepts_off_and_numbers_and_refuses_others():
    from compnn_index.cli.parser import _polish

    assert _polish("off") is None and _polish("None") is None
    assert _polish("0.8") == 0.8 and _polish("1") == 1.0
    for bad in ("2", "-1", "nan", "abc"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a number in \\[0, 1\\] or 'off'"):
            _polish(bad)


def test_http_polish_field_is_parsed_or_refused_with_422():
    from compnn_index.service.params import Fields, parse_options
    from compnn_index.service.params import HTTPProblem

    assert parse_options(Fields({"polish": 0.8}), num_images=10).polish == 0.8
    assert parse_options(Fields({"polish": "off"}), num_images=10).polish is None
    assert parse_options(Fields({"polish": None}), num_images=10).polish is None
    for bad in (1.5, "x", True, [0.5]):
        with pytest.raises(HTTPProblem) as err:
            parse_options(Fields({"polish": bad}), num_images=10)
        assert err.value.status == 422 and "polish" in str(err.value)


def test_explain_with_polish_reports_it_and_matches_exact_at_one(segment_cnn):
    cnn = segment_cnn
    image = cnn.resolve_image(0)
    exact = cnn.explain(image, search="exact", exclude=[0], sources=())
    opts = QueryOptions(search="patchmatch", iterations=1, polish=1.0)
    res = cnn.explain(image, options=opts, exclude=[0], sources=())
    np.testing.assert_allclose(res.field.similarity, exact.field.similarity, atol=1e-5)
    assert res.params["polish"]["residual_scale"] == 1.0
    plain = cnn.explain(image, options=QueryOptions(search="patchmatch", iterations=1), exclude=[0], sources=())
    assert plain.params["polish"] is None
