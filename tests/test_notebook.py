"""The notebook tour (``docs/tour.ipynb``): kept without outputs, linked from the README, and
executed end to end by ``tools/run_tour.py`` (what ``make demo`` runs) with nbclient on the
stores of a small ``compnn demo``: it loads a store, explains an image, draws the pictures,
restricts the database to brick facades and opens a correspondence."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

nbformat = pytest.importorskip("nbformat", reason="the test extra installs nbformat/nbclient/ipykernel")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

TOUR = REPO_ROOT / "docs" / "tour.ipynb"
BIN = os.path.dirname(sys.executable)


def test_tour_is_kept_without_outputs():
    nb = nbformat.read(TOUR, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 6
    assert all(c.outputs == [] and c.execution_count is None for c in code), "strip the outputs of docs/tour.ipynb"


def test_readme_links_the_tour_and_make_demo_runs_it():
    assert "(docs/tour.ipynb)" in (REPO_ROOT / "README.md").read_text()
    demo = (REPO_ROOT / "Makefile").read_text().split("\ndemo:")[1].split("\n\n")[0]
    assert "tools/run_tour.py indexes/demo" in demo


def test_tour_runs_on_the_demo_stores(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    demo = tmp_path / "demo"
    done = subprocess.run([os.path.join(BIN, "compnn"), "demo", "--out", str(demo), "--size", "32",
                           "--train-images", "24", "--test-images", "2", "--epochs", "1", "--threads", "1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "tour.ipynb"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "run_tour.py"), str(demo), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    texts = [o.get("data", {}).get("text/plain", "") for o in outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5  # result, figures, pictures
    assert any(t.startswith("CompNN(") for t in texts)
    assert any(t.startswith("QueryResult(") for t in texts)
    assert any(t.startswith("({'brick'},") for t in texts)  # the restricted database is all brick
    assert any(t.startswith("Correspondence(") for t in texts)
