"""Layer-store codecs (fp16, sq8): FAISS format, round trip, exact search and HyperPatch-Match on
the codes, in-place reading at the real unaligned offset, atomic compression, clear errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc

import faiss
import numpy as np
import pytest

from compnn_index.data import open_dataset
from compnn_index.errors import IndexStoreError
from compnn_index.index import IndexStore, build_index, compress_store
from compnn_index.index import codecs
from compnn_index.index.codecs import CodecDecoder, SQWriter
from compnn_index.index.compress import clean_stale
from compnn_index.index.layer import LayerVectors
from compnn_index.models import build_model
from compnn_index.search import exact_search
from compnn_index.search.hyperpatchmatch import patchmatch, patchmatch_reference

_hpm = pytest.importorskip("compnn_index.search._hpm", reason="native kernel not built")

SIZE = 32
N_IMAGES = 5
LAYERS = ["decoder2"]


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def dataset():
    return open_dataset("synthetic", size=SIZE, limit=N_IMAGES)


@pytest.fixture(scope="module")
def model():
    return build_model("unet", task="translate", out_channels=3, ngf=4, size=SIZE).eval()


@pytest.fixture(scope="module")
def stores(tmp_path_factory, model, dataset):
    """The same model and images built as fp32, fp16 and sq8 stores."""
    root = tmp_path_factory.mktemp("codec_stores")
    return {c: build_index(model, dataset, layers=LAYERS, out=root / c, batch_size=2, progress=False, codec=c)
            for c in codecs.CODECS}


def _layer_file_layer(codec: str, x: np.ndarray, path) -> LayerVectors:
    """``x`` written as a one-image-per-row-block layer file of ``codec``, memory-mapped back."""
    trained = codecs.train_codec(codec, x)
    with codecs.layer_writer(path, x.shape[1], codec, trained) as w:
        w.add(x[: len(x) // 3])
        w.add(x[len(x) // 3:])
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    raw = codecs.codes_view(index)
    dec = CodecDecoder(codec, raw, x.shape[1], codecs.trained_of(index))
    return raw, dec, index


# ------------------------------------------------------------------------------------------------
# Format


@pytest.mark.parametrize("codec", ["fp16", "sq8"])
@pytest.mark.parametrize("d", [44, 64])
def test_streamed_file_is_byte_identical_to_faiss_write_index(tmp_path, codec, d):
    rng = np.random.default_rng(d)
    x = _unit(rng.standard_normal((300, d)))
    trained = codecs.train_codec(codec, x)
    with SQWriter(tmp_path / "ours.faiss", d, codec, trained) as w:
        for a in range(0, 300, 70):
            w.add(x[a: a + 70])
    index = codecs.empty_sq_index(codec, d, trained)
    index.add(x)
    faiss.write_index(index, str(tmp_path / "faiss.faiss"))
    ours = (tmp_path / "ours.faiss").read_bytes()
    assert ours == (tmp_path / "faiss.faiss").read_bytes()
    assert len(ours) == codecs.file_bytes(codec, d, 300)
    assert codecs.codes_offset(codec, d) == (81 if codec == "fp16" else 81 + 8 * d)
    assert codecs.sniff_codec(tmp_path / "ours.faiss") == codec


def test_unclosed_writer_does_not_load_as_full_index(tmp_path):
    x = _unit(np.random.default_rng(0).standard_normal((50, 16)))
    w = SQWriter(tmp_path / "part.faiss", 16, "fp16")
    w.add(x)
    w.abort()
    assert faiss.read_index(str(tmp_path / "part.faiss")).ntotal == 0


# ------------------------------------------------------------------------------------------------
# Round trip and exact search


def test_store_sizes_are_half_and_quarter(stores):
    sizes = {c: (p / "layers" / "decoder2.faiss").stat().st_size for c, p in stores.items()}
    d = IndexStore.open(stores["fp32"]).dim("decoder2")
    body32 = sizes["fp32"] - codecs.codes_offset("fp32", d)
    assert sizes["fp16"] - codecs.codes_offset("fp16", d) == body32 // 2
    assert sizes["sq8"] - codecs.codes_offset("sq8", d) == body32 // 4


@pytest.mark.parametrize("codec, min_cos, max_abs", [("fp16", 0.99999, 2e-3), ("sq8", 0.995, 0.05)])
def test_round_trip_within_codec_error(stores, codec, min_cos, max_abs):
    ref = IndexStore.open(stores["fp32"]).layer("decoder2").vectors
    lv = IndexStore.open(stores[codec]).layer("decoder2")
    assert lv.codec == codec
    with pytest.raises(IndexStoreError, match="stored as"):
        lv.vectors
    decoded = np.concatenate([b.copy() for _, b in lv.blocks(0, lv.ntotal, rows=100)])
    assert decoded.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(decoded, axis=1), 1.0, atol=1e-5)  # re-normalised
    assert np.einsum("ij,ij->i", decoded, ref).min() >= min_cos
    assert np.abs(decoded - ref).max() <= max_abs
    ids = np.array([0, 7, lv.ntotal - 1, 3])
    np.testing.assert_array_equal(lv.decode(ids), decoded[ids])


def test_sq8_decoder_matches_faiss_sa_decode(stores):
    store = IndexStore.open(stores["sq8"])
    lv = store.layer("decoder2")
    index = store._indexes["decoder2"]
    faiss_dec = index.sa_decode(np.ascontiguousarray(lv.raw[:200]))
    faiss.normalize_L2(faiss_dec)
    np.testing.assert_allclose(lv.decode(np.arange(200)), faiss_dec, atol=2e-6)


@pytest.mark.parametrize("codec", ["fp16", "sq8"])
def test_exact_search_on_codes_equals_brute_force_on_decoded(stores, codec, model, dataset):
    lv = IndexStore.open(stores[codec]).layer("decoder2")
    ref = IndexStore.open(stores["fp32"]).layer("decoder2")
    q = ref.vectors[ref.offsets[2]: ref.offsets[3]].reshape(*ref.grids[2], -1)  # image 2's own
    rng = np.random.default_rng(1)
    q = _unit(q + 0.05 * rng.standard_normal(q.shape).astype(np.float32))
    images = [0, 1, 3, 4]
    field = exact_search(q, lv, images)
    ids = np.concatenate([np.arange(*lv.image_range(i)) for i in images])
    decoded = lv.decode(ids)
    sims = q.reshape(-1, q.shape[-1]).astype(np.float64) @ decoded.astype(np.float64).T
    best = sims.max(axis=1)
    got_ids = lv.positions_to_ids(field.image, field.y, field.x).ravel()
    got = sims[np.arange(len(best)), np.searchsorted(ids, got_ids)]
    np.testing.assert_allclose(got, best, atol=2e-6)           # the best, up to float ties
    ties = (best - np.sort(sims, axis=1)[:, -2]) < 1e-6
    assert np.array_equal(got_ids[~ties], ids[sims.argmax(axis=1)][~ties])
    np.testing.assert_allclose(field.similarity.ravel(), best, atol=2e-6)
    # and close to the fp32 answer
    f32 = exact_search(q, ref, images)
    ratio = field.similarity / f32.similarity
    assert ratio.mean() >= (0.999 if codec == "fp16" else 0.99)


# ------------------------------------------------------------------------------------------------
# HyperPatch-Match on the codes


def _quarter_grid(rng, shape):
    """Unit vectors of 16 components ±1/4: exact in fp16, norm exactly 1, exact dot products
    with k/8 queries — so the kernel and the reference must agree bit for bit."""
    return (rng.choice([-0.25, 0.25], size=shape)).astype(np.float32)


def _codec_layer(codec, per_image, tmp_path):
    grids = np.array([v.shape[:2] for v in per_image], dtype=np.int64)
    x = np.ascontiguousarray(np.concatenate([v.reshape(-1, v.shape[-1]) for v in per_image]))
    raw, dec, index = _layer_file_layer(codec, x, tmp_path / f"{codec}.faiss")
    return LayerVectors(codec, None, grids, raw=raw, dim=x.shape[1], codec=codec, decoder=dec,
                        codec_params=dec.params(), owner=index), x


def test_fp16_kernel_matches_reference_bit_for_bit(tmp_path):
    rng = np.random.default_rng(3)
    per_image = [_quarter_grid(rng, (h, w, 16)) for h, w in [(9, 11), (7, 7), (12, 5), (10, 10)]]
    lv, _ = _codec_layer("fp16", per_image, tmp_path)
    queries = (rng.integers(-8, 9, size=(8, 9, 16)) / 8).astype(np.float32)
    images = np.array([0, 1, 3])
    kw = dict(iterations=5, samples=3, jumps=2, seed=11, return_stats=True)
    native, ns = patchmatch(queries, lv, images, **kw)
    ref, rs = patchmatch_reference(queries, lv, images, **kw)
    for name in ("image", "y", "x", "similarity"):
        np.testing.assert_array_equal(getattr(native, name), getattr(ref, name), err_msg=name)
    assert (ns.candidates, ns.mean_similarity) == (rs.candidates, rs.mean_similarity)


@pytest.mark.parametrize("codec", ["fp16", "sq8"])
@pytest.mark.parametrize("d", [44, 48])  # 44 leaves a scalar tail after the 8-wide loop
def test_kernel_on_codes_agrees_with_reference_on_decoded(tmp_path, codec, d):
    rng = np.random.default_rng(d)
    per_image = [_unit(rng.standard_normal((h, w, d))) for h, w in [(12, 13), (10, 11), (14, 9)]]
    lv, _ = _codec_layer(codec, per_image, tmp_path)
    queries = _unit(per_image[1] + 0.3 * rng.standard_normal(per_image[1].shape))
    images = np.array([0, 1, 2])
    kw = dict(iterations=4, samples=4, jumps=2, seed=5)
    native = patchmatch(queries, lv, images, **kw)
    ref = patchmatch_reference(queries, lv, images, **kw)
    same = (native.image == ref.image) & (native.y == ref.y) & (native.x == ref.x)
    assert same.mean() >= 0.97  # float32 vs float64 rounding may flip near-ties, rarely
    np.testing.assert_allclose(native.similarity[same], ref.similarity[same], atol=2e-6)
    # the reported similarity is the cosine with the decoded (re-normalised) vector
    ids = lv.positions_to_ids(native.image, native.y, native.x).ravel()
    cos = np.einsum("ij,ij->i", queries.reshape(-1, d).astype(np.float64), lv.decode(ids).astype(np.float64))
    np.testing.assert_allclose(native.similarity.ravel(), cos, atol=2e-6)
    assert native.similarity.max() <= 1.0 + 1e-6


def test_mapped_fp16_store_read_in_place_at_unaligned_offset(stores, monkeypatch):
    store = IndexStore.open(stores["fp16"])
    lv = store.layer("decoder2")
    index = store._indexes["decoder2"]
    assert not index.codes.is_owned  # FAISS mapped the codes, they are not in RAM
    # The codes start at file byte 81: odd, not even 2-byte aligned.
    assert lv.raw.ctypes.data % 4096 == 81 and lv.raw.ctypes.data % 2 == 1
    ref = IndexStore.open(stores["fp32"]).layer("decoder2").vectors
    q = ref[lv.offsets[1]: lv.offsets[2]].reshape(*lv.grids[1], -1).copy()
    seen = []
    original = _hpm.patchmatch

    def spy(q, v, *args, **kw):
        seen.append(v)
        return original(q, v, *args, **kw)

    patchmatch(q, lv, [0, 1, 2], iterations=1)  # warm-up
    monkeypatch.setattr(_hpm, "patchmatch", spy)
    tracemalloc.start()
    try:
        # screen=False: the screen's query-sized projection would dwarf this 72 KB layer
        # (tests/test_screen.py checks the screened path's allocations on a larger one)
        field = patchmatch(q, lv, [0, 1, 2], iterations=4, seed=2, screen=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen and seen[0].ctypes.data == lv.raw.ctypes.data  # the mapped codes themselves
    assert peak < lv.raw.nbytes / 4  # nothing of the size of the layer was allocated
    assert (field.image == 1).mean() > 0.9  # finds the image itself


# ------------------------------------------------------------------------------------------------
# Compression


def test_compress_equals_build_with_codec(stores, tmp_path):
    for codec in ("fp16", "sq8"):
        out = compress_store(stores["fp32"], tmp_path / codec, codec=codec, progress=False)
        store = IndexStore.open(out)
        assert store.codec("decoder2") == codec and store.manifest["compressed"]["codec"] == codec
        if codec == "fp16":  # same vectors, same codes, byte for byte
            assert ((out / "layers/decoder2.faiss").read_bytes()
                    == (stores["fp16"] / "layers/decoder2.faiss").read_bytes())
        np.testing.assert_array_equal(store.global_vectors(), IndexStore.open(stores["fp32"]).global_vectors())
        np.testing.assert_array_equal(store.array("inputs"), IndexStore.open(stores["fp32"]).array("inputs"))


def test_compress_interrupted_leaves_nothing_loadable(stores, tmp_path):
    out = tmp_path / "c16"
    with pytest.raises(KeyboardInterrupt):
        compress_store(stores["fp32"], out, codec="fp16", progress=False, rows=64, _interrupt_after=2)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too


def test_stale_temporary_folder_of_a_killed_run_is_removed(stores, tmp_path):
    out = tmp_path / "c16"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = tmp_path / ".c16.compressing-dead1234"
    (stale / "layers").mkdir(parents=True)
    (stale / "layers" / "decoder2.faiss").write_bytes(b"IxSQ partial")
    (stale / "OWNER").write_text(f"{os.uname().nodename} {dead.stdout.strip()}\n")
    alive = tmp_path / ".c16.compressing-alive123"
    alive.mkdir()
    (alive / "OWNER").write_text(f"{os.uname().nodename} {os.getpid()}\n")
    with pytest.raises(IndexStoreError):
        IndexStore.open(stale)  # nothing loadable: no manifest
    compress_store(stores["fp32"], out, codec="fp16", progress=False)
    assert not stale.exists() and alive.exists()  # a live run's folder is left alone
    assert IndexStore.open(out).codec("decoder2") == "fp16"
    assert clean_stale(out) == []


# ------------------------------------------------------------------------------------------------
# Errors


def test_manifest_codec_mismatch_is_a_clear_error(stores, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(stores["fp32"], bad)
    man = json.loads((bad / "manifest.json").read_text())
    man["layers"]["decoder2"]["codec"] = "fp16"
    (bad / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(IndexStoreError, match=r"holds codec fp32, but the manifest records codec 'fp16'"):
        IndexStore.open(bad)
    man["layers"]["decoder2"]["codec"] = "int4"
    (bad / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(IndexStoreError, match=r"codec 'int4'.*reads fp32, fp16, sq8"):
        IndexStore.open(bad)


def test_kernel_rejects_bad_codec_arguments(stores):
    lv = IndexStore.open(stores["sq8"]).layer("decoder2")
    q = np.zeros((2, 2, lv.dim), np.float32)
    args = (q, lv.raw, np.array([0]), lv.offsets, lv.grids, None, None, None, 1, 1, 0, 0, 1, 0.0)
    with pytest.raises(ValueError, match="scale and bias"):
        _hpm.patchmatch(*args, codec="sq8")
    with pytest.raises(ValueError, match="codec 'fp32', 'fp16' or 'sq8'"):
        _hpm.patchmatch(*args, codec="int4")
    with pytest.raises(ValueError, match="bytes per vector"):
        _hpm.patchmatch(*args, codec="fp16")


def test_unknown_codec_refused_by_build(model, dataset, tmp_path):
    with pytest.raises(IndexStoreError, match="codec"):
        build_index(model, dataset, layers=LAYERS, out=tmp_path / "x", progress=False, codec="int4")


def test_cli_compress_and_build_codec_flag(stores, tmp_path, capsys):
    from compnn_index.cli import build_parser, main

    assert main(["compress", str(stores["fp32"]), "--codec", "sq8", "--out", str(tmp_path / "s8")]) == 0
    assert IndexStore.open(tmp_path / "s8").codec("decoder2") == "sq8"
    assert main(["compress", str(stores["fp32"]), "--codec", "sq8", "--out", str(tmp_path / "s8")]) == 2
    assert "already exists" in capsys.readouterr().err
    a = build_parser().parse_args(["build", "--model", "m.pt", "--data", "d", "--out", "o", "--codec", "fp16"])
    assert a.codec == "fp16"


def test_compare_reports_every_codec_against_fp32_exact(stores, model, tmp_path):
    from compnn_index.api import CompNN
    from compnn_index.jobs.compare import compare

    cnn = CompNN(IndexStore.open(stores["fp32"]), model)
    kw = dict(data="synthetic", size=SIZE, limit=2, layer="decoder2", top_k=[3], iterations=[2],
              init=["random"], baselines=[], progress=False, cnn=cnn,
              stores=[stores["fp16"], stores["sq8"]], exact_cache=tmp_path / "cache")
    doc = compare(stores["fp32"], out=tmp_path / "a", **kw)
    assert set(doc["codecs"]) == {"fp32", "fp16", "sq8"}
    rows = {(r["method"], r["codec"]) for r in doc["settings"]}
    assert {("exact", "fp16"), ("exact", "sq8"), ("patchmatch", "fp32"), ("patchmatch", "sq8")} <= rows
    ex16 = next(r for r in doc["settings"] if r["method"] == "exact" and r["codec"] == "fp16")
    assert ex16["similarity_ratio"] > 0.999 and ex16["gflops"] > 0
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2  # one fp32 exact field per query
    again = compare(stores["fp32"], out=tmp_path / "b", **kw)  # read back from the cache
    assert again["exact"]["fidelity"] == doc["exact"]["fidelity"]
    md = (tmp_path / "b" / "comparison.md").read_text()
    assert "| exact fp16 |" in md and "| patchmatch sq8 |" in md and "| fp16 |" in md


@pytest.mark.parametrize("codec", ["fp32", "fp16", "sq8"])
def test_interleaved_scans_and_prefetch_do_not_change_the_field(tmp_path, codec):
    rng = np.random.default_rng(4)
    per_image = [_unit(rng.standard_normal((h, w, 24))) for h, w in [(13, 12), (11, 15), (9, 9)]]
    if codec == "fp32":
        grids = np.array([v.shape[:2] for v in per_image])
        x = np.ascontiguousarray(np.concatenate([v.reshape(-1, 24) for v in per_image]))
        lv = LayerVectors.from_array(x, grids=grids)
    else:
        lv, _ = _codec_layer(codec, per_image, tmp_path)
    queries = _unit(per_image[0] + 0.2 * rng.standard_normal(per_image[0].shape))
    kw = dict(iterations=5, samples=3, jumps=2, seed=9, return_stats=True)
    old = (_hpm.get_interleave(), _hpm.get_prefetch())
    try:
        runs = []
        for rows, pf in [(1, 0), (4, 256), (7, 64), (32, 4096)]:
            _hpm.set_interleave(rows)
            _hpm.set_prefetch(pf)
            runs.append(patchmatch(queries, lv, [0, 1, 2], threads=2, **kw))
    finally:
        _hpm.set_interleave(old[0])
        _hpm.set_prefetch(old[1])
    for f, st in runs[1:]:
        for name in ("image", "y", "x", "similarity"):
            np.testing.assert_array_equal(getattr(f, name), getattr(runs[0][0], name), err_msg=name)
        assert st.candidates == runs[0][1].candidates


def test_prefetch_populates_only_uncached_ranges(tmp_path):
    from compnn_index.index.readahead import LayerSource

    x = _unit(np.random.default_rng(0).standard_normal((20000, 64)))
    path = tmp_path / "pf.faiss"
    with SQWriter(path, 64, "fp16") as w:
        w.add(x)
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    raw = codecs.codes_view(faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC))
    src = LayerSource(path, codecs.codes_offset("fp16", 64), 128)
    first = src.prefetch(raw, [(0, 10000)])
    assert first["read_bytes"] == 10000 * 128
    res, tot = src.resident(raw, [(0, 10000)])
    assert res == tot
    assert src.prefetch(raw, [(0, 10000)])["read_bytes"] == 0  # cached: a mincore check only


@pytest.mark.parametrize("codec", ["fp16", "sq8"])
def test_fit_from_sample_batches_equals_fit_from_the_concatenated_sample(codec):
    """The build fits the sq8 ranges on the batches' column extremes and the screen on every
    k-th row across batches (no concatenated copy): both must equal the concatenation's fit."""
    from compnn_index.index.codecs import SQ_TRAIN_ROWS, train_codec
    from compnn_index.index.fit import SampleRows
    from compnn_index.index.screen import fit_subsample

    rng = np.random.default_rng(3)
    parts = [rng.standard_normal((n, 24)).astype(np.float32) * rng.uniform(0.5, 3) for n in (7, 130, 1, 64, 99)]
    rows = 250  # cuts the last batch
    whole = np.concatenate(parts)[:rows]
    sample = SampleRows(parts, rows)
    assert len(sample) == rows
    assert np.array_equal(np.asarray(sample), whole)
    for k in (1, 2, 3, 7):
        assert np.array_equal(sample.every(k, 1000), whole[::k])
        assert np.array_equal(sample.every(k, 5), whole[::k][:5])
    assert np.array_equal(fit_subsample(whole), sample.every(max(1, rows // 65536), 65536))
    for first in (1, 100, rows):
        assert np.array_equal(train_codec(codec, sample.extremes(first)), train_codec(codec, whole[:first]))
    assert SQ_TRAIN_ROWS > rows and np.array_equal(train_codec(codec, sample.extremes(SQ_TRAIN_ROWS)),
                                                   train_codec(codec, whole))


def test_writers_request_writeback_of_each_span_and_write_the_same_bytes(tmp_path, monkeypatch):
    """The streaming writers ask the kernel to start writing each finished span (so a small
    store's write is not all left to its closing fsync); the spans tile the file in order and
    the file is byte-identical to faiss.write_index's."""
    import compnn_index.index.writeback as wb
    from compnn_index.index.flatfile import FlatIPWriter
    from compnn_index.index.npyfile import NpyWriter

    calls = []
    monkeypatch.setattr(wb, "SPAN_BYTES", 4096)
    monkeypatch.setattr(wb, "_sync_file_range", lambda fd, off, n, flags: calls.append((off, n, flags)) or 0)
    x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    with FlatIPWriter(tmp_path / "a.index", 16) as w:
        for i in range(0, 300, 37):
            w.add(x[i: i + 37])
    ref = faiss.IndexFlatIP(16)
    ref.add(x)
    faiss.write_index(ref, str(tmp_path / "b.index"))
    assert (tmp_path / "a.index").read_bytes() == (tmp_path / "b.index").read_bytes()
    assert len(calls) >= 4 and all(flags == 2 and n >= 4096 for _, n, flags in calls)
    assert [off for off, _, _ in calls] == [0] + list(np.cumsum([n for _, n, _ in calls])[:-1])
    calls.clear()
    w = NpyWriter(tmp_path / "c.npy", (300, 16), np.float32)
    for i in range(0, 300, 50):
        w.add(x[i: i + 50])
    w.close()
    assert np.array_equal(np.load(tmp_path / "c.npy"), x) and len(calls) >= 3
    assert [off for off, _, _ in calls] == [0] + list(np.cumsum([n for _, n, _ in calls])[:-1])
