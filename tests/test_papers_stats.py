"""Issue 21: paper columns only for the papers' Facades, per-image records that a stopped
evaluation reuses, bootstrap intervals and paired tests of the papers' claims (tiny stores)."""
from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
from PIL import Image

from compnn_index.data import FACADES_PALETTE, open_dataset
from compnn_index.errors import QueryError
from compnn_index.jobs import workflows
from compnn_index.jobs.evaluate import evaluate
from compnn_index.jobs.papers import ECCVW_CNN, ICLR_TABLE1, PaperContext, claims, paper_figures, papers_dataset
from compnn_index.jobs.stats import MIN_IMAGES, boot_cm, cm_metric, paired_difference, resample_weights
from compnn_index.metrics import confusion_matrix, mean_iou, mean_pixel_accuracy, pixel_accuracy

from conftest import TINY_SIZE

evaluate_module = importlib.import_module("compnn_index.jobs.evaluate")
PAPER_COLUMNS = ("paper_pixel_accuracy", "paper_mean_iou", "paper_delta_pixel_accuracy", "paper_delta_mean_iou")


@pytest.fixture(scope="module")
def facades_folder(tmp_path_factory):
    """A pix2pix-layout folder named ``facades``: synthetic pictures beside their labels drawn in the
    Facades palette (4 train, 3 test images)."""
    root = tmp_path_factory.mktemp("papers") / "facades"
    gen = open_dataset("synthetic", split="train", direction="AtoB", task="segment", size=TINY_SIZE, limit=7)
    for split, ids in (("train", range(4)), ("test", range(4, 7))):
        (root / split).mkdir(parents=True)
        for n, i in enumerate(ids):
            photo, labels = gen.generate(i)
            ab = np.concatenate([photo, FACADES_PALETTE[labels]], axis=1).astype(np.uint8)
            Image.fromarray(ab).save(root / split / f"{n + 1}.png")
    return root


@pytest.fixture(scope="module")
def facades_store(facades_folder, segment_index, tmp_path_factory):
    """A decoder2 store of the tiny segmentation model over the Facades-named folder's train split."""
    root = facades_folder
    store = tmp_path_factory.mktemp("papers") / "store"
    workflows.build(model=segment_index.model, data=str(root), layers=["decoder2"], out=store, threads=1,
                    progress=False)
    return root, store


# ---------------------------------------------------------------------------- which dataset
def test_only_a_pix2pix_folder_named_facades_is_the_papers_dataset():
    assert papers_dataset({"kind": "pix2pix", "path": "/data/Facades"}) == "facades"
    assert papers_dataset({"kind": "pix2pix", "path": "/data/cityscapes"}) is None
    assert papers_dataset({"kind": "synthetic", "path": None}) is None
    assert papers_dataset({"kind": "annotated", "path": "/x/facades"}) is None
    assert papers_dataset(None) is None


def test_paper_figures_follow_task_direction_and_layer():
    on = PaperContext("facades", "segment", "AtoB", "decoder2")
    cnn = {"method": "cnn", "top_k": None, "source": None, "vs": "ground_truth"}
    assert paper_figures(cnn, on)["paper_pixel_accuracy"] == ICLR_TABLE1[("cnn", None)][0]
    assert paper_figures(cnn, on)["paper_eccvw_pixel_accuracy"] == ECCVW_CNN[0]
    hpm16 = {"method": "compnn_hpm", "top_k": 16, "source": "original", "vs": "ground_truth"}
    assert paper_figures(hpm16, on)["paper_delta_pixel_accuracy"] == 0.0324
    assert paper_figures(dict(hpm16, vs="cnn"), on) == dict.fromkeys(PAPER_COLUMNS)  # agreement rows: none
    for off in (PaperContext(None, "segment", "AtoB", "decoder2"), PaperContext("facades", "segment", "AtoB", "decoder3"),
                PaperContext("facades", "segment", "BtoA", "decoder2")):
        assert all(v is None for v in paper_figures(cnn, off).values())
    t2 = {"method": "compnn", "top_k": 16, "source": "input", "vs": "input_labels"}
    assert paper_figures(t2, PaperContext("facades", "translate", "BtoA", "decoder2"))["paper_mpa"] == 0.837
    assert paper_figures(t2, PaperContext(None, "translate", "BtoA", "decoder2"))["paper_mpa"] is None


def test_a_facades_store_gets_paper_columns_and_a_synthetic_one_none(facades_store, segment_index, tmp_path):
    root, store = facades_store
    doc = evaluate(store, data=str(root), top_k=(1, 2), out=tmp_path / "f", progress=False, threads=1,
                   examples=0, n_boot=200)
    assert doc["papers_dataset"] == "facades"
    rows = {(r["method"], r["top_k"], r["source"], r["vs"]): r for r in doc["rows"]}
    assert rows[("cnn", None, None, "ground_truth")]["paper_pixel_accuracy"] == 0.545
    assert rows[("compnn", 1, "original", "ground_truth")]["paper_delta_pixel_accuracy"] == -0.0102
    assert rows[("compnn", 2, "self_supervised", "ground_truth")]["paper_mean_iou"] == 0.137
    assert rows[("global_layer", None, "self_supervised", "ground_truth")]["paper_pixel_accuracy"] == 0.387
    assert rows[("global_penultimate", None, "original", "ground_truth")]["paper_delta_mean_iou"] == -0.1126
    assert rows[("global_last", None, "original", "ground_truth")]["paper_pixel_accuracy"] is None  # no such paper row
    # three test images: every claim is tested, none judged on so few
    assert doc["claims"] and {c["supports"] for c in doc["claims"]} == {"cannot tell"}
    assert "| 0.5450 |" in (tmp_path / "f" / "results.md").read_text()

    synth = evaluate(segment_index.index, data="synthetic", size=TINY_SIZE, limit=2, top_k=(1, 2), out=tmp_path / "s",
                     progress=False, threads=1, examples=0, n_boot=200)
    assert synth["papers_dataset"] is None
    assert all(r[c] is None for r in synth["rows"] for c in PAPER_COLUMNS)
    assert all(c["paper"] is None and c["supports"] is None for c in synth["claims"])


def test_a_facades_labels_to_photo_store_gets_table2_paper_mpa(facades_folder, translate_index, tmp_path):
    store = tmp_path / "l2p"
    workflows.build(model=translate_index.model, data=str(facades_folder), layers=["decoder2"], out=store,
                    threads=1, progress=False)  # the model's direction, BtoA: label map -> photo
    doc = evaluate(store, data=str(facades_folder), top_k=(1, 2), hpm=False, global_layers=False,
                   out=tmp_path / "e", progress=False, threads=1, examples=0, n_boot=100)
    rows = {r["top_k"]: r for r in doc["rows"] if r["vs"] == "input_labels"}
    assert doc["papers_dataset"] == "facades" and rows[1]["paper_mpa"] == 0.723 and rows[2]["paper_mpa"] is None
    assert rows[1]["n_images"] == 3 and set(rows[1]["ci95"]) == {"pixel_accuracy", "mpa"}


# ---------------------------------------------------------------------------- per-image cache
def test_a_stopped_evaluation_reuses_its_finished_images(segment_index, segment_cnn, tmp_path, monkeypatch):
    """Two images, then four: only the two new images are searched, and the tables equal an
    uncached four-image run's (the same intervals too: the resampling is seeded)."""
    computed = []
    real = evaluate_module._ImageJob.run

    def counting(self, s, **kw):
        computed.append(s.name)
        return real(self, s, **kw)

    monkeypatch.setattr(evaluate_module._ImageJob, "run", counting)
    common = dict(data="synthetic", size=TINY_SIZE, top_k=(1, 2), progress=False, cnn=segment_cnn, threads=1,
                  examples=1, n_boot=300)
    cache = tmp_path / "cache"
    evaluate(segment_index.index, limit=2, cache=cache, out=tmp_path / "a", **common)
    first = {p.name: p.read_bytes() for p in cache.glob("*.json")}
    assert len(computed) == 2 and len(first) == 2
    doc = evaluate(segment_index.index, limit=4, cache=cache, out=tmp_path / "b", **common)
    assert len(computed) == 4 and computed[2:] == ["test_00002", "test_00003"]
    assert doc["cache"]["reused"] == 2 and doc["cache"]["computed"] == 2
    assert all((cache / name).read_bytes() == body for name, body in first.items())
    assert not list(cache.glob(".*tmp*"))
    fresh = evaluate(segment_index.index, limit=4, out=tmp_path / "c", **common)
    assert json.dumps(doc["rows"]) == json.dumps(fresh["rows"])
    assert json.dumps(doc["claims"]) == json.dumps(fresh["claims"])
    assert (tmp_path / "b" / "examples.png").is_file()

    # another setting (top-k) is another fingerprint: nothing is reused
    again = evaluate(segment_index.index, limit=2, cache=cache, out=tmp_path / "d", **dict(common, top_k=(1,)))
    assert again["cache"]["reused"] == 0 and len(computed) == 4 + 4 + 2


def test_exact_method_is_checked_and_every_method_gives_the_same_rows(segment_index, segment_cnn, tmp_path):
    with pytest.raises(QueryError, match=r"Expected --exact-method to be one of .*auto.*, but --exact-method = 'bogus'"):
        evaluate(segment_index.index, data="synthetic", size=TINY_SIZE, limit=1, out=tmp_path / "x",
                 exact_method="bogus", progress=False, cnn=segment_cnn)
    common = dict(data="synthetic", size=TINY_SIZE, limit=1, top_k=(1, 3), hpm=False, progress=False,
                  cnn=segment_cnn, threads=1, examples=0, n_boot=50, global_layers=False)
    docs = {m: evaluate(segment_index.index, out=tmp_path / m, exact_method=m, **common)
            for m in ("faiss", "fused", "auto")}
    assert docs["faiss"]["exact_pass"] == "per_image" and docs["faiss"]["exact_method"] == "faiss"
    assert docs["fused"]["exact_pass"] == "per_top_k" and docs["fused"]["exact_method"] == "fused"
    assert docs["auto"]["exact_method"] == "bounded"  # the tiny store has a screen
    pick = lambda d: [(r["method"], r["top_k"], r["source"], r["vs"], round(r["pixel_accuracy"], 4))  # noqa: E731
                      for r in d["rows"]]
    assert pick(docs["faiss"]) == pick(docs["fused"]) == pick(docs["auto"])  # one exact field, whichever kernel


# ---------------------------------------------------------------------------- statistics
def test_cm_metric_matches_the_metrics_module():
    rng = np.random.default_rng(0)
    for _ in range(5):
        cm = confusion_matrix(rng.integers(0, 4, 500), rng.integers(0, 4, 500), 5)
        cm[4] = 0  # a class absent from the target
        assert cm_metric(cm, "pixel_accuracy", 5) == pytest.approx(pixel_accuracy(cm))
        assert cm_metric(cm, "mean_iou", 5) == pytest.approx(mean_iou(cm))
        assert cm_metric(cm, "mpa", 5) == pytest.approx(mean_pixel_accuracy(cm))
    with_void = np.zeros((4, 4), np.int64)
    with_void[0, 0], with_void[1, 3] = 5, 5  # class 1 always predicted as the void column
    assert cm_metric(with_void, "mean_iou", 3) == pytest.approx(0.5)


def test_bootstrap_interval_covers_and_narrows():
    rng = np.random.default_rng(1)
    cms = []
    for _ in range(60):  # per image: accuracy ~0.7, varying
        right = rng.integers(50, 90)
        cms.append([[right, 100 - right], [0, 0]])
    cms = np.asarray(cms)
    pooled = cm_metric(cms.sum(0), "pixel_accuracy", 2)
    boot = boot_cm(cms, "pixel_accuracy", 2, resample_weights(60, n_boot=500))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    acc = cms[:, 0, 0] / 100  # equal pixels per image: the pooled accuracy is their mean
    expected = 2 * 1.96 * acc.std(ddof=1) / np.sqrt(len(acc))  # the normal approximation's width
    assert lo < pooled < hi and hi - lo == pytest.approx(expected, rel=0.2)
    few = boot_cm(cms[:6], "pixel_accuracy", 2, resample_weights(6, n_boot=500))
    assert np.ptp(few) > hi - lo  # fewer images, wider spread


def test_paired_verdicts():
    rng = np.random.default_rng(2)
    base = rng.normal(0.5, 0.1, 400)
    better = base + 0.03 + rng.normal(0, 0.005, 400)
    assert paired_difference(better, base, n_images=50, paper=0.0324)["supports"] == "supports"
    assert paired_difference(better, base, n_images=50, paper=-0.04)["supports"] == "contradicts"
    assert paired_difference(base + rng.normal(0, 0.01, 400), base, n_images=50, paper=0.03)["supports"] == "cannot tell"
    assert paired_difference(better, base, n_images=MIN_IMAGES - 1, paper=0.03)["supports"] == "cannot tell"
    res = paired_difference(better, base, n_images=50, paper=0.0324)
    assert res["paper_in_ci95"] and res["p_value"] < 0.01


def test_claims_cover_every_paper_difference_for_the_run_top_k():
    ids = {c.id for c in claims([1, 16, 32, 64])}
    assert "eccvw_compnn_top16_vs_cnn_PA" in ids and "eccvw_compnn_top64_vs_cnn_mIoU" in ids
    assert "iclr_compnn_SS_vs_global_layer_PA" in ids and "eccvw_compnn_top16_vs_global_penultimate_mIoU" in ids
    assert len(ids) == 2 * (6 + 4 + 2)
    small = claims([1, 2])  # ICLR's rows at the largest top-k when 16 was not run
    assert all(c.a[1] in (1, 2) for c in small) and not any("top16" in c.id for c in small)


def test_the_api_shortlist_of_top_k_is_the_first_k_of_a_larger_one(segment_cnn):
    """What lets one top-64 pass serve top-1/16/32: the API ranks candidates by a stable sort of
    global cosine, so a smaller shortlist is a prefix of a larger one (ties included)."""
    ids = np.arange(segment_cnn.num_images, dtype=np.int64)
    for i in range(3):
        feats = segment_cnn.extract(i, ["decoder2"])
        full, _ = segment_cnn.shortlist(feats.global_descriptor, ids, len(ids))
        for k in (1, 3, 7):
            small, _ = segment_cnn.shortlist(feats.global_descriptor, ids, k)
            assert list(small) == list(full[:k])
            explained = segment_cnn.explain(feats, layer="decoder2", search="exact", top_k=k, sources=())
            assert list(explained.shortlist) == list(full[:k])
