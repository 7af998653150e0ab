"""Built-in networks: layer names and shapes, options, checkpoints, training."""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import nn

from compnn_index.errors import DataError, ModelError

train_module = importlib.import_module("compnn_index.models.train")
from compnn_index.features import capture, default_layer_specs, probe_shapes
from compnn_index.models import (
    SegNet,
    UNet,
    build_model,
    default_depth,
    load_checkpoint,
    model_hash,
    save_checkpoint,
    train_model,
)

# ----------------------------------------------------------------------------- tiny datasets


@dataclass
class Sample:
    id: int
    name: str
    input: np.ndarray
    target: np.ndarray
    meta: dict = field(default_factory=dict)


class TinyDataset:
    """In-memory paired dataset following the data contract (no dependency on data/)."""

    def __init__(self, task: str, n: int = 6, size: int = 32, classes: int = 3, seed: int = 0,
                 ignore_index: int | None = None):
        rng = np.random.default_rng(seed)
        self.task = task
        self.ignore_index = ignore_index
        self.inputs = rng.uniform(-1, 1, (n, 3, size, size)).astype(np.float32)
        if task == "translate":
            # A learnable pixel-wise map: swap channels and squash.
            self.targets = np.tanh(1.5 * self.inputs[:, ::-1]).astype(np.float32)
        else:
            # Class = which channel is largest: a pixel-wise rule a small net can learn.
            self.targets = self.inputs[:, :classes].argmax(1).astype(np.int64)
            if ignore_index is not None:
                self.targets[:, :2, :] = ignore_index

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> Sample:
        return Sample(i, f"{i}.png", self.inputs[i], self.targets[i])


# ----------------------------------------------------------------------------- U-Net


def test_unet_256_ngf64_has_the_pix2pix_layout():
    with torch.device("meta"):
        model = build_model("unet", task="translate", ngf=64, size=256)
    assert isinstance(model, UNet) and model.depth == 8
    # pix2pix unet_256 has 54,413,955 parameters.
    assert sum(p.numel() for p in model.parameters()) == 54_413_955
    shapes = probe_shapes(model, 256, default_layer_specs(model, 256))
    enc = [shapes[f"encoder{n}"] for n in range(1, 9)]
    assert [c for c, _, _ in enc] == [64, 128, 256, 512, 512, 512, 512, 512]
    assert [h for _, h, _ in enc] == [128, 64, 32, 16, 8, 4, 2, 1]
    assert shapes["encoder1"] == (64, 128, 128)
    assert shapes["decoder2"] == (128, 128, 128)  # 2×2 hyperpatch = 512 dims
    assert shapes["decoder3"] == (256, 64, 64)
    assert shapes["decoder8"] == (1024, 2, 2)
    assert model.bottleneck_tap() == "encoder8" and shapes["encoder8"] == (512, 1, 1)
    assert isinstance(model.encoder1, nn.Conv2d)
    assert [type(m) for m in model.encoder8] == [nn.LeakyReLU, nn.Conv2d]
    assert [type(m) for m in model.decoder8] == [nn.ReLU, nn.ConvTranspose2d, nn.BatchNorm2d]
    dropout = [n for n in range(2, 9) if any(isinstance(m, nn.Dropout) for m in getattr(model, f"decoder{n}"))]
    assert dropout == [5, 6, 7]
    assert isinstance(model.decoder1[-1], nn.Tanh)
    assert not any(getattr(m, "inplace", False) for m in model.modules())


@pytest.mark.parametrize("size, depth", [(256, 8), (128, 7), (64, 6), (96, 5)])
def test_depth_follows_size(size, depth):
    assert default_depth(size) == depth
    with torch.device("meta"):
        model = build_model("unet", task="translate", ngf=8, size=size)
    assert model.depth == depth and model.size_multiple() == 2**depth


def test_small_unet_taps_and_output():
    model = build_model("unet", task="segment", out_channels=5, ngf=8, size=32)
    assert model.depth == 5
    taps = model.layer_taps()
    assert list(taps) == [f"encoder{n}" for n in range(1, 6)] + [f"decoder{n}" for n in range(5, 1, -1)]
    assert taps["decoder2"] == ("decoder1", "input") and taps["encoder3"] == ("encoder3", "output")
    x = torch.randn(2, 3, 32, 32)
    out, acts = capture(model, x, default_layer_specs(model, 32).values())
    assert out.shape == (2, 5, 32, 32)
    assert isinstance(model.decoder1[-1], nn.Identity)
    assert acts["encoder1"].shape == (2, 8, 16, 16)
    assert acts["decoder2"].shape == (2, 16, 16, 16)
    assert acts["decoder3"].shape == (2, 32, 8, 8)
    assert acts["encoder5"].shape == (2, 64, 1, 1)


def test_decoder_tap_is_concat_of_decoder_and_encoder_outputs():
    model = build_model("unet", task="translate", ngf=8, size=32).eval()
    outputs = {}
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda m, a, o, name=name: outputs.__setitem__(name, o.clone())
        )
        for name in ("decoder3", "encoder2", "decoder2", "encoder1")
    ]
    try:
        _, acts = capture(model, torch.randn(1, 3, 32, 32), default_layer_specs(model, 32))
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(acts["decoder3"], torch.cat([outputs["decoder3"], outputs["encoder2"]], 1))
    torch.testing.assert_close(acts["decoder2"], torch.cat([outputs["decoder2"], outputs["encoder1"]], 1))


def test_check_input_size_names_the_multiple_and_depth():
    with torch.device("meta"):
        model = build_model("unet", task="translate", size=256)
    model.check_input_size(512, 256)
    with pytest.raises(ModelError, match=r"image size 200×200 is not a multiple of 256 required by unet depth 8"):
        model.check_input_size(200, 200)
    with pytest.raises(ModelError, match=r"image size 64×64 is not a multiple of 256"):
        capture(model, torch.zeros(1, 3, 64, 64, device="meta"), [])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"arch": "resnet", "task": "translate"}, r"Unknown arch 'resnet'; expected one of unet, segnet"),
        ({"arch": "unet", "task": "translate", "ngf": 0}, r"Expected ngf >= 1, but ngf = 0"),
        ({"arch": "segnet", "task": "segment", "out_channels": 4, "ngf": "64"}, r"ngf = '64'"),
        ({"arch": "unet", "task": "colorize"}, r"Unknown task 'colorize'; expected one of translate, segment"),
        ({"arch": "unet", "task": "segment"}, r"out_channels \(the number of classes\) is required"),
        ({"arch": "unet", "task": "segment", "out_channels": 1}, r"Expected out_channels >= 2 .*out_channels = 1"),
        ({"arch": "unet", "task": "translate", "size": 128, "depth": 8}, r"multiple of 2\*\*depth = 256 for unet, but size = 128, depth = 8"),
        ({"arch": "unet", "task": "translate", "depth": 1}, r"depth = 1"),
        ({"arch": "segnet", "task": "segment", "out_channels": 4, "depth": 4}, r"fixed depth of 5, but depth = 4"),
        ({"arch": "segnet", "task": "segment", "out_channels": 4, "size": 48}, r"multiple of 32 for segnet, but size = 48"),
    ],
)
def test_build_model_rejects_bad_options(kwargs, message):
    with pytest.raises(ModelError, match=message):
        with torch.device("meta"):
            build_model(**kwargs)


def test_config_rebuilds_and_seed_fixes_initial_weights():
    model = build_model("unet", task="translate", ngf=8, size=32, seed=3)
    again = build_model(**model.config, seed=3)
    assert again.config == model.config
    assert model_hash(again) == model_hash(model)
    assert model_hash(build_model(**model.config, seed=4)) != model_hash(model)


# ----------------------------------------------------------------------------- SegNet


def test_segnet_taps_shapes_and_bottleneck():
    model = build_model("segnet", task="segment", out_channels=4, ngf=8, size=64)
    assert isinstance(model, SegNet) and model.size_multiple() == 32
    assert model.bottleneck_tap() == "encoder5"
    assert all(io == "output" for _, io in model.layer_taps().values())
    specs = default_layer_specs(model, 64)
    _, acts = capture(model, torch.randn(2, 3, 64, 64), specs)
    expect = {
        "encoder1": (8, 32), "encoder2": (16, 16), "encoder3": (32, 8), "encoder4": (64, 4),
        "encoder5": (64, 2), "decoder5": (64, 4), "decoder4": (32, 8), "decoder3": (16, 16),
        "decoder2": (8, 32), "decoder1": (8, 64), "classifier": (4, 64),
    }
    assert {k: (a.shape[1], a.shape[2]) for k, a in acts.items()} == expect
    assert specs["encoder5"].stride == 32 and specs["classifier"].stride == 1
    with pytest.raises(ModelError, match=r"image size 48×64 is not a multiple of 32 required by segnet"):
        model.check_input_size(48, 64)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    model = build_model("unet", task="segment", out_channels=4, ngf=8, size=32, seed=1)
    with torch.no_grad():  # make BatchNorm running stats non-trivial
        model.train()(torch.randn(2, 3, 32, 32))
    model.eval()
    path = save_checkpoint(tmp_path / "sub" / "m.pt", model, epochs=3, dataset={"kind": "tiny"})
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["m.pt"]
    loaded = load_checkpoint(path)
    assert not loaded.training and loaded.config == model.config
    assert loaded.checkpoint_extra == {"epochs": 3, "dataset": {"kind": "tiny"}}
    assert model_hash(loaded) == model_hash(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_model_hash_changes_with_weights_and_task():
    model = build_model("unet", task="translate", ngf=8, size=32)
    before = model_hash(model)
    assert len(before) == 64
    with torch.no_grad():
        model.encoder1.weight[0, 0, 0, 0] += 1e-3
    assert model_hash(model) != before
    seg = build_model("unet", task="segment", out_channels=3, ngf=8, size=32)
    seg.load_state_dict(model.state_dict())
    assert model_hash(seg) != model_hash(model)


def test_bad_checkpoints_raise_model_error_naming_the_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ModelError, match=r"checkpoint file '.*nope\.pt' does not exist"):
        load_checkpoint(missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file at all")
    with pytest.raises(ModelError, match=r"checkpoint file '.*corrupt\.pt' could not be read"):
        load_checkpoint(corrupt)
    good = save_checkpoint(tmp_path / "good.pt", build_model("unet", task="translate", ngf=8, size=32))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:500])
    with pytest.raises(ModelError, match=r"truncated\.pt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ModelError, match=r"foreign\.pt' is not a compnn checkpoint: expected keys \['arch', 'config', 'state_dict'\], found \['weights'\]"):
        load_checkpoint(foreign)
    unknown = tmp_path / "unknown.pt"
    torch.save({"arch": "resnet", "config": {"task": "translate"}, "state_dict": {}}, unknown)
    with pytest.raises(ModelError, match=r"unknown\.pt.*Unknown arch 'resnet'"):
        load_checkpoint(unknown)
    with pytest.raises(ModelError, match=r"cannot save Linear"):
        save_checkpoint(tmp_path / "x.pt", nn.Linear(2, 2))


# ----------------------------------------------------------------------------- training


def test_training_reduces_l1_loss_and_is_deterministic():
    ds = TinyDataset("translate", n=6, size=32)
    losses = []
    for _ in range(2):
        model = build_model("unet", task="translate", ngf=8, size=32, seed=0)
        state = torch.random.get_rng_state()
        losses.append(train_model(model, ds, epochs=8, batch_size=2, lr=1e-2, seed=5, threads=1, progress=False))
        assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
        assert not model.training
    assert losses[0] == losses[1]
    assert len(losses[0]) == 8 and losses[0][-1] < 0.8 * losses[0][0]


def test_training_reduces_cross_entropy_with_ignore_index():
    ds = TinyDataset("segment", n=6, size=32, classes=3, ignore_index=255)
    model = build_model("segnet", task="segment", out_channels=3, ngf=8, size=32)
    threads = torch.get_num_threads()
    losses = train_model(model, ds, epochs=10, batch_size=2, lr=1e-2, threads=1, progress=False)
    assert torch.get_num_threads() == threads
    assert losses[-1] < 0.85 * losses[0]


def test_gan_training_runs_and_reports_l1():
    ds = TinyDataset("translate", n=2, size=32)
    model = build_model("unet", task="translate", ngf=8, size=32)
    losses = train_model(model, ds, epochs=2, batch_size=2, gan=True, threads=1, progress=False)
    assert len(losses) == 2 and all(0 < v < 2 for v in losses)


def test_numpy_ints_are_options_and_configs_stay_json():
    """Options are checked by compnn_index.checks (NumPy ints are integers); configs hold ints."""
    with torch.device("meta"):
        model = build_model("unet", task="translate", ngf=np.int64(8), size=np.int64(32))
    assert json.loads(json.dumps(model.config)) == model.config and type(model.config["ngf"]) is int


def test_training_threads_use_the_one_limiter():
    ds = TinyDataset("translate", n=2, size=32)
    model = build_model("unet", task="translate", ngf=8, size=32)
    with pytest.raises(ModelError, match=r"Expected 1 <= threads <= \d+, but threads = 100000"):
        train_model(model, ds, epochs=1, threads=100000, progress=False)
    from compnn_index.checks import current_threads, thread_limit

    seen = []
    real_step = train_module._step

    def step(*args, **kwargs):
        seen.append((current_threads(), torch.get_num_threads()))
        return real_step(*args, **kwargs)

    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "_step", step)
        train_model(model, ds, epochs=1, batch_size=2, threads=1, progress=False)
        with thread_limit(2):  # threads=None: the caller's limit stays in force
            train_model(model, ds, epochs=1, batch_size=2, progress=False)
    assert seen == [(1, 1), (2, 2)] and torch.get_num_threads() == before


def test_training_validates_model_and_data():
    translate = TinyDataset("translate", n=2, size=32)
    segment = TinyDataset("segment", n=2, size=32, classes=3)
    unet = build_model("unet", task="translate", ngf=8, size=32)
    with pytest.raises(ModelError, match=r"Expected epochs >= 1, but epochs = 0"):
        train_model(unet, translate, epochs=0)
    with pytest.raises(ModelError, match=r"model task 'translate' does not match the dataset's task 'segment'"):
        train_model(unet, segment, epochs=1, progress=False)
    with pytest.raises(ModelError, match=r"gan=True needs a translate dataset"):
        train_model(build_model("unet", task="segment", out_channels=3, ngf=8, size=32), segment, epochs=1, gan=True)
    small = build_model("unet", task="segment", out_channels=2, ngf=8, size=32)
    with pytest.raises(DataError, match=r"class labels must lie in \[0, 1\].*labels from 0 to 2"):
        train_model(small, segment, epochs=1, progress=False)
    translate.targets = translate.targets.astype(np.float64)
    with pytest.raises(DataError, match=r"sample '0.png': expected a float32 \(C, H, W\) target for task 'translate', got float64"):
        train_model(unet, translate, epochs=1, progress=False)
    odd = TinyDataset("translate", n=2, size=24)
    with pytest.raises(ModelError, match=r"image size 24×24 is not a multiple of 32"):
        train_model(unet, odd, epochs=1, progress=False)
