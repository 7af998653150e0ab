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


def test_old_checkpoints_without_norm_are_batch_norm_and_keep_their_hash():
    unet = build_model("unet", task="translate", size=128, ngf=4)
    assert "norm" not in unet.config and unet.norm == "batch"
    inst = build_model("unet", task="translate", size=128, ngf=4, norm="instance")
    assert inst.config["norm"] == "instance"
    assert inst.encoder1.bias is not None and unet.encoder1.bias is None
    with pytest.raises(ModelError, match="norm"):
        build_model("segnet", task="segment", out_channels=3, norm="instance")
