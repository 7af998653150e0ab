"""The index store: streaming build, atomic write, manifest, mmap loading, id arithmetic."""
from __future__ import annotations

import gc
import json

import faiss
import numpy as np
import pytest
import torch

from compnn_index.data import open_dataset
from compnn_index.errors import IndexStoreError, ModelError, QueryError
from compnn_index.features import capture, default_layer_specs, global_descriptor, hyperpatches
from compnn_index.index import FORMAT_VERSION, IndexStore, build_index
from compnn_index.index import memory
from compnn_index.index.flatfile import FlatIPWriter
from compnn_index.models import build_model, model_hash

SIZE = 32
N_IMAGES = 5
LAYERS = ["decoder2", "encoder2"]


def tiny_model(ngf: int = 4, task: str = "translate", out_channels: int = 3):
    return build_model("unet", task=task, out_channels=out_channels, ngf=ngf, size=SIZE).eval()


class FailingDataset:
    """Wraps a dataset; item ``fail_at`` raises ``error`` (simulates an interrupted build)."""

    def __init__(self, base, fail_at: int, error: BaseException) -> None:
        self._base, self._fail_at, self._error = base, fail_at, error

    def __len__(self) -> int:
        return len(self._base)

    def __getitem__(self, i: int):
        if i == self._fail_at:
            raise self._error
        return self._base[i]

    def __getattr__(self, name: str):
        return getattr(self._base, name)


@pytest.fixture(scope="module")
def dataset():
    return open_dataset("synthetic", size=SIZE, limit=N_IMAGES)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, model, dataset):
    out = tmp_path_factory.mktemp("stores") / "tiny"
    return build_index(model, dataset, layers=LAYERS, out=out, batch_size=2, progress=False,
                       model_path=None)


@pytest.fixture()
def store(store_path):
    return IndexStore.open(store_path)


def leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


# ---------------------------------------------------------------------------- round trip
def test_layer_vectors_are_the_hyperpatches_of_each_image_in_order(store, model, dataset):
    specs = default_layer_specs(model, dataset.image_size)
    x = np.stack([dataset[i].input for i in range(N_IMAGES)])
    _, acts = capture(model, torch.from_numpy(x), [specs[name] for name in LAYERS])
    assert store.layers == LAYERS
    for name in LAYERS:
        hp = hyperpatches(acts[name], specs[name].k)  # (N, Hp, Wp, D)
        n, gh, gw, d = hp.shape
        vec = store.vectors(name)
        assert store.grid(name) == (gh, gw)
        assert vec.shape == (N_IMAGES * gh * gw, d) == (store.layer_index(name).ntotal, store.dim(name))
        np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(vec, hp.reshape(-1, d), atol=1e-6)
        offs = store.offsets(name)
        assert offs.tolist() == [i * gh * gw for i in range(N_IMAGES + 1)]
        assert store.grids(name).tolist() == [[gh, gw]] * N_IMAGES
        assert store.spec(name) == specs[name]


def test_global_index_holds_one_bottleneck_descriptor_per_image(store, model, dataset):
    spec = default_layer_specs(model, dataset.image_size)[model.bottleneck_tap()]
    x = np.stack([dataset[i].input for i in range(N_IMAGES)])
    _, acts = capture(model, torch.from_numpy(x), [spec])
    expected = global_descriptor(acts[spec.name])
    gv = store.global_vectors()
    assert gv.shape == expected.shape and gv.shape[0] == N_IMAGES
    np.testing.assert_allclose(gv, expected, atol=1e-6)
    assert store.manifest["global"]["layer"] == model.bottleneck_tap()


def test_sidecar_arrays_hold_inputs_targets_and_network_outputs(store, model, dataset):
    inputs, targets, outputs = (store.array(k) for k in ("inputs", "targets", "outputs"))
    assert inputs.dtype == targets.dtype == outputs.dtype == np.float32
    assert inputs.shape == targets.shape == outputs.shape == (N_IMAGES, 3, SIZE, SIZE)
    assert not inputs.flags.writeable
    np.testing.assert_array_equal(inputs[3], dataset[3].input)
    np.testing.assert_array_equal(targets[1], dataset[1].target)
    with torch.no_grad():
        out = model(torch.from_numpy(np.array(inputs[:2]))).numpy()
    np.testing.assert_allclose(outputs[:2], out, atol=1e-5)
    with pytest.raises(IndexStoreError, match=r"unknown array 'activations'.*inputs, targets, outputs"):
        store.array("activations")


def test_manifest_records_model_dataset_images_layers_and_versions(store, model, dataset):
    man = store.manifest
    assert man["format_version"] == FORMAT_VERSION
    assert man["model"] == {"arch": "unet", "config": model.config, "hash": model_hash(model),
                            "checkpoint": None}
    assert man["dataset"] == json.loads(json.dumps(dataset.identity))
    assert man["task"] == "translate" and man["num_classes"] is None
    assert store.image_names == dataset.names
    assert [im["id"] for im in man["images"]] == list(range(N_IMAGES))
    assert store.image_meta[2] == json.loads(json.dumps(dataset[2].meta))
    assert {im["height"] for im in man["images"]} == {SIZE}
    entry = man["layers"]["decoder2"]
    assert entry["file"] == "layers/decoder2.faiss"
    assert entry["ntotal"] == N_IMAGES * entry["grid"][0] * entry["grid"][1]
    assert set(man["versions"]) >= {"faiss", "torch", "numpy", "compnn_index"}
    assert man["versions"]["faiss"] == faiss.__version__


def test_segment_store_keeps_argmax_labels_and_palette(tmp_path):
    ds = open_dataset("synthetic", size=SIZE, limit=2, task="segment")
    net = tiny_model(task="segment", out_channels=ds.num_classes)
    store = IndexStore.open(build_index(net, ds, layers=["decoder2"], out=tmp_path / "seg",
                                        progress=False))
    outputs, targets = store.array("outputs"), store.array("targets")
    assert outputs.dtype == targets.dtype == np.int64
    assert outputs.shape == targets.shape == (2, SIZE, SIZE)
    with torch.no_grad():
        logits = net(torch.from_numpy(np.stack([ds[i].input for i in range(2)])))
    np.testing.assert_array_equal(outputs, logits.argmax(1).numpy())
    assert store.manifest["num_classes"] == ds.num_classes
    assert store.manifest["palette"] == np.asarray(ds.palette).tolist()


# ---------------------------------------------------------------------------- ids
def test_ids_and_positions_are_offset_arithmetic(store):
    hp, wp = store.grid("decoder2")
    offs = store.offsets("decoder2")
    image, y, x = store.layer("decoder2").ids_to_positions([0, offs[2] + 3 * wp + 1, offs[-1] - 1])
    assert image.tolist() == [0, 2, N_IMAGES - 1]
    assert y.tolist() == [0, 3, hp - 1] and x.tolist() == [0, 1, wp - 1]
    ids = np.arange(offs[-1])
    back = store.layer("decoder2").positions_to_ids(*store.layer("decoder2").ids_to_positions(ids))
    np.testing.assert_array_equal(back, ids)
    assert store.layer("decoder2").positions_to_ids(1, 0, np.arange(3)).tolist() == [offs[1], offs[1] + 1, offs[1] + 2]


def test_id_arithmetic_rejects_out_of_range_values(store):
    hp, wp = store.grid("decoder2")
    n = store.offsets("decoder2")[-1]
    with pytest.raises(QueryError, match=rf"expected ids 0 <= id < {n}, but ids contains \[{n}\]"):
        store.layer("decoder2").ids_to_positions([0, n])
    with pytest.raises(QueryError, match=rf"\(y, x\) = \({hp}, 0\) is outside image 1's grid \({hp}, {wp}\)"):
        store.layer("decoder2").positions_to_ids(1, hp, 0)
    with pytest.raises(QueryError, match=rf"image ids 0 <= image < {N_IMAGES}, but got \[{N_IMAGES}\]"):
        store.layer("decoder2").positions_to_ids(N_IMAGES, 0, 0)


# ---------------------------------------------------------------------------- mmap / read-only
@pytest.mark.parametrize("mmap", [True, False])
def test_vectors_are_a_read_only_view_of_the_faiss_storage(store_path, mmap):
    store = IndexStore.open(store_path, mmap=mmap)
    index = store.layer_index("encoder2")
    vec = store.vectors("encoder2")
    assert not vec.flags.writeable and not vec.flags.owndata
    np.testing.assert_array_equal(vec[7], index.reconstruct(7))
    with pytest.raises(ValueError, match="read-only"):
        vec[0, 0] = 1.0
    with pytest.raises(IndexStoreError, match=r"layer 'encoder2': the index store is read-only \(add"):
        index.add(np.zeros((1, index.d), dtype=np.float32))
    with pytest.raises(IndexStoreError, match=r"read-only \(reset"):
        index.reset()
    assert index.ntotal == vec.shape[0]


def test_vectors_view_outlives_the_store(store_path):
    store = IndexStore.open(store_path)
    vec = store.vectors("decoder2")
    expected = np.array(vec[-3:])
    del store
    gc.collect()
    np.testing.assert_array_equal(vec[-3:], expected)


def test_range_search_returns_global_ids_inside_the_range(store):
    index = store.layer_index("decoder2")
    offs = store.offsets("decoder2")
    q = store.vectors("decoder2")[offs[3] + 5 : offs[3] + 8]
    sims, ids = index.search(q, 1, id_range=(offs[3], offs[4]))
    assert ids[:, 0].tolist() == [offs[3] + 5, offs[3] + 6, offs[3] + 7]
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)
    with pytest.raises(QueryError, match=r"expected queries of shape \(nq, \d+\), but got \(3, 2\)"):
        index.search(np.zeros((3, 2), dtype=np.float32))


def test_flat_writer_output_is_byte_identical_to_faiss_write_index(tmp_path):
    x = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)
    with FlatIPWriter(tmp_path / "ours.faiss", 6) as writer:
        writer.add(x[:20])
        writer.add(x[20:])
    ref = faiss.IndexFlatIP(6)
    ref.add(x)
    faiss.write_index(ref, str(tmp_path / "ref.faiss"))
    assert (tmp_path / "ours.faiss").read_bytes() == (tmp_path / "ref.faiss").read_bytes()


# ---------------------------------------------------------------------------- atomic build
@pytest.mark.parametrize("error", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_interrupted_build_leaves_nothing_that_loads(tmp_path, model, dataset, error):
    out = tmp_path / "store"
    broken = FailingDataset(dataset, fail_at=3, error=error)
    with pytest.raises(type(error)):
        build_index(model, broken, layers=["decoder2"], out=out, batch_size=1, progress=False)
    assert not out.exists()
    assert leftovers(tmp_path, "store") == []
    with pytest.raises(IndexStoreError, match="is not a directory"):
        IndexStore.open(out)


def test_existing_store_is_refused_and_replaced_only_after_success(tmp_path, model, dataset):
    out = build_index(model, dataset, layers=["encoder2"], out=tmp_path / "s", progress=False)
    with pytest.raises(IndexStoreError, match=r"'.*s' already exists; pass overwrite=True"):
        build_index(model, dataset, layers=["decoder2"], out=out, progress=False)
    broken = FailingDataset(dataset, fail_at=2, error=RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        build_index(model, broken, layers=["decoder2"], out=out, overwrite=True, progress=False)
    assert IndexStore.open(out).layers == ["encoder2"]  # the old store is intact
    build_index(model, dataset, layers=["decoder2"], out=out, overwrite=True, progress=False)
    assert IndexStore.open(out).layers == ["decoder2"]
    assert leftovers(tmp_path, "s") == []


def test_build_refuses_a_store_larger_than_the_free_disk(tmp_path, model, dataset, monkeypatch):
    monkeypatch.setattr(memory, "free_disk_bytes", lambda directory: 10_000)
    with pytest.raises(IndexStoreError, match=r"needs 0\.\d\d GB \(layer decoder2 .*\) on disk, but only 0\.00 GB is free"):
        build_index(model, dataset, layers=["decoder2"], out=tmp_path / "big", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_build_refuses_a_batch_larger_than_the_available_ram(tmp_path, model, dataset, monkeypatch):
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 1000)
    with pytest.raises(IndexStoreError, match=r"one batch of 4 images needs 0\.\d\d GB of RAM, but only 0\.00 GB"):
        build_index(model, dataset, layers=["decoder2"], out=tmp_path / "b", batch_size=4, progress=False)


def test_build_rejects_unknown_layers_and_bad_options(tmp_path, model, dataset):
    with pytest.raises(ModelError, match=r"unknown layers \['decoder9'\]: expected names among encoder1, "):
        build_index(model, dataset, layers=["decoder9"], out=tmp_path / "x", progress=False)
    with pytest.raises(IndexStoreError, match=r"batch_size to be a positive integer, but batch_size = 0"):
        build_index(model, dataset, layers=["decoder2"], out=tmp_path / "x", batch_size=0, progress=False)
    with pytest.raises(IndexStoreError, match=r"non-empty list of layer names, but layers = 'decoder2'"):
        build_index(model, dataset, layers="decoder2", out=tmp_path / "x", progress=False)


# ---------------------------------------------------------------------------- model check
def test_check_model_accepts_the_model_and_lists_every_mismatch(store, model):
    store.check_model(model)
    wider = tiny_model(ngf=8)
    with pytest.raises(IndexStoreError, match=r"model hash [0-9a-f]{12}… differs from the index's "
                       rf"{model_hash(model)[:12]}…; config ngf 8 vs 4$"):
        store.check_model(wider)
    segnet = build_model("segnet", task="translate", ngf=4, size=SIZE)
    with pytest.raises(IndexStoreError, match=r"differs from the index's [0-9a-f]{12}…; arch 'segnet' vs 'unet'$"):
        store.check_model(segnet)


# ---------------------------------------------------------------------------- opening errors
def test_open_reports_missing_or_corrupt_files(store_path, tmp_path):
    import shutil

    with pytest.raises(IndexStoreError, match="is not a directory"):
        IndexStore.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexStoreError, match=r"manifest\.json' is missing"):
        IndexStore.open(tmp_path / "empty")

    copy = tmp_path / "copy"
    shutil.copytree(store_path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(IndexStoreError, match=r"manifest\.json' is not a readable JSON manifest"):
        IndexStore.open(copy)
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(IndexStoreError, match=r"format_version = 99, but this version of compnn-index reads "
                                              r"format versions 1, 2; rebuild the store with `compnn build`"):
        IndexStore.open(copy)
    # a version-1 store (no codec, norms, shards or checksums fields) still loads, as fp32
    v1 = json.loads(json.dumps(manifest))
    v1["format_version"] = 1
    for key in ("shards", "checksums"):
        v1.pop(key, None)
    for entry in v1["layers"].values():
        entry.pop("codec", None)
        entry.pop("norms", None)
    (copy / "manifest.json").write_text(json.dumps(v1))
    old = IndexStore.open(copy)
    assert old.manifest["layers"]["decoder2"]["codec"] == "fp32" and old.manifest["shards"] is None
    assert old.layer("decoder2").codec == "fp32"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    layer_file = copy / "layers" / "decoder2.faiss"
    data = layer_file.read_bytes()
    layer_file.write_bytes(data[:-4])
    with pytest.raises(IndexStoreError, match=rf"decoder2\.faiss' has {len(data) - 4} bytes, expected {len(data)}"):
        IndexStore.open(copy)
    layer_file.unlink()
    with pytest.raises(IndexStoreError, match=r"index file '.*decoder2\.faiss' is missing"):
        IndexStore.open(copy)


def test_unknown_layer_lists_the_available_ones(store):
    with pytest.raises(IndexStoreError, match=r"unknown layer 'decoder3': .* has layers decoder2, encoder2"):
        store.vectors("decoder3")


def test_prefetch_larger_than_the_memory_to_spare_is_skipped(tmp_path, monkeypatch):
    """Under a memory cap a prefetch of more than it can hold would only thrash: it reads nothing."""
    from compnn_index.index import readahead
    from compnn_index.data import open_dataset
    from compnn_index.models import build_model

    ds = open_dataset("synthetic", size=32, limit=3)
    model = build_model("unet", task="translate", out_channels=3, ngf=4, size=32).eval()
    store = IndexStore.open(build_index(model, ds, layers=["decoder2"], out=tmp_path / "s", progress=False))
    lv = store.layer("decoder2")
    reads = []
    monkeypatch.setattr(readahead, "memory_budget", lambda: 1024)  # 1 KiB to spare
    monkeypatch.setattr(readahead, "resident_pages", lambda addr, n: (0, max(1, n // 4096)))  # cold
    monkeypatch.setattr(readahead.os, "preadv", lambda *a: reads.append(a) or 0)
    out = lv.prefetch([0, 1, 2])
    assert out["method"].startswith("skipped:") and out["read_bytes"] == 0 and not reads


# ---------------------------------------------------------------------------- sample pass reuse
def _forward_rows(model):
    """A forward hook counting the images the model is run on; returns (counter, handle)."""
    seen = {"rows": 0}
    handle = model.register_forward_hook(lambda m, args, out: seen.__setitem__("rows", seen["rows"] + args[0].shape[0]))
    return seen, handle


def test_build_forward_passes_each_image_once_reusing_the_fit_sample(tmp_path, model, dataset, monkeypatch):
    from compnn_index.index import fit as fit_module

    seen, handle = _forward_rows(model)
    try:
        build_index(model, dataset, layers=LAYERS, out=tmp_path / "unsampled", batch_size=2,
                    progress=False, screen=0)  # fp32 without a screen fits nothing: no sample pass
        rows_unsampled = seen["rows"]
        seen["rows"] = 0
        reused = build_index(model, dataset, layers=LAYERS, out=tmp_path / "reused", batch_size=2,
                             progress=False)
        rows_reused = seen["rows"]
        seen["rows"] = 0
        monkeypatch.setattr(fit_module, "REUSE_BYTES", 0)  # nothing kept: the sample is passed again
        fresh = build_index(model, dataset, layers=LAYERS, out=tmp_path / "fresh", batch_size=2,
                            progress=False)
        rows_fresh = seen["rows"]
    finally:
        handle.remove()
    # the sample of a 5-image set is every image: passed once more unless it is kept
    assert rows_reused == rows_unsampled
    assert rows_fresh == rows_unsampled + N_IMAGES
    a, b = IndexStore.open(reused), IndexStore.open(fresh)
    for name in LAYERS:
        np.testing.assert_allclose(a.vectors(name), b.vectors(name), atol=1e-6)
        assert a.manifest["layers"][name]["screen"] is not None  # the build sampled, for the screen
    np.testing.assert_array_equal(a.array("outputs"), b.array("outputs"))
    assert a.manifest["images"] == b.manifest["images"]
