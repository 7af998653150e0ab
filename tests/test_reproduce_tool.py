"""Issue 21: tools/reproduce_papers.py continues a stopped run without recomputing finished images,
and papers.json / papers.md carry the intervals and claims (tiny synthetic store, two then three
test images)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import reproduce_papers  # noqa: E402

from conftest import TINY_SIZE  # noqa: E402


def _argv(tmp_path: Path, model: Path, images: int, *extra: str) -> list[str]:
    return ["--steps", "table1", "--data", "synthetic", "--size", str(TINY_SIZE), "--db-images", "4",
            "--images", str(images), "--top-k", "1,2", "--seg-model", str(model),
            "--l2p-model", str(tmp_path / "absent.pt"), "--seg-log", str(tmp_path / "no.log"),
            "--l2p-log", str(tmp_path / "no.log"), "--work", str(tmp_path / "work"), "--docs", str(tmp_path / "docs"),
            *extra]


def _run(tmp_path: Path, model: Path, images: int, *extra: str) -> dict:
    assert reproduce_papers.main(_argv(tmp_path, model, images, *extra)) == 0
    return json.loads((tmp_path / "work" / "results" / "table1" / "results.json").read_text())


def test_a_rerun_with_more_images_computes_only_the_new_ones(segment_index, tmp_path):
    first = _run(tmp_path, segment_index.model, 2)
    cache = tmp_path / "work" / "results" / "table1" / "images"
    before = {p.name: p.read_bytes() for p in cache.glob("*.json")}
    assert first["cache"]["computed"] == 2 and len(before) == 2

    doc = _run(tmp_path, segment_index.model, 3)
    assert doc["cache"] == dict(doc["cache"], reused=2, computed=1) and doc["n_images"] == 3
    assert all((cache / n).read_bytes() == b for n, b in before.items())  # finished images untouched

    again = _run(tmp_path, segment_index.model, 3)  # a rerun of a finished table searches nothing
    assert again["cache"]["reused"] == 3 and again["cache"]["computed"] == 0

    papers = json.loads((tmp_path / "docs" / "papers.json").read_text())
    assert {"table1", "table2", "activation_prediction", "inversion", "models", "run", "claims"} <= set(papers)
    row = next(r for r in papers["table1"] if r["method"] == "cnn")
    assert row["n_images"] == 3 and len(row["ci95"]["pixel_accuracy"]) == 2
    lo, hi = row["ci95"]["pixel_accuracy"]
    assert lo <= row["pixel_accuracy"] <= hi
    assert row["paper_pixel_accuracy"] is None  # synthetic store: no paper column
    for r in papers["table1"]:  # every difference from the CNN has its paired interval
        if r["vs"] == "ground_truth" and r["method"] != "cnn":
            lo, hi = r["ci95"]["delta_pixel_accuracy"]
            assert lo - 1e-9 <= r["delta_pixel_accuracy"] <= hi + 1e-9
    assert (tmp_path / "docs" / "papers_table1.png").is_file() and "papers_table1.png" in papers["pictures"]
    assert papers["claims"] and all(c["supports"] is None for c in papers["claims"])
    md = (tmp_path / "docs" / "papers.md").read_text()
    claim_lines = [line for line in md.splitlines() if line.startswith("- **")]
    assert len(claim_lines) == len(papers["claims"])


def test_an_exact_method_the_api_does_not_accept_is_refused(segment_index, tmp_path):
    from compnn_index.options import EXACT_METHODS

    with pytest.raises(SystemExit, match=r"--exact-method 'nonesuch': this version's API accepts "
                                         + ", ".join(EXACT_METHODS)):
        _run(tmp_path, segment_index.model, 1, "--exact-method", "nonesuch")
    assert not (tmp_path / "work" / "results" / "table1").exists()  # refused before any work


def test_a_killed_run_continues_without_recomputing_finished_images(segment_index, tmp_path):
    """SIGKILL the tool once two images are done; the rerun reuses every record written before the
    kill (byte for byte) and computes only the rest."""
    cache = tmp_path / "work" / "results" / "table1" / "images"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "reproduce_papers.py"),
                             *_argv(tmp_path, segment_index.model, 10)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and len(list(cache.glob("*.json"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done = {p.name: p.read_bytes() for p in cache.glob("*.json")}
    assert len(done) >= 2
    doc = _run(tmp_path, segment_index.model, 10)
    assert doc["cache"]["reused"] == len(done) and doc["cache"]["computed"] == 10 - len(done)
    assert all((cache / n).read_bytes() == b for n, b in done.items())


def test_an_unknown_step_is_refused_before_any_work(tmp_path):
    argv = _argv(tmp_path, tmp_path / "m.pt", 1)
    argv[argv.index("table1")] = "table1,tabel2"
    with pytest.raises(SystemExit, match="--steps 'tabel2': expected any of models, prediction, inversion"):
        reproduce_papers.main(argv)
    assert not (tmp_path / "work").exists()


def test_the_segmentation_store_is_built_once_for_the_run_and_a_missing_need_gets_its_own(tmp_path, monkeypatch):
    import argparse

    built = []

    def fake_build(out, model, *, layers, limit=None, pairs=None):
        built.append((out.name, list(layers), list(pairs or [])))
        out.mkdir(parents=True)
        entries = {p: dict(zip(("source", "target", "k"), (*p.split(":")[:2], int(p.split(":")[2])))) for p in pairs or []}
        (out / "manifest.json").write_text(json.dumps({"layers": {n: {} for n in layers}, "predictions": entries}))
        return out

    monkeypatch.setattr(reproduce_papers, "ensure_store", fake_build)
    a = argparse.Namespace(work=tmp_path, seg_model=tmp_path / "m.pt", db_images=4, steps="table1,prediction")
    assert reproduce_papers.seg_store(a, "table1").name == "seg"
    assert built == [("seg", ["decoder2"], ["decoder4:decoder3:4", "decoder4:decoder3:2"])]
    assert reproduce_papers.seg_store(a, "prediction").name == "seg" and len(built) == 1  # reused
    a.steps = "inversion"  # a later run: seg lacks the inversion layers, so they get their own store
    assert reproduce_papers.seg_store(a, "inversion").name == "seg_inversion"
    assert built[-1] == ("seg_inversion", list(reproduce_papers.INV_LAYERS), [])
    assert reproduce_papers.seg_store(a, "table1").name == "seg" and len(built) == 2
