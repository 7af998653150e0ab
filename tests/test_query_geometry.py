"""A query file of the store's dataset geometry gets the preprocessing its training files got.

A store built from 48×80 frames with ``--size 64`` (or from 96×192 pix2pix AB files) answers a
query of one of that dataset's own files — resized (and, for AB files, halved) exactly as the
build did — while an image of any other geometry is still refused, naming both accepted sizes.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from compnn_index.api import CompNN
from compnn_index.data import FACADES_PALETTE, open_dataset
from compnn_index.errors import QueryError
from compnn_index.jobs import workflows

rng = np.random.default_rng(0)


def _photo(h: int, w: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _annotated(root, h=48, w=80):
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(3):
            _photo(h, w).save(root / split / f"{i}.png")
            Image.fromarray(rng.integers(0, 12, (h, w), dtype=np.uint8)).save(root / f"{split}annot" / f"{i}.png")
    (root / "classes.txt").write_text("\n".join(f"c{i}" for i in range(12)) + "\n")
    return root


def _pix2pix(root, h=96):
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for i in range(3):
            ab = np.concatenate([np.asarray(_photo(h, h)),
                                 FACADES_PALETTE[rng.integers(0, 12, (h, h))].astype(np.uint8)], axis=1)
            Image.fromarray(ab).save(root / split / f"{i}.png")
    return root


@pytest.fixture(scope="module", params=["annotated", "pix2pix"])
def resized_store(request, segment_index, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    data = _annotated(root / "data") if request.param == "annotated" else _pix2pix(root / "data")
    store = workflows.build(model=segment_index.model, data=data, size=64, layers=["decoder3"],
                            out=root / "store", threads=1, progress=False)
    return data, CompNN.load(store, threads=1)


def test_a_dataset_file_at_native_size_is_answered_as_the_build_preprocessed_it(resized_store):
    data, cnn = resized_store
    test = open_dataset(data, split="test", size=64, task="segment")
    file = data / "test" / test.names[1]
    res = cnn.explain(file, layer="decoder3", top_k=2)
    ref = cnn.explain(test[1].input, layer="decoder3", top_k=2)
    np.testing.assert_array_equal(res.query_input, test[1].input)  # the very same pixels
    np.testing.assert_array_equal(res.field.image, ref.field.image)
    np.testing.assert_array_equal(res.reconstructions["target"], ref.reconstructions["target"])


def test_an_image_of_another_geometry_is_refused_naming_both_sizes(resized_store, tmp_path):
    _, cnn = resized_store
    other = tmp_path / "other.png"
    _photo(40, 40).save(other)
    native = cnn.store.manifest["dataset"]["source_size"]
    with pytest.raises(QueryError, match=rf"expected a 64×64 image .* or {native[0]}×{native[1]} "
                                         r"\(its dataset's files\), got 40×40; .*--resize or --crop"):
        cnn.explain(other, layer="decoder3")


def test_cli_query_with_resize_keeps_the_dataset_rule_for_its_own_files(resized_store, tmp_path):
    # --resize of a whole pix2pix AB file would squeeze both halves into the query
    data, cnn = resized_store
    test = open_dataset(data, split="test", size=64, task="segment")
    docs = workflows.query(index=cnn.store.path, images=[str(data / "test" / test.names[0])],
                           out=tmp_path / "q", layer="decoder3", fit="resize", threads=1, progress=False)
    ref = cnn.explain(test[0].input, layer="decoder3")
    np.testing.assert_array_equal(np.asarray(docs[0]["nn_field"]["image"]), ref.field.image)


def test_http_upload_of_a_dataset_file_is_answered_and_another_geometry_refused(resized_store, tmp_path):
    import httpx

    from cli_server import CliServer

    data, cnn = resized_store
    test = open_dataset(data, split="test", size=64, task="segment")
    file = data / "test" / test.names[2]
    other = tmp_path / "other.png"
    _photo(40, 40).save(other)
    ref = cnn.explain(test[2].input, layer="decoder3", top_k=2)
    with CliServer(cnn.store.path, "--workers", "1", "--threads", "1") as srv:
        r = httpx.post(srv.url + "/v1/query", files={"image": (file.name, file.read_bytes(), "image/png")},
                       data={"layer": "decoder3", "top_k": "2"}, timeout=60)
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(np.asarray(r.json()["nn_field"]["image"]), ref.field.image)
        bad = httpx.post(srv.url + "/v1/query", files={"image": ("o.png", other.read_bytes(), "image/png")},
                         timeout=60)
        assert bad.status_code == 422
        h, w = cnn.store.manifest["dataset"]["source_size"]
        assert f"or {w}×{h} (its dataset's files), got 40×40" in bad.json()["error"]


def test_a_pix2pix_store_without_recorded_geometry_answers_its_own_ab_files(segment_index, tmp_path):
    """Stores built before ``source_size`` was recorded: an H×2W AB file of an H×W store is its own."""
    import json

    data = _pix2pix(tmp_path / "data", h=64)
    store = workflows.build(model=segment_index.model, data=data, layers=["decoder3"], out=tmp_path / "store",
                            threads=1, progress=False)
    man = json.loads((store / "manifest.json").read_text())
    del man["dataset"]["source_size"]
    (store / "manifest.json").write_text(json.dumps(man))
    cnn = CompNN.load(store, threads=1)
    test = open_dataset(data, split="test", task="segment")
    res = cnn.explain(data / "test" / test.names[0], layer="decoder3", top_k=2)
    np.testing.assert_array_equal(res.query_input, test[0].input)
    other = tmp_path / "other.png"
    _photo(64, 96).save(other)  # not 64×128: still refused
    with pytest.raises(QueryError, match=r"expected a 64×64 image"):
        cnn.explain(other, layer="decoder3")
