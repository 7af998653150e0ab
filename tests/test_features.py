"""Layer taps, hyperpatches and global descriptors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compnn_index.errors import ModelError
from compnn_index.features import (
    FeatureExtractor,
    LayerSpec,
    capture,
    default_layer_specs,
    global_descriptor,
    hyperpatches,
)
from compnn_index.models import build_model


class InplaceNet(nn.Module):
    """A user network without layer_taps(): conv → in-place ReLU → conv, plus a failing mode."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(4, 2, 1)
        self.explode = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv(x))
        if self.explode:
            raise RuntimeError("boom")
        return self.head(h)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ----------------------------------------------------------------------------- LayerSpec


def test_layer_spec_defaults_round_trip_and_validation():
    spec = LayerSpec("decoder2", "decoder1", "input", k=2, stride=2)
    assert spec.region == 4
    assert LayerSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict() == {"name": "decoder2", "module": "decoder1", "io": "input", "k": 2, "stride": 2, "region": 4}
    assert LayerSpec("a", "m", k=3, stride=4, region=8).region == 8
    with pytest.raises(ModelError, match=r"layer 'a': expected io to be one of \['input', 'output'\], but io = 'inside'"):
        LayerSpec("a", "m", "inside")
    with pytest.raises(ModelError, match=r"layer 'a': expected k to be a positive integer, but k = 0"):
        LayerSpec("a", "m", k=0)
    with pytest.raises(ModelError, match=r"unknown keys \['size'\]"):
        LayerSpec.from_dict({"name": "a", "module": "m", "size": 3})
    with pytest.raises(ModelError, match=r"missing keys \['module'\]"):
        LayerSpec.from_dict({"name": "a"})


def test_default_layer_specs_for_small_unet():
    model = build_model("unet", task="translate", ngf=8, size=64)
    specs = default_layer_specs(model, 64)
    assert list(specs) == list(model.layer_taps())
    assert specs["encoder1"] == LayerSpec("encoder1", "encoder1", "output", k=2, stride=2)
    assert specs["decoder2"] == LayerSpec("decoder2", "decoder1", "input", k=2, stride=2)
    assert specs["decoder4"].stride == 8 and specs["decoder4"].region == 16
    assert specs["encoder6"].k == 1 and specs["encoder6"].stride == 64  # 1×1 bottleneck
    with pytest.raises(ModelError, match=r"InplaceNet has no layer_taps\(\)"):
        default_layer_specs(InplaceNet(), 8)


# ----------------------------------------------------------------------------- hyperpatches


@pytest.mark.parametrize("k", [1, 2, 3])
def test_hyperpatches_match_hand_computed_windows(k):
    rng = np.random.default_rng(k)
    act = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    hp = hyperpatches(act, k)
    assert hp.shape == (2, 4 - k + 1, 5 - k + 1, k * k * 3) and hp.dtype == np.float32
    assert hp.flags.c_contiguous
    for b in range(2):
        for y in range(4 - k + 1):
            for x in range(5 - k + 1):
                vec = np.empty(k * k * 3, dtype=np.float64)
                for dy in range(k):
                    for dx in range(k):
                        for c in range(3):
                            vec[(dy * k + dx) * 3 + c] = act[b, c, y + dy, x + dx]
                np.testing.assert_allclose(hp[b, y, x], vec / np.linalg.norm(vec), rtol=1e-5, atol=1e-6)


def test_hyperpatches_are_unit_vectors_and_zero_windows_stay_zero():
    act = torch.randn(1, 8, 6, 6)
    act[:, :, :2, :2] = 0  # only the window at (0, 0) with k=2 is all zero
    hp = hyperpatches(act, 2)
    norms = np.linalg.norm(hp, axis=-1)
    assert np.all(hp[0, 0, 0] == 0) and np.isfinite(hp).all()
    norms[0, 0, 0] = 1.0
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    with pytest.raises(ModelError, match=r"Expected 1 <= k <= min\(h, w\) = 6 for a 6×6 feature map, but k = 7"):
        hyperpatches(act, 7)
    with pytest.raises(ModelError, match=r"shape \(B, C, h, w\), but got \(8, 6, 6\)"):
        hyperpatches(act[0], 2)


def test_global_descriptor_flattens_and_normalises():
    act = torch.randn(3, 4, 2, 2)
    act[1] = 0
    g = global_descriptor(act)
    assert g.shape == (3, 16) and g.dtype == np.float32
    np.testing.assert_allclose(g[0], act[0].flatten().numpy() / np.linalg.norm(act[0].numpy()), rtol=1e-5)
    assert np.all(g[1] == 0)
    np.testing.assert_allclose(np.linalg.norm(g[[0, 2]], axis=1), 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------- capture


def test_capture_clones_against_inplace_ops_and_restores_mode():
    model = InplaceNet().train()
    x = torch.randn(2, 3, 8, 8)
    spec = LayerSpec("conv", "conv")
    _, acts = capture(model, x, [spec, LayerSpec("relu_in", "relu", "input")])
    with torch.no_grad():
        expected = model.conv(x)
    assert (expected < 0).any()
    torch.testing.assert_close(acts["conv"], expected)  # not overwritten by the in-place ReLU
    torch.testing.assert_close(acts["relu_in"], expected)
    assert not acts["conv"].requires_grad
    assert model.training and _hooks(model) == 0


def test_capture_removes_hooks_when_forward_raises():
    model = InplaceNet()
    model.explode = True
    with pytest.raises(RuntimeError, match="boom"):
        capture(model, torch.randn(1, 3, 8, 8), [LayerSpec("conv", "conv"), LayerSpec("h", "head", "input")])
    assert _hooks(model) == 0


def test_capture_rejects_unknown_and_unreached_layers():
    unet = build_model("unet", task="translate", ngf=8, size=32)
    with pytest.raises(ModelError, match=r"unknown layer 'bottleneck': UNet has no module 'middle'; available taps: encoder1, encoder2, .*decoder2"):
        capture(unet, torch.zeros(1, 3, 32, 32), [LayerSpec("bottleneck", "middle")])
    with pytest.raises(ModelError, match=r"available modules: conv, relu, head"):
        capture(InplaceNet(), torch.zeros(1, 3, 8, 8), [LayerSpec("x", "conv2")])
    model = InplaceNet()
    model.extra = nn.Conv2d(4, 4, 1)  # never called in forward
    with pytest.raises(ModelError, match=r"layers \['x'\] were not reached"):
        capture(model, torch.zeros(1, 3, 8, 8), [LayerSpec("x", "extra")])
    assert _hooks(unet) == 0 and _hooks(model) == 0
    with pytest.raises(ModelError, match=r"layer names must be unique, but \['a'\]"):
        capture(model, torch.zeros(1, 3, 8, 8), [LayerSpec("a", "conv"), LayerSpec("a", "head")])
    with pytest.raises(ModelError, match=r"Expected images with in_channels = 3 channels, but got 1"):
        capture(unet, torch.zeros(1, 1, 32, 32), [])


# ----------------------------------------------------------------------------- FeatureExtractor


def test_feature_extractor_on_builtin_model():
    model = build_model("unet", task="translate", ngf=8, size=32)
    specs = default_layer_specs(model, 32)
    fe = FeatureExtractor(model, [specs["decoder2"], specs["decoder3"]])
    assert fe.global_spec.name == "encoder5"
    batch = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    outputs, patches, g = fe(batch)
    out, acts = capture(model, batch, [specs["decoder2"], specs["encoder5"]])
    np.testing.assert_array_equal(outputs, out.numpy())
    np.testing.assert_array_equal(patches["decoder2"], hyperpatches(acts["decoder2"], 2))
    np.testing.assert_array_equal(g, global_descriptor(acts["encoder5"]))
    assert fe.layer_shapes(32) == {"decoder2": (15, 15, 64), "decoder3": (7, 7, 128)}
    assert {k: v.shape[1:] for k, v in patches.items()} == fe.layer_shapes(32)
    assert fe.global_dim(32) == g.shape[1] == 64
    assert np.abs(outputs).max() <= 1
    with pytest.raises(ModelError, match=r"unknown global_tap 'middle'; available taps: .*decoder2"):
        FeatureExtractor(model, [specs["decoder2"]], global_tap="middle")


def test_feature_extractor_on_user_model():
    model = InplaceNet()
    with pytest.raises(ModelError, match=r"layers \['conv'\] have no stride yet; infer it by probing"):
        FeatureExtractor(model, [LayerSpec("conv", "conv", k=3)], global_tap=LayerSpec("g", "head", "input"))
    layer = LayerSpec("conv", "conv", k=3, stride=1)
    with pytest.raises(ModelError, match=r"InplaceNet has no bottleneck_tap\(\); pass global_tap"):
        FeatureExtractor(model, [layer])
    fe = FeatureExtractor(model, {"conv": layer}, global_tap=LayerSpec("g", "head", "input"))
    outputs, patches, g = fe(np.zeros((1, 3, 8, 8), dtype=np.float32) + 0.5)
    assert outputs.shape == (1, 2, 8, 8)
    assert patches["conv"].shape == (1, 6, 6, 36)
    assert g.shape == (1, 4 * 8 * 8)
    assert fe.layer_shapes((8, 8)) == {"conv": (6, 6, 36)}
