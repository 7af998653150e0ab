"""Issue 21: training that survives being stopped — resume, time budget, atomic checkpoints,
the loss curve (tiny networks: 64 px, ngf 8, four images)."""
from __future__ import annotations

import csv
import importlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from compnn_index.cli import main
from compnn_index.errors import ModelError
from compnn_index.jobs import workflows
from compnn_index.models import build_model, load_checkpoint, model_hash, train_model
from compnn_index.models.resume import load_training_state, save_training_state, training_state_path

from test_cli import assert_user_error, run_main
from test_models import TinyDataset

train_module = importlib.import_module("compnn_index.models.train")
TRAIN = ["train", "--data", "synthetic", "--size", "64", "--limit", "4", "--task", "segment",
         "--ngf", "8", "--batch-size", "2", "--threads", "1"]


def _fresh():
    return build_model("unet", task="translate", ngf=8, size=64, seed=0)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resumed_training_equals_an_uninterrupted_run():
    """Stopped after epoch 2 of 4 and resumed from the saved state: the same weights (BN statistics
    included) and losses as 4 epochs in one go, with dropout and the GAN discriminator in play."""
    ds = TinyDataset("translate", n=4, size=64)
    assert any(isinstance(m, torch.nn.Dropout) for m in _fresh().modules())  # the torch RNG matters
    whole = _fresh()
    expected = train_model(whole, ds, epochs=4, batch_size=2, gan=True, seed=3, threads=1, progress=False)

    states = []
    first = _fresh()
    part = train_model(first, ds, epochs=2, batch_size=2, gan=True, seed=3, threads=1, progress=False,
                       on_epoch=lambda st: states.append((st.epoch, st)))
    assert [e for e, _ in states] == [1, 2] and part == expected[:2]
    _, state = states[-1]

    resumed = _fresh()  # a new process would build a fresh network, then load the state
    losses = train_model(resumed, ds, epochs=4, batch_size=2, gan=True, seed=3, threads=1, progress=False,
                         resume=state)
    assert losses == expected
    want = whole.state_dict()
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, want[key]), key

    # the restored random streams matter: another dropout stream gives other weights
    state.rng["torch"] = torch.manual_seed(99).get_state()
    other = _fresh()
    train_model(other, ds, epochs=4, batch_size=2, gan=True, seed=3, threads=1, progress=False, resume=state)
    assert not torch.equal(other.state_dict()["decoder2.1.weight"], want["decoder2.1.weight"])


def test_minutes_budget_stops_at_the_first_whole_epoch_past_it(monkeypatch):
    """A fake clock advancing 0.25 min per reading: the run stops at the end of the first epoch whose
    cumulated minutes reach the budget, never inside an epoch."""
    clock = iter(np.arange(0, 10_000, 15.0))
    monkeypatch.setattr(train_module, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    ds = TinyDataset("translate", n=4, size=64)
    seen = []
    losses = train_model(_fresh(), ds, epochs=20, batch_size=2, seed=0, threads=1, progress=False,
                         minutes=1.2, on_epoch=lambda st: seen.append(list(st.minutes)))
    minutes = seen[-1]
    assert 1 < len(losses) < 20 and len(seen) == len(losses) == len(minutes)
    assert minutes[-1] >= 1.2 > minutes[-2]
    with pytest.raises(ModelError, match=r"Expected minutes > 0, but minutes = 0"):
        train_model(_fresh(), ds, epochs=1, minutes=0, progress=False)


def test_cli_train_stopped_by_minutes_then_resumed_matches_one_run(capsys, tmp_path):
    whole, part = tmp_path / "whole.pt", tmp_path / "part.pt"
    code, _, err = run_main(capsys, *TRAIN, "--epochs", "3", "--out", whole)
    assert code == 0, err
    code, out, err = run_main(capsys, *TRAIN, "--epochs", "3", "--minutes", "0.00001", "--out", part)
    assert code == 0, err
    assert "1/3 epochs, stopped at the --minutes" in out
    state = training_state_path(part)
    assert state.name == "part.train.pt" and load_training_state(state).epoch == 1
    assert load_checkpoint(part).checkpoint_extra["losses"] == load_checkpoint(whole).checkpoint_extra["losses"][:1]

    code, _, err = run_main(capsys, *TRAIN, "--epochs", "3", "--resume", state, "--out", part)
    assert code == 0, err
    a, b = load_checkpoint(part), load_checkpoint(whole)
    assert model_hash(a) == model_hash(b)
    assert a.checkpoint_extra["losses"] == b.checkpoint_extra["losses"] and len(b.checkpoint_extra["losses"]) == 3
    assert load_training_state(state).epoch == 3

    # the loss curve beside the weights: one CSV row per epoch (minutes increasing), and a PNG
    with open(tmp_path / "part.loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["loss"]) for r in rows] == pytest.approx(b.checkpoint_extra["losses"], abs=1e-6)
    minutes = [float(r["minutes"]) for r in rows]
    assert minutes == sorted(minutes)
    with Image.open(tmp_path / "part.loss.png") as im:
        assert im.size[0] > 100 and im.size[1] > 100
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_stop_while_writing_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    """torch.save dies half-way through writing epoch 2's files (as a kill would): the state and
    the checkpoint on disk are epoch 1's, readable, and no temp file is left behind."""
    out = tmp_path / "m.pt"
    common = dict(data="synthetic", size=64, limit=4, task="segment", ngf=8, batch_size=2, threads=1,
                  out=out, progress=False)
    workflows.train(epochs=1, **common)
    state = training_state_path(out)
    before = load_training_state(state)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # half the bytes are out ...
        raise KeyboardInterrupt  # ... when the process is stopped

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        workflows.train(epochs=2, resume=state, **common)
    monkeypatch.setattr(torch, "save", real_save)
    after = load_training_state(state)
    assert after.epoch == before.epoch == 1 and after.losses == before.losses
    assert len(load_checkpoint(out).checkpoint_extra["losses"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.loss.csv", "m.loss.png", "m.pt", "m.train.pt"]
    # and the interrupted training still resumes to the end
    workflows.train(epochs=2, resume=state, **common)
    assert load_training_state(state).epoch == 2


def test_bad_resume_gets_a_one_line_error(capsys, tmp_path):
    out = tmp_path / "m.pt"
    code, _, err = run_main(capsys, *TRAIN, "--epochs", "1", "--out", out)
    assert code == 0, err
    state = training_state_path(out)
    cases = [
        (["--epochs", "2", "--resume", tmp_path / "missing.pt"], "missing.pt': no such file; expected the "
                                                                 "training state"),
        (["--epochs", "2", "--resume", out], "not a compnn training state (expected format "
                                             "'compnn-training-state'); it is a model checkpoint: resume from m.train.pt"),
        (["--epochs", "2", "--arch", "segnet", "--resume", state], "the checkpoint holds a 'unet' network, but this "
                                                                   "command builds 'segnet'"),
        (["--epochs", "2", "--ngf", "4", "--resume", state], "has ngf = 8, this command's has 4; give the --ngf"),
        (["--epochs", "2", "--lr", "0.1", "--resume", state], "trained with --lr 0.0002, but this command gives 0.1"),
        (["--epochs", "1", "--resume", state], "1 epochs are done already; expected --epochs > 1"),
        (["--epochs", "2", "--minutes", "0", "--resume", state], "Expected --minutes > 0, but --minutes = 0"),
    ]
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    cases.append((["--epochs", "2", "--resume", garbage], "could not be read as a training state"))
    for extra, message in cases:
        args = [a for a in TRAIN if a not in ("--ngf", "8")] if "--ngf" in extra else list(TRAIN)
        code, _, err = run_main(capsys, *args, *extra, "--out", tmp_path / "other.pt")
        assert_user_error(code, err, "train", message)
    assert not (tmp_path / "other.pt").exists()


def test_a_state_of_another_size_is_refused_by_the_library(tmp_path):
    ds = TinyDataset("translate", n=2, size=64)
    states = []
    train_model(_fresh(), ds, epochs=1, batch_size=2, progress=False, on_epoch=states.append)
    save_training_state(tmp_path / "s.pt", states[0])
    state = load_training_state(tmp_path / "s.pt")
    wide = build_model("unet", task="translate", ngf=16, size=64)
    with pytest.raises(ModelError, match=r"resume: the checkpoint's unet network has ngf = 8, this command's has 16"):
        train_model(wide, ds, epochs=2, batch_size=2, progress=False, resume=state)
    with pytest.raises(ModelError, match=r"trained with --batch-size 2, but this command gives 1"):
        train_model(_fresh(), ds, epochs=2, batch_size=1, progress=False, resume=state)
