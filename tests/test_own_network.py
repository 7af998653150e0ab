"""Explaining the user's own network: pix2pix reference checkpoints, any module by factory, any
dataset (issue 14)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pix2pix_reference import ReferenceUnet, randomise  # noqa: E402

from compnn_index.errors import ModelError  # noqa: E402
from compnn_index.models import build_model, load_checkpoint, model_hash, save_checkpoint  # noqa: E402
from compnn_index.models import pix2pix_import  # noqa: E402
from compnn_index.models.pix2pix_import import import_pix2pix, pix2pix_key_map  # noqa: E402


# ------------------------------------------------------------------ pix2pix reference checkpoints

@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("num_downs, size", [(8, 256), (7, 128)])
def test_pix2pix_state_dict_round_trip_gives_the_reference_output(tmp_path, norm, num_downs, size):
    ref = randomise(ReferenceUnet(num_downs=num_downs, ngf=8, norm=norm), seed=num_downs).eval()
    weights = tmp_path / "latest_net_G.pth"
    torch.save(ref.state_dict(), weights)
    model = import_pix2pix(weights, size=size, norm=norm)
    assert (model.depth, model.norm, model.config["ngf"]) == (num_downs, norm, 8)
    assert model.config.get("norm", "batch") == norm
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = ref(x), model(x)
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())
    # The checkpoint records the norm; loading it gives the same network (and hash).
    ckpt = save_checkpoint(tmp_path / "m.pt", model)
    again = load_checkpoint(ckpt)
    assert model_hash(again) == model_hash(model)
    with torch.no_grad():
        assert torch.allclose(again(x), want, atol=1e-5)


def test_pix2pix_norm_is_read_from_the_weights():
    for norm in ("batch", "instance"):
        ref = ReferenceUnet(num_downs=7, ngf=4, norm=norm)
        assert import_pix2pix(ref.state_dict(), size=128).norm == norm


def test_equal_shapes_do_not_catch_the_skip_order_only_the_output_does(monkeypatch):
    """Without swapping the up-convolutions' input halves every shape fits, the output is wrong."""
    ref = randomise(ReferenceUnet(num_downs=7, ngf=8), seed=3).eval()
    monkeypatch.setattr(pix2pix_import, "swap_halves", lambda w: w)
    model = import_pix2pix(ref.state_dict(), size=128)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max() > 1e-2


def test_the_key_map_is_explicit_and_swaps_every_non_innermost_up_convolution():
    keys = pix2pix_key_map(8, norm="batch")
    mapping = {ref: ours for ref, ours, _ in keys}
    assert mapping["model.model.0.weight"] == "encoder1.weight"
    assert mapping["model.model.1.model.1.weight"] == "encoder2.1.weight"
    assert mapping["model.model.1.model.2.running_var"] == "encoder2.2.running_var"
    assert mapping["model.model.1.model.5.weight"] == "decoder2.1.weight"
    assert mapping["model.model.3.bias"] == "decoder1.1.bias"
    innermost = "model.model.1.model." + "3.model." * 6
    assert mapping[innermost + "1.weight"] == "encoder8.1.weight"
    assert mapping[innermost + "3.weight"] == "decoder8.1.weight"
    swapped = sorted(ours for _, ours, swap in keys if swap)
    assert swapped == sorted(f"decoder{n}.1.weight" for n in range(1, 8))
    assert "model.model.0.bias" in {r for r, _, _ in pix2pix_key_map(8, norm="instance")}
    # Every key of the built-in U-Net is filled, and nothing else.
    for norm in ("batch", "instance"):
        unet = build_model("unet", task="translate", size=256, ngf=4, norm=norm)
        assert sorted(o for _, o, _ in pix2pix_key_map(8, norm=norm)) == sorted(unet.state_dict())


def test_a_mismatching_key_is_refused_with_both_shapes(tmp_path):
    state = ReferenceUnet(num_downs=8, ngf=8).state_dict()
    key = "model.model.1.model.5.weight"
    state[key] = torch.zeros(3, 3, 4, 4)
    with pytest.raises(ModelError, match=r"model\.model\.1\.model\.5\.weight.*\(3, 3, 4, 4\).*\(32, 8, 4, 4\)"):
        import_pix2pix(state, size=256)
    state = ReferenceUnet(num_downs=8, ngf=8).state_dict()
    with pytest.raises(ModelError, match=r"model\.model\.0\.bias.*missing"):
        import_pix2pix(state, size=256, norm="instance")
    state["model.model.9.weight"] = torch.zeros(2)
    with pytest.raises(ModelError, match=r"unexpected key 'model\.model\.9\.weight' \(shape \(2,\)\)"):
        import_pix2pix(state, size=256)
    with pytest.raises(ModelError, match="not a pix2pix U-Net generator"):
        import_pix2pix({"model.1.weight": torch.zeros(1)}, size=256)
    with pytest.raises(ModelError, match="unet_256.*multiple of 256, but size = 128"):
        import_pix2pix(ReferenceUnet(num_downs=8, ngf=4).state_dict(), size=128)


def test_import_pix2pix_on_the_command_line(tmp_path, capsys):
    from compnn_index import cli

    ref = randomise(ReferenceUnet(num_downs=7, ngf=4, norm="instance"), seed=5).eval()
    state = ref.state_dict()
    # Old instance-norm checkpoints carry running statistics; the reference deletes them on load.
    state["model.model.1.model.2.running_mean"] = torch.zeros(8)
    torch.save(state, tmp_path / "latest_net_G.pth")
    assert cli.main(["import-pix2pix", str(tmp_path / "latest_net_G.pth"), "--size", "128",
                     "--out", str(tmp_path / "m.pt")]) == 0
    assert "unet_128, ngf 4, instance norm, 3→3 channels" in capsys.readouterr().out
    model = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-5)
    assert cli.main(["import-pix2pix", str(tmp_path / "latest_net_G.pth"), "--norm", "batch",
                     "--size", "128", "--out", str(tmp_path / "b.pt")]) == 2
    assert "key 'model.model.1.model.2.weight' (shape (8,)) is missing" in capsys.readouterr().err


def test_old_checkpoints_without_norm_are_batch_norm_and_keep_their_hash():
    unet = build_model("unet", task="translate", size=128, ngf=4)
    assert "norm" not in unet.config and unet.norm == "batch"
    inst = build_model("unet", task="translate", size=128, ngf=4, norm="instance")
    assert inst.config["norm"] == "instance"
    assert inst.encoder1.bias is not None and unet.encoder1.bias is None
    with pytest.raises(ModelError, match="norm"):
        build_model("segnet", task="segment", out_channels=3, norm="instance")


# ------------------------------------------------------------------ any module, by factory


from PIL import Image  # noqa: E402

import own_network_fixtures as fx  # noqa: E402
from compnn_index import cli  # noqa: E402
from compnn_index.api import CompNN  # noqa: E402
from compnn_index.data import open_dataset, select_indices  # noqa: E402
from compnn_index.data.query_image import fit_image  # noqa: E402
from compnn_index.errors import DataError, QueryError  # noqa: E402
from compnn_index.features import LayerSpec, infer_layer_specs  # noqa: E402
from compnn_index.index import IndexStore, build_index  # noqa: E402
from compnn_index.jobs import workflows  # noqa: E402

SIZE = 32
N_IMAGES = 6


def _identity_fraction(cnn: CompNN, layer: str) -> float:
    """Fraction of query positions of training images matched in their own image, as well as
    by their own position (flat regions tie with other positions of the same image)."""
    hits = []
    for i in range(cnn.num_images):
        f = cnn.explain(i, layer=layer, top_k=cnn.num_images, sources=("target",)).field
        hits.append(((f.image == i) & (f.similarity >= 0.999)).mean())
    return float(np.mean(hits))


@pytest.fixture(scope="module")
def factory_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("factory")
    weights = root / "weights.pth"
    torch.save(fx.make_net(width=8, seed=1).state_dict(), weights)
    store = workflows.build(
        model_factory="own_network_fixtures:make_net", factory_args={"width": 8}, weights=weights,
        task="translate", data="synthetic", size=SIZE, limit=N_IMAGES, direction="BtoA",
        layers=["enc=enc", "dec=dec:output"], out=root / "store", threads=1, progress=False)
    return root, store


def test_a_factory_tap_of_stride_4_gets_stride_4_and_explains_itself(factory_store):
    root, store = factory_store
    man = IndexStore.open(store).manifest
    enc = man["layers"]["enc"]["spec"]
    assert (enc["stride"], enc["k"], enc["region"], enc["module"], enc["io"]) == (4, 2, 8, "enc", "output")
    assert man["layers"]["enc"]["grid"] == [7, 7]
    assert man["global"]["layer"] == "enc"  # smallest map among the indexed taps (ties: first)
    # The checkpoint the store names records the factory and its arguments: nothing to repeat.
    assert man["model"]["checkpoint"] == str((store / "model.pt").resolve())
    net = load_checkpoint(store / "model.pt")
    assert net.config["factory"] == "own_network_fixtures:make_net"
    assert net.config["factory_args"] == {"width": 8}
    want = fx.make_net(width=8, seed=1).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(net(x), want(x))
    cnn = CompNN.load(store, threads=1)
    assert _identity_fraction(cnn, "enc") >= 0.99
    assert _identity_fraction(cnn, "dec") >= 0.99


def test_the_command_line_builds_a_factory_store_with_a_global_module(tmp_path, capsys):
    weights = tmp_path / "w.pth"
    torch.save(fx.make_net(width=4).state_dict(), weights)
    rc = cli.main(["build", "--model-factory", "own_network_fixtures:make_net",
                   "--factory-args", '{"width": 4}', "--weights", str(weights), "--task", "translate",
                   "--data", "synthetic", "--size", "32", "--limit", "3", "--direction", "BtoA",
                   "--layers", "enc=enc", "--global-layer", "mid", "--threads", "1",
                   "--out", str(tmp_path / "s")])
    assert rc == 0, capsys.readouterr().err
    man = IndexStore.open(tmp_path / "s").manifest
    assert man["global"]["layer"] == "mid" and man["global"]["dim"] == 8 * 4 * 4
    # The query needs no factory options; a 64×48 file is resized (or cropped) to 32×32.
    Image.new("RGB", (48, 64), (90, 20, 200)).save(tmp_path / "big.png")
    assert cli.main(["query", str(tmp_path / "s"), str(tmp_path / "big.png"), "--top-k", "2",
                     "--resize", "--threads", "1", "--out", str(tmp_path / "q")]) == 0
    assert (tmp_path / "q" / "result.json").is_file()
    assert cli.main(["query", str(tmp_path / "s"), str(tmp_path / "big.png"), "--top-k", "2",
                     "--threads", "1", "--out", str(tmp_path / "q2")]) == 2
    err = capsys.readouterr().err
    assert "expected a 32×32 image (height×width, the index's image size), got 64×48" in err
    assert "--resize or --crop" in err
    assert cli.main(["build", "--model-factory", "own_network_fixtures:make_net", "--task", "translate",
                     "--data", "synthetic", "--size", "32", "--limit", "2", "--layers", "odd=enc.1:input",
                     "--weights", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "t")]) == 2
    assert "weights file" in capsys.readouterr().err


def test_a_non_integer_stride_is_refused_naming_the_tap_and_both_shapes():
    with pytest.raises(ModelError, match=r"layer 'odd' \(output of module 'odd'\): the 32×32 \(H×W\) input "
                                         r"gives a 10×10 map \(tap shape 4×10×10\), a stride of 3\.2×3\.2"):
        infer_layer_specs(fx.make_odd_net(), [LayerSpec("odd", "odd")], SIZE)
    net = fx.make_net(width=4)
    with pytest.raises(ModelError, match=r"layer 'enc'.*stride = 2 was given, but .* gives a 8×8 map, a stride of 4"):
        infer_layer_specs(net, [LayerSpec("enc", "enc", stride=2)], SIZE)
    assert infer_layer_specs(net, [LayerSpec("mid", "mid", k=1)], (64, 32))["mid"].stride == 8


def test_python_api_layer_specs_without_stride_are_inferred(tmp_path):
    """build_index with a bare module: LayerSpecs without stride, a module path as global layer."""
    net = fx.make_net(width=4)
    ds = open_dataset("synthetic", size=SIZE, limit=2, direction="BtoA")
    store = build_index(net, ds, layers=[LayerSpec("enc", "enc")], global_layer="mid",
                        out=tmp_path / "s", progress=False)
    man = IndexStore.open(store).manifest
    assert man["layers"]["enc"]["spec"]["stride"] == 4 and man["global"]["layer"] == "mid"
    cnn = CompNN.load(store, model=net, threads=1)
    assert _identity_fraction(cnn, "enc") >= 0.99
    pairs = [(ds[i].input, torch.from_numpy(ds[i].target)) for i in range(len(ds))]  # any map-style dataset
    built = CompNN.build(net, pairs, layers=[LayerSpec("enc", "enc")], global_layer="mid",
                         out=tmp_path / "u", progress=False, threads=1)
    np.testing.assert_array_equal(np.asarray(built.layer("enc").vectors), np.asarray(cnn.layer("enc").vectors))
    with pytest.raises(ModelError, match=r"unknown global_tap 'nowhere'"):
        build_index(net, ds, layers=[LayerSpec("enc", "enc")], global_layer="nowhere",
                    out=tmp_path / "t", progress=False)


# ------------------------------------------------------------------ any dataset


def _write_pix2pix(root: Path, n: int = 4, hw: int = SIZE) -> Path:
    (root / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (hw, 2 * hw, 3), dtype=np.uint8)).save(root / "train" / f"{i + 1}.png")
    return root


def test_a_torch_dataset_builds_the_same_store_as_the_folder(tmp_path):
    root = _write_pix2pix(tmp_path / "ab")
    net = build_model("unet", task="translate", ngf=4, size=SIZE)
    a = build_index(net, open_dataset(root), layers=["decoder2"], out=tmp_path / "a", progress=False)
    b = build_index(net, fx.FolderPairs(root), layers=["decoder2"], out=tmp_path / "b", progress=False)
    c = workflows.build(model=save_checkpoint(tmp_path / "m.pt", net), data="own_network_fixtures:folder_pairs",
                        data_args={"root": str(root)}, layers=["decoder2"], out=tmp_path / "c",
                        progress=False)
    sa = IndexStore.open(a)
    for other in (IndexStore.open(b), IndexStore.open(c)):
        assert other.image_names == sa.image_names == ["1.png", "2.png", "3.png", "4.png"]
        for name in ("inputs", "targets", "outputs"):
            np.testing.assert_array_equal(other.array(name), sa.array(name))
        np.testing.assert_array_equal(np.asarray(other.vectors("decoder2")), np.asarray(sa.vectors("decoder2")))
        np.testing.assert_array_equal(np.asarray(other.global_vectors()), np.asarray(sa.global_vectors()))
        assert other.manifest["layers"]["decoder2"]["spec"] == sa.manifest["layers"]["decoder2"]["spec"]
    assert IndexStore.open(c).manifest["dataset"]["factory"] == "own_network_fixtures:folder_pairs"


def test_wrapped_datasets_read_tensors_uint8_pictures_and_class_maps():
    pairs = [(np.full((4, 4, 3), 255, np.uint8), torch.tensor([[0, 1, 2, 11]] * 4)) for _ in range(3)]
    ds = open_dataset(pairs, ignore_index=11)
    assert (ds.task, ds.num_classes, ds.ignore_index, ds.image_size) == ("segment", 3, 11, (4, 4))
    assert ds[0].input.dtype == np.float32 and ds[0].input.max() == 1.0
    assert ds.names == ["item00000", "item00001", "item00002"] and ds.palette.shape == (3, 3)
    with pytest.raises(DataError, match=r"size = 32 resizes folder images only"):
        open_dataset(pairs, size=32)
    with pytest.raises(DataError, match=r"expected an \(input, target\) pair"):
        open_dataset([np.zeros(3)])
    with pytest.raises(DataError, match=r"--data: cannot import module 'no_such_module_x'"):
        open_dataset("no_such_module_x:make")


def test_sizes_limits_and_samples(tmp_path):
    assert select_indices(10, 3, "first") == [0, 1, 2]
    assert select_indices(10, 3, "every") == [0, 3, 6]
    r = select_indices(10, 3, "random", seed=5)
    assert r == sorted(r) and len(set(r)) == 3 and r == select_indices(10, 3, "random", seed=5)
    root = _write_pix2pix(tmp_path / "ab", n=6)
    ds = open_dataset(root, limit=2, sample="every")
    assert ds.names == ["1.png", "4.png"] and ds.identity["sample"] == "every"
    assert open_dataset(root, size=(64, 96)).image_size == (64, 96)
    with pytest.raises(DataError, match="sample = 'every': synthetic data generates limit images"):
        open_dataset("synthetic", limit=2, sample="every")
    parser = cli.build_parser()
    assert parser.parse_args(["build", "--model", "m", "--data", "d", "--out", "o", "--size", "352x480"]).size == (352, 480)
    assert parser.parse_args(["build", "--model", "m", "--data", "d", "--out", "o", "--size", "256"]).size == 256
    with pytest.raises(SystemExit):
        parser.parse_args(["build", "--model", "m", "--data", "d", "--out", "o", "--size", "352x"])
    img = np.linspace(-1, 1, 3 * 40 * 50, dtype=np.float32).reshape(3, 40, 50)
    assert fit_image(img, (32, 32), "crop").shape == (3, 32, 32)
    np.testing.assert_array_equal(fit_image(img, (32, 32), "crop"), img[:, 4:36, 9:41])
    assert fit_image(img, (64, 64), "resize").shape == (3, 64, 64)
    with pytest.raises(QueryError, match=r"a 40×50 \(H×W\) image cannot be cropped to the index's 64×64"):
        fit_image(img, (64, 64), "crop")


# ------------------------------------------------------------------ ignore label, palettes


VOID = 11


def _write_annotated(root: Path, split: str, n: int = 4, hw: int = SIZE, classes: int = 4) -> None:
    (root / split).mkdir(parents=True)
    (root / f"{split}annot").mkdir()
    rng = np.random.default_rng(3)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (hw, hw, 3), dtype=np.uint8)).save(root / split / f"f{i}.png")
        coarse = rng.integers(0, classes, (hw // 8, hw // 8))
        labels = np.kron(coarse, np.ones((8, 8), dtype=np.int64)).astype(np.uint8)
        labels[:5, :] = VOID  # void in the training labels: label transfer pastes it
        Image.fromarray(labels).save(root / f"{split}annot" / f"f{i}.png")


def test_evaluate_counts_a_transferred_ignore_label_as_wrong(tmp_path):
    from compnn_index.jobs.evaluate import evaluate

    root = tmp_path / "camvid"
    _write_annotated(root, "train")
    _write_annotated(root, "test")  # the same images: top-1 CompNN is each image itself
    colours = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (0, 0, 192)]
    (root / "classes.txt").write_text("".join(f"class {i} {r} {g} {b}\n" for i, (r, g, b) in enumerate(colours)))
    ds = open_dataset(root)
    assert ds.num_classes == 4 and ds.ignore_index == VOID and ds.class_names[0] == "class 0"
    np.testing.assert_array_equal(ds.palette, np.array(colours, np.uint8))
    net = build_model("unet", task="segment", out_channels=4, ngf=4, size=SIZE)
    ckpt = save_checkpoint(tmp_path / "m.pt", net)
    store = workflows.build(model=ckpt, data=root, layers=["decoder2"], out=tmp_path / "s", progress=False)
    assert IndexStore.open(store).manifest["palette"] == [list(c) for c in colours]
    doc = evaluate(store, data=root, split="test", top_k=[1], out=tmp_path / "eval", progress=False)
    rows = {(r["method"], r["source"], r["vs"]): r for r in doc["rows"] if r["top_k"] in (None, 1)}

    cnn = CompNN.load(store, threads=1)
    recon, cnn_out, truth = [], [], []
    for i in range(len(ds)):
        res = cnn.explain(ds[i].input, layer="decoder2", top_k=1, sources=("target",))
        recon.append(res.reconstructions["target"])
        cnn_out.append(res.output)
        truth.append(ds[i].target)
    recon, cnn_out, truth = map(np.stack, (recon, cnn_out, truth))
    void = recon == VOID
    assert void.mean() > 0.1  # the training labels' void is pasted
    # vs the CNN: a transferred void pixel is wrong (counted, never correct).
    want = float((recon == cnn_out).sum() / recon.size)
    assert rows[("compnn", "original", "cnn")]["pixel_accuracy"] == pytest.approx(want)
    assert want < float((recon == cnn_out)[~void].mean())
    # vs the ground truth: void ground-truth pixels are left out of every row alike.
    keep = truth != VOID
    assert rows[("compnn", "original", "ground_truth")]["pixel_accuracy"] == pytest.approx(
        float((recon == truth)[keep].sum() / keep.sum()))
    assert rows[("cnn", None, "ground_truth")]["pixel_accuracy"] == pytest.approx(
        float((cnn_out == truth)[keep].mean()))
    assert (tmp_path / "eval" / "examples.png").is_file()


def test_classes_file_colours_are_all_or_none(tmp_path):
    from compnn_index.data.annotated import read_classes

    (tmp_path / "c.txt").write_text("sky 128 128 128\nroad\n")
    with pytest.raises(DataError, match=r"either every class line has a colour .* class 2 \('road'\)"):
        read_classes(tmp_path / "c.txt")
    (tmp_path / "c.txt").write_text("sky\nroad 2\n")
    assert read_classes(tmp_path / "c.txt") == (("sky", "road 2"), None)
    (tmp_path / "c.txt").write_text("sky 300 0 0\n")
    with pytest.raises(DataError, match=r"colour 300 0 0 is not in 0\.\.255"):
        read_classes(tmp_path / "c.txt")


def _write_voc_style(root: Path, split: str, n: int = 4) -> None:
    """Masks whose void is 255 (VOC / Cityscapes style), with a classes.txt naming 3 classes."""
    (root / split).mkdir(parents=True)
    (root / f"{split}annot").mkdir()
    rng = np.random.default_rng(5)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / split / f"v{i}.png")
        labels = np.kron(rng.integers(0, 3, (SIZE // 8, SIZE // 8)), np.ones((8, 8), dtype=np.int64)).astype(np.uint8)
        labels[:, :3] = 255  # object boundaries / void
        Image.fromarray(labels).save(root / f"{split}annot" / f"v{i}.png")
    (root / "classes.txt").write_text("sky 128 128 255\nroad 90 90 90\ncar 255 0 0\n")


def test_ignore_index_255_flows_from_train_to_build_to_evaluate_and_class_names_are_recorded(tmp_path, capsys):
    import json

    root = tmp_path / "voc"
    _write_voc_style(root, "train")
    _write_voc_style(root, "test")
    common = ["--data", str(root), "--threads", "1"]
    # without it: refused, naming the file, the label and the ignore label expected
    assert cli.main(["train", *common, "--task", "segment", "--ngf", "4", "--epochs", "1",
                     "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert "found label 255, expected 0..2 or ignore_index = 11" in err and "v0.png" in err
    assert cli.main(["train", *common, "--task", "segment", "--ngf", "4", "--epochs", "1", "--ignore-index", "255",
                     "--out", str(tmp_path / "m.pt")]) == 0
    # build and evaluate take the ignore label the model / store was trained with
    assert cli.main(["build", "--model", str(tmp_path / "m.pt"), *common, "--layers", "decoder2",
                     "--out", str(tmp_path / "s")]) == 0
    man = IndexStore.open(tmp_path / "s").manifest
    assert man["ignore_index"] == 255 and man["dataset"]["ignore_index"] == 255
    assert man["class_names"] == ["sky", "road", "car"]
    assert cli.main(["evaluate", str(tmp_path / "s"), *common, "--split", "test", "--top-k", "1", "--no-hpm",
                     "--out", str(tmp_path / "ev")]) == 0
    doc = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert doc["class_names"] == ["sky", "road", "car"]
    cnn_row = next(r for r in doc["rows"] if r["method"] == "cnn" and r["vs"] == "ground_truth")
    assert 0.0 <= cnn_row["pixel_accuracy"] <= 1.0
    assert CompNN.load(tmp_path / "s", threads=1).context().class_names == ("sky", "road", "car")
    # compare --cold measures in a child process, which opens the split with the store's label too
    assert cli.main(["compare", str(tmp_path / "s"), *common, "--limit", "1", "--cold", "--iterations", "2",
                     "--baselines", "ivf", "--out", str(tmp_path / "cmp")]) == 0
    cold = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["codecs"]["fp32"]["cold"]
    assert cold["query_seconds"] > 0


def test_trained_ignore_index_prefers_the_option_then_the_record_and_only_for_segmentation():
    from compnn_index.data import trained_ignore_index

    assert trained_ignore_index({"ignore_index": 255}, None, "segment") == 255
    assert trained_ignore_index({"ignore_index": 255}, 0, "segment") == 0
    assert trained_ignore_index({"ignore_index": 255}, None, "translate") is None
    assert trained_ignore_index({}, None, "segment") is None
    assert trained_ignore_index({"ignore_index": True}, None, "segment") is None


def test_open_like_reads_a_split_with_the_recorded_direction_size_and_ignore_label_unless_given(tmp_path):
    from compnn_index.data import open_like
    from compnn_index.errors import DataError

    root = tmp_path / "voc"
    _write_voc_style(root, "test")
    trained = {"direction": "AtoB", "size": [SIZE, 2 * SIZE], "ignore_index": 255}
    ds = open_like(str(root), trained, task="segment", split="test", limit=2)
    assert ds.image_size == (SIZE, 2 * SIZE) and len(ds) == 2
    assert int(ds[0].target.max()) == 255  # read with the store's ignore label, not refused
    assert open_like(str(root), trained, task="segment", split="test", size=SIZE).image_size == (SIZE, SIZE)
    with pytest.raises(DataError, match="255"):  # a record without the label: the masks are refused
        open_like(str(root), {"size": [SIZE, SIZE]}, task="segment", split="test")[0]
    labels = open_like("synthetic", {"direction": "BtoA", "size": [32, 32]}, task="translate", limit=1)
    photos = open_like("synthetic", {"direction": "BtoA", "size": [32, 32]}, task="translate", limit=1,
                       direction="AtoB")
    assert labels.image_size == (32, 32) and not np.array_equal(labels[0].input, photos[0].input)


def test_train_picks_a_unet_depth_both_sides_of_a_non_square_image_allow(tmp_path):
    from compnn_index.jobs import workflows

    root = tmp_path / "wide"
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):  # 64×96: 64 allows 6 halvings, 96 only 5
        Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(root / "train" / f"w{i}.png")
        Image.fromarray(rng.integers(0, 3, (64, 96), dtype=np.uint8)).save(root / "trainannot" / f"w{i}.png")
    workflows.train(data=root, task="segment", ngf=4, epochs=1, threads=1, out=tmp_path / "m.pt", progress=False)
    net = load_checkpoint(tmp_path / "m.pt")
    assert net.config["depth"] == 5
    net.check_input_size(64, 96)


def test_evaluate_scores_input_reconstruction_only_when_the_inputs_are_label_maps(tmp_path):
    from compnn_index.data import FACADES_PALETTE, colorize
    from compnn_index.jobs import workflows
    from compnn_index.jobs.evaluate import evaluate

    root = tmp_path / "ab"
    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for i in range(3):  # A: a photo, B: a Facades label map
            labels = np.kron(rng.integers(0, 12, (4, 4)), np.ones((8, 8), dtype=np.int64))
            photo = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            Image.fromarray(np.concatenate([photo, colorize(labels, FACADES_PALETTE)], axis=1)).save(
                root / split / f"{i + 1}.png")
    docs = {}
    for direction in ("BtoA", "AtoB"):  # labels -> photo, then photo -> labels-as-an-image
        model = tmp_path / f"{direction}.pt"
        workflows.train(data=root, task="translate", direction=direction, ngf=4, epochs=1, threads=1, out=model,
                        progress=False)
        store = workflows.build(model=model, data=root, layers=["decoder2"], out=tmp_path / f"s{direction}",
                                progress=False)
        docs[direction] = evaluate(store, data=root, split="test", top_k=[1], hpm=False, global_layers=False,
                                   out=tmp_path / f"ev{direction}", progress=False)
    scored = lambda doc: [r for r in doc["rows"] if r.get("vs") == "input_labels"]  # noqa: E731
    assert scored(docs["BtoA"]) and docs["BtoA"]["input_labels"].startswith("label maps in the Facades palette")
    assert 0.0 <= scored(docs["BtoA"])[0]["mpa"] <= 1.0
    assert not scored(docs["AtoB"])  # a photo is not a label map: no MPA against snapped colours
    assert "the inputs are not label maps in the Facades palette" in docs["AtoB"]["input_labels"]


def _write_custom_labels_ab(root: Path, n: int = 3) -> np.ndarray:
    """A pix2pix folder whose B halves are label maps in a 3-colour classes.txt palette."""
    from compnn_index.data import colorize

    palette = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=np.uint8)
    rng = np.random.default_rng(4)
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for i in range(n):
            labels = np.kron(rng.integers(0, 3, (4, 4)), np.ones((8, 8), dtype=np.int64))
            photo = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
            Image.fromarray(np.concatenate([photo, colorize(labels, palette)], axis=1)).save(root / split / f"{i}.png")
    (root / "classes.txt").write_text("wall 200 30 30\ntree 30 200 30\nsky 30 30 200\n")
    return palette


def test_inversion_of_a_labels_store_predicts_the_classes_of_its_own_palette_and_records_them(tmp_path):
    import json

    from compnn_index.errors import ModelError
    from compnn_index.jobs import workflows
    from compnn_index.jobs.evaluate import evaluate
    from compnn_index.jobs.inversion import train_inversion
    from compnn_index.models import load_inversion

    root = tmp_path / "ab"
    palette = _write_custom_labels_ab(root)
    stores = {}
    for direction in ("BtoA", "AtoB"):  # labels -> photo; photo -> photo-of-labels (inputs are photos)
        model = tmp_path / f"{direction}.pt"
        workflows.train(data=root, task="translate", direction=direction, ngf=4, epochs=1, threads=1, out=model,
                        progress=False)
        stores[direction] = workflows.build(model=model, data=root, layers=["decoder2"],
                                            out=tmp_path / f"s{direction}", progress=False)
    labels_in = CompNN.load(stores["BtoA"], threads=1).input_labels()
    np.testing.assert_array_equal(labels_in.palette, palette)
    assert labels_in.names == ("wall", "tree", "sky") and "classes.txt" in labels_in.reason
    man = json.loads((stores["BtoA"] / "manifest.json").read_text())
    assert man["input_labels"]["class_names"] == ["wall", "tree", "sky"]  # recorded at build
    del man["input_labels"]  # an older store: found on open, the same
    (stores["BtoA"] / "manifest.json").write_text(json.dumps(man))
    np.testing.assert_array_equal(CompNN.load(stores["BtoA"], threads=1).input_labels().palette, palette)
    assert CompNN.load(stores["BtoA"], threads=1).context().input_legend is not None

    ckpt = tmp_path / "inv.pt"
    rec = train_inversion(stores["BtoA"], "decoder2", out=ckpt, epochs=1, width=8, threads=1, progress=False)
    net = load_inversion(ckpt)
    assert rec["kind"] == "labels" and net.config["out_channels"] == 3  # not Facades' 12 classes
    assert net.checkpoint_extra["palette"] == palette.astype(int).tolist()
    doc = evaluate(stores["BtoA"], data=root, split="test", top_k=[1], hpm=False, global_layers=False,
                   inversion=[ckpt], inversion_top_k=1, out=tmp_path / "ev", progress=False, threads=1)
    assert doc["inversion"][0]["kind"] == "labels" and 0 <= doc["inversion"][0]["learned"]["mpa"] <= 1

    photo = CompNN.load(stores["AtoB"], threads=1)
    assert photo.input_labels().palette is None and photo.context().input_legend is None
    rec = train_inversion(stores["AtoB"], "decoder2", out=tmp_path / "p.pt", epochs=1, width=8, threads=1,
                          progress=False)
    assert rec["kind"] == "photo"
    with pytest.raises(ModelError, match="--kind labels: this store's inputs are not label maps"):
        train_inversion(stores["AtoB"], "decoder2", out=tmp_path / "q.pt", kind="labels", threads=1, progress=False)
    assert not (tmp_path / "q.pt").exists()
