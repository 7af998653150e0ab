"""Issue 12: the papers' remaining experiments — activation prediction, the learned-inversion
baseline, and the tables (on the session's tiny synthetic stores; small and fast)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compnn_index.api import CompNN
from compnn_index.errors import ModelError, QueryError
from compnn_index.features import LayerSpec, capture, forward_with, pair_geometry, target_index, window_vectors
from compnn_index.index import LayerVectors
from compnn_index.jobs import workflows
from compnn_index.metrics import ssim
from compnn_index.models import InversionNet, build_model, load_inversion
from compnn_index.search import best_of, exact_search, exact_search_per_image

from conftest import TINY_IMAGES, TINY_SIZE


@pytest.fixture(scope="module")
def pair_cnn(segment_index, tmp_path_factory):
    """The tiny segmentation model's store with decoder4 -> decoder3 pairs at k = 2 and 4."""
    out = tmp_path_factory.mktemp("pairs") / "index"
    workflows.build(model=segment_index.model, layers=["decoder2"], out=out, threads=1, progress=False,
                    pairs=["decoder4:decoder3:2", "decoder4:decoder3:4"],
                    data="synthetic", size=TINY_SIZE, limit=TINY_IMAGES, direction="AtoB")
    return CompNN.load(out, threads=1)


# ---------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("k, ratio", [(1, 2), (2, 2), (3, 2), (4, 2), (3, 1), (1, 1)])
def test_every_target_position_is_predicted_exactly_once(k, ratio):
    h = 5
    g = pair_geometry("s", "t", k, (7, h, h), (3, ratio * h, ratio * h))
    assert -ratio < g.offset <= 0
    jy, dy, jx, dx = target_index(g)
    counts = np.zeros(g.target_shape[1:], int)
    for j in range(g.grid[0]):
        for i in range(g.grid[1]):
            rows = [ratio * j + g.offset + d for d in range(ratio)]
            cols = [ratio * i + g.offset + d for d in range(ratio)]
            for r in rows:
                for c in cols:
                    if 0 <= r < counts.shape[0] and 0 <= c < counts.shape[1]:
                        counts[r, c] += 1
                        assert (jy[r], dy[r], jx[c], dx[c]) == (j, r - ratio * j - g.offset, i, c - ratio * i - g.offset)
    assert (counts == 1).all()
    # the window's centre lies in the middle of its block
    for j in range(g.grid[0]):
        centre = j - g.pad_lo + k / 2
        assert ratio * centre == pytest.approx(ratio * j + g.offset + ratio / 2)


def test_an_even_window_at_stride_one_is_refused():
    with pytest.raises(ModelError, match="no centred target block"):
        pair_geometry("s", "t", 2, (4, 6, 6), (4, 6, 6))


def test_two_by_two_windows_determine_the_transposed_convolution_block():
    """Each output of pix2pix's stride-2 4×4 transposed conv (padding 1) depends on 2×2 input
    cells: the k = 2 window j pastes exactly the outputs those cells determine."""
    torch.manual_seed(0)
    conv = torch.nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1, bias=False)
    g = pair_geometry("s", "t", 2, (3, 6, 6), (2, 12, 12))
    x = torch.randn(1, 3, 6, 6)
    y = conv(x)
    for j in range(g.grid[0]):
        cells = [c for c in (j - g.pad_lo, j - g.pad_lo + 1) if 0 <= c < 6]
        rows = [r for r in (2 * j + g.offset, 2 * j + g.offset + 1) if 0 <= r < 12]
        x2 = x.clone()
        others = [c for c in range(6) if c not in cells]
        x2[:, :, others, :] = torch.randn(1, 3, len(others), 6)  # change every other input row
        assert torch.allclose(conv(x2)[:, :, rows, :], y[:, :, rows, :], atol=1e-6)


def test_window_vectors_match_hyperpatches_inside_the_map():
    from compnn_index.features import hyperpatches

    act = np.random.default_rng(0).normal(size=(2, 4, 6, 6)).astype(np.float32)
    g = pair_geometry("s", "t", 2, (4, 6, 6), (4, 12, 12))
    w = window_vectors(act, g)
    assert w.shape == (2, 7, 7, 16)
    # window j covers cells j-1..j: interior windows equal the valid hyperpatch at j-1
    np.testing.assert_allclose(w[:, 1:-1, 1:-1], hyperpatches(act, 2), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(w, axis=-1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------- activation prediction
@pytest.mark.parametrize("k", [2, 4])
def test_prediction_with_the_query_in_the_database_is_exact(pair_cnn, k):
    i = 5
    res = pair_cnn.predict_activations(i, source_layer="decoder4", target_layer="decoder3", k=k,
                                       top_k=TINY_IMAGES)
    assert res.geometry.k == k
    assert res.true.shape == res.compnn.shape == tuple(res.geometry.target_shape)
    exact = np.all(res.compnn == res.true, axis=0).mean()
    assert exact >= 0.99 and res.scores["compnn"]["exact"] == pytest.approx(exact)
    assert res.scores["compnn"]["cosine"] >= 0.99
    # the stored targets are the network's own decoder3 activations
    taps = pair_cnn.model.layer_taps()
    _, acts = capture(pair_cnn.model, pair_cnn.resolve_image(i)[None], [LayerSpec("decoder3", *taps["decoder3"])])
    np.testing.assert_array_equal(np.asarray(pair_cnn.array("act_decoder3")[i]), acts["decoder3"][0].numpy())


def test_leave_one_out_prediction_scores_and_outputs(pair_cnn):
    res = pair_cnn.predict_activations(3, k=2, top_k=TINY_IMAGES - 1, exclude=[3])
    assert 3 not in res.shortlist and res.global_image == res.shortlist[0]
    np.testing.assert_array_equal(res.global_nn, pair_cnn.array("act_decoder3")[res.global_image])
    for who in ("compnn", "global"):
        s = res.scores[who]
        assert -1 <= s["cosine"] <= 1 and s["relative_l2"] >= 0 and s["exact"] < 1
        a = res.output_agreement[who]
        assert 0 <= a["pixel_accuracy"] <= 1 and 0 <= a["mean_iou"] <= 1
    assert "compnn_decoder" in res.scores  # the decoder's own half of the U-Net tap
    assert res.outputs["compnn"].shape == res.outputs["cnn"].shape == (TINY_SIZE, TINY_SIZE)
    assert json.dumps(res.to_json())


def test_a_missing_pair_is_named(pair_cnn, segment_cnn):
    with pytest.raises(QueryError, match="no activation pair decoder3->decoder2"):
        pair_cnn.predict_activations(0, source_layer="decoder3", target_layer="decoder2")
    with pytest.raises(QueryError, match=r"stored: none\); build it with --predict decoder4:decoder3:4"):
        segment_cnn.predict_activations(0)


@pytest.mark.parametrize("arch, tap", [("unet", "decoder3"), ("unet", "encoder2"), ("segnet", "decoder2"),
                                       ("segnet", "encoder3")])
def test_forward_from_a_tap_with_true_activations_reproduces_the_output(arch, tap):
    model = build_model(arch, task="segment", out_channels=5, ngf=4, size=64).eval()
    x = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32))
    spec = LayerSpec(tap, *model.layer_taps()[tap])
    out, acts = capture(model, x, [spec])
    again = forward_with(model, x, spec, acts[tap])
    assert torch.equal(again, out)
    changed = forward_with(model, x, spec, torch.zeros_like(acts[tap]))
    assert not torch.equal(changed, out)


# ---------------------------------------------------------------------------- learned inversion
@pytest.mark.parametrize("arch", ["unet", "segnet"])
def test_inversion_network_shapes_for_every_tap(arch):
    size = 64
    model = build_model(arch, task="segment", out_channels=4, ngf=4, size=size).eval()
    specs = [LayerSpec(n, *t) for n, t in model.layer_taps().items()]
    _, acts = capture(model, torch.zeros(1, 3, size, size), specs)
    for name, a in acts.items():
        for out_channels, output in ((3, "image"), (12, "labels")):
            net = InversionNet(in_channels=a.shape[1], stride=size // a.shape[2], out_channels=out_channels,
                               output=output, width=8, layer=name)
            y = net(a)
            assert y.shape == (1, out_channels, size, size), name
            if output == "image":
                assert y.abs().max() <= 1


def test_short_inversion_training_lowers_the_loss_and_round_trips(segment_index, segment_cnn, tmp_path):
    from compnn_index.jobs.inversion import apply_inversion, invert, train_inversion

    ckpt = tmp_path / "inv.pt"
    rec = train_inversion(segment_index.index, "decoder4", out=ckpt, epochs=4, batch_size=4, lr=2e-3,
                          width=16, progress=False, cnn=segment_cnn)
    assert rec["kind"] == "photo" and rec["images"] == TINY_IMAGES and len(rec["losses"]) == 4
    assert rec["losses"][-1] < rec["losses"][0]
    net = load_inversion(ckpt)
    assert net.checkpoint_extra["layer"] == "decoder4" and net.config["stride"] == 8
    img = segment_cnn.resolve_image(0)
    assert invert(segment_cnn, net, img).shape == img.shape
    written = apply_inversion(ckpt, ["0"], out=tmp_path / "apply", progress=False)
    assert written[0].is_file()


def test_ssim():
    x = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32))
    assert ssim(x, x) == pytest.approx(1.0)
    noisy = x + np.random.default_rng(1).normal(0, 0.3, x.shape)
    assert ssim(x, noisy) < ssim(x, x + 0.05 * (noisy - x)) < 1


# ---------------------------------------------------------------------------- tables
def test_per_image_search_derives_every_top_k():
    rng = np.random.default_rng(0)
    db = rng.normal(size=(5 * 12, 8)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    lv = LayerVectors.from_array(db, grids=np.tile((3, 4), (5, 1)))
    q = db[rng.permutation(60)[:6]].reshape(2, 3, 8) + 0.1 * rng.normal(size=(2, 3, 8)).astype(np.float32)
    order = np.array([3, 0, 4, 1, 2])
    sims, ids = exact_search_per_image(q, lv, order)
    assert sims.shape == ids.shape == (5, 2, 3)
    for k in (1, 2, 5):
        a, b = best_of(lv, sims, ids, k), exact_search(q, lv, order[:k])
        for f in ("image", "y", "x"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        np.testing.assert_allclose(a.similarity, b.similarity, atol=1e-6)


def test_table2_mpa_is_one_for_the_query_own_input_and_inversion_rows(translate_index, translate_cnn, tmp_path):
    from compnn_index.jobs.evaluate import evaluate
    from compnn_index.jobs.inversion import train_inversion

    ckpt = tmp_path / "inv.pt"
    train_inversion(translate_index.index, "decoder3", out=ckpt, epochs=1, width=8, progress=False,
                    cnn=translate_cnn)
    doc = evaluate(translate_index.index, data="synthetic", split="train", size=TINY_SIZE, limit=2,
                   top_k=(1, 4), hpm=False, global_layers=False, out=tmp_path / "eval", progress=False,
                   cnn=translate_cnn, inversion=[ckpt], inversion_top_k=4, threads=1)
    rows = [r for r in doc["rows"] if r["vs"] == "input_labels"]
    assert {r["top_k"] for r in rows} == {1, 4}
    for r in rows:  # training images: each query's own input is in the database
        assert r["mpa"] == 1.0 and r["pixel_accuracy"] == 1.0
        assert r["paper_mpa"] is None  # a synthetic store: Facades' Table 2 figures do not apply
    (inv,) = doc["inversion"]
    assert inv["layer"] == "decoder3" and inv["kind"] == "labels"
    assert inv["compnn_ir"]["mpa"] == 1.0 and 0 <= inv["learned"]["mpa"] <= 1
    assert inv["n_images"] == 2 and inv["compnn_ir"]["ci95"]["mpa"] == [1.0, 1.0]  # every image reconstructed exactly
    lo, hi = inv["learned"]["ci95"]["mpa"]
    assert 0 <= lo <= hi <= 1
    d = inv["difference"]["mpa"]  # paired on the same images: CompNN IR (1.0 each) minus learned
    assert d["value"] == 1.0 - inv["learned"]["mpa"] and d["n_images"] == 2 and d["supports"] is None
    assert (tmp_path / "eval" / "inversion.png").is_file()
    assert "learned inversion" in (tmp_path / "eval" / "results.md").read_text()


def test_table1_rows_deltas_and_per_class(segment_index, segment_cnn, tmp_path):
    from compnn_index.jobs.evaluate import evaluate
    from compnn_index.jobs.tables import table1

    doc = evaluate(segment_index.index, data="synthetic", limit=1, top_k=(1, 2), out=tmp_path / "e",
                   progress=False, cnn=segment_cnn, threads=1, examples=0)
    rows = doc["rows"]
    methods = {r["method"] for r in rows}
    assert methods == {"cnn", "compnn", "compnn_hpm", "global_bottleneck", "global_last",
                       "global_penultimate", "global_layer"}
    assert doc["penultimate_layer"] == "decoder2" and len(doc["class_names"]) == segment_cnn.num_classes
    cnn_row = next(r for r in rows if r["method"] == "cnn")
    assert cnn_row["paper_pixel_accuracy"] is None  # synthetic facades are not the papers' Facades
    assert doc["papers_dataset"] is None and all(c["supports"] is None for c in doc["claims"])
    for r in rows:
        assert len(r["iou_per_class"]) == segment_cnn.num_classes
        if r["vs"] == "ground_truth" and r["method"] != "cnn":
            assert r["delta_pixel_accuracy"] == pytest.approx(r["pixel_accuracy"] - cnn_row["pixel_accuracy"])
    t1 = table1(rows)
    assert {"method", "top_k", "source", "vs", "pixel_accuracy", "mean_iou", "paper_pixel_accuracy",
            "paper_mean_iou", "n_images", "ci95"} <= set(t1[0])


# ---------------------------------------------------------------------------- command line
def test_cli_build_predict_and_invert(segment_index, tmp_path, capsys):
    from compnn_index.cli import main

    index = tmp_path / "index"
    assert main(["build", "--model", str(segment_index.model), "--data", "synthetic", "--size", str(TINY_SIZE),
                 "--limit", "4", "--layers", "decoder3", "--predict", "decoder4:decoder3:2",
                 "--threads", "1", "--out", str(index)]) == 0
    man = json.loads((index / "manifest.json").read_text())
    assert list(man["predictions"]) == ["decoder4>decoder3@k2"]
    assert man["format_version"] == 2 and "pair_decoder4_decoder3_k2" in man["arrays"]
    assert main(["predict", str(index), "1", "--top-k", "3", "--exclude-self", "--threads", "1",
                 "--out", str(tmp_path / "pred")]) == 0
    doc = json.loads((tmp_path / "pred" / "id1" / "prediction.json").read_text())
    assert 1 not in doc["shortlist"] and set(doc["scores"]) >= {"compnn", "global"}
    assert (tmp_path / "pred" / "id1" / "figure3.png").is_file()
    ckpt = tmp_path / "inv.pt"
    assert main(["invert", "train", "--store", str(index), "--layer", "encoder3", "--epochs", "1",
                 "--width", "8", "--threads", "1", "--out", str(ckpt)]) == 0
    assert main(["invert", "apply", str(ckpt), "0", "--out", str(tmp_path / "inv")]) == 0
    assert (tmp_path / "inv" / "id0_inversion_encoder3.png").is_file()
    assert main(["predict", str(index), "1", "--k", "4", "--out", str(tmp_path / "p2")]) == 2
    assert "no activation pair decoder4->decoder3 with k = 4" in capsys.readouterr().err
