"""The README works: every ``compnn`` command its shell blocks show runs, as a subprocess.

``readme_runner`` reads the blocks; this runs them in reading order in a scratch folder, on small
inputs (``$F`` and ``../shared/data/facades`` are the real Facades folder, cut by ``--limit``;
``indexes/demo`` is ``make demo``'s command at a tiny size), with the files the README names
(``photo.jpg``, ``latest_net_G.pth``, ``mypackage``, ...) made real. ``compnn serve`` is started,
must answer ``/health``, the README's ``curl`` calls and its Python client, and is stopped at
the end. Its Python blocks run as scripts. A command that exits non-zero or prints a traceback
fails the test; ``[needs: REASON]`` commands are skipped and listed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from compnn_index.cli import COMMANDS, build_parser
from cli_server import BIN, TRACEBACK, CliServer
from conftest import FACADES_DIR, REPO_ROOT
from pix2pix_reference import ReferenceUnet, randomise
from readme_runner import Step, expand_ellipsis, readme_steps, shrink

README = REPO_ROOT / "README.md"
#: ``make demo``'s store at a size that builds in seconds (the README's queries use ids < 16).
DEMO_SMALL = ["--size", "32", "--train-images", "16", "--test-images", "2", "--epochs", "1", "--threads", "1"]

MYPACKAGE = {
    "__init__.py": "",
    "nets.py": '''
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self, width, classes=4):
                super().__init__()
                self.encoder = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU())
                self.decoder = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1), nn.Conv2d(width, width, 3, 1, 1),
                                             nn.ReLU(), nn.Upsample(scale_factor=2), nn.Conv2d(width, classes, 1))

            def forward(self, x):
                return self.decoder(self.encoder(x))

        def make_net(width=8):
            torch.manual_seed(0)
            return Net(width)
    ''',
    "data.py": '''
        import numpy as np

        class Streets:
            num_classes = 4

            def __init__(self, split):
                self.rng = np.random.default_rng(0 if split == "train" else 1)
                self.items = [(self.rng.uniform(-1, 1, (3, 32, 32)).astype(np.float32),
                               self.rng.integers(0, 4, (32, 32))) for _ in range(6)]

            def __len__(self):
                return len(self.items)

            def __getitem__(self, i):
                return self.items[i]

        def camvid(split="train"):
            return Streets(split)
    ''',
}


#: Paths the README gives relative to the repository root, as the scratch folder reaches them.
PATHS = {"../shared/data/facades": str(FACADES_DIR)}


def _real_path(word: str) -> str:
    for given, real in PATHS.items():
        if word == given or word.startswith(given + "/"):
            return real + word[len(given):]
    return word


def _picture(path: Path, h: int, w: int, seed: int) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _workdir(root: Path) -> Path:
    """The files the README names, made real in ``root``."""
    for name, seed in (("photo.jpg", 1), ("a.jpg", 2), ("b.jpg", 3)):
        _picture(root / name, 64, 64, seed)  # the size of the README's facades_seg store here
    _picture(root / "photo.png", 32, 32, 4)  # the demo store's size (the service block)
    _picture(root / "street.png", 50, 70, 5)  # another size: --resize
    torch.save(randomise(ReferenceUnet(num_downs=8, ngf=4)).state_dict(), root / "latest_net_G.pth")
    pkg = root / "mypackage"
    pkg.mkdir()
    for name, src in MYPACKAGE.items():
        (pkg / name).write_text(textwrap.dedent(src))
    sys.path.insert(0, str(root))
    try:
        from mypackage.nets import make_net

        torch.save(make_net(32).state_dict(), root / "mynet.pth")
    finally:
        sys.path.remove(str(root))
        for mod in [m for m in sys.modules if m.split(".")[0] == "mypackage"]:
            del sys.modules[mod]
    return root


def _demo_command() -> list[str]:
    """``make demo``'s compnn command, read from the Makefile."""
    line = next(ln for ln in (REPO_ROOT / "Makefile").read_text().splitlines() if "compnn demo" in ln)
    words = line.split()
    return ["compnn"] + words[words.index("demo"):]


class Runner:
    """Runs the steps in ``cwd``; collects failures and skips, owns the ``compnn serve`` process."""

    def __init__(self, cwd: Path) -> None:
        self.cwd, self.port = cwd, 8000
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join([str(cwd), *filter(None, [os.environ.get("PYTHONPATH")])]),
                    "PYTHONUNBUFFERED": "1"}
        self.failures: list[str] = []
        self.skipped: list[str] = []
        self.ran: list[list[str]] = []
        self.server: CliServer | None = None
        self.health_seconds: float | None = None
        self.parser = build_parser()
        self.previous: dict[str, list[str]] = {}

    def _check(self, what: str, done: subprocess.CompletedProcess) -> None:
        out = (done.stdout or "") + (done.stderr or "")
        if done.returncode != 0 or TRACEBACK in out:
            self.failures.append(f"{what}\n  exit status {done.returncode}\n  " + out[-1500:].replace("\n", "\n  "))

    def _local(self, text: str) -> str:
        return text.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")

    def run(self, step: Step) -> None:
        if step.needs:
            self.skipped.append(f"{step}: needs {step.needs}")
        elif step.kind == "python":
            script = self.cwd / f"readme_block_{step.line}.py"
            script.write_text(self._local(step.text))
            self._check(str(step), subprocess.run([sys.executable, str(script)], cwd=self.cwd, env=self.env,
                                                  capture_output=True, text=True, timeout=300))
        elif step.kind == "curl":
            if "127.0.0.1:8000" not in step.text:
                self.skipped.append(f"{step}: a download (the test reads {FACADES_DIR})")
            elif self.server is None:
                self.failures.append(f"{step}: no 'compnn serve' before it")
            else:
                done = subprocess.run(["bash", "-c", self._local(step.text)], cwd=self.cwd, env=self.env,
                                      capture_output=True, text=True, timeout=120)
                if not done.stdout.strip() or '"error"' in done.stdout:
                    done.returncode = done.returncode or 1
                self._check(str(step), done)
        else:
            self.compnn(step)

    def compnn(self, step: Step) -> None:
        argv = expand_ellipsis([_real_path(w) for w in step.argv], self.previous)
        if "..." not in step.argv:
            self.previous[step.argv[1]] = step.argv
        argv = shrink(argv, self.parser)
        self.ran.append(argv)
        if argv[1] == "serve":
            return self.serve(step, argv)
        done = subprocess.run([str(BIN / "compnn"), *argv[1:]], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=300)
        self._check(f"{step}\n  ran: {' '.join(argv)}", done)

    def serve(self, step: Step, argv: list[str]) -> None:
        args = argv[3:]  # after "compnn serve STORE"; the port is the server's free one
        if "--port" in args:
            del args[args.index("--port"):args.index("--port") + 2]
        try:
            self.server = CliServer(argv[2], *args, cwd=self.cwd, env=self.env).__enter__()
            self.port = self.server.port
            self.health_seconds = self.server.seconds_to_health
        except RuntimeError as exc:
            self.failures.append(f"{step}\n  {exc}")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            if TRACEBACK in self.server.output:
                self.failures.append(f"compnn serve printed a traceback:\n  {self.server.output[-1500:]}")


def _steps() -> list[Step]:
    return readme_steps(README.read_text(), {"facades": str(FACADES_DIR), **PATHS})


def _covered(argv: list[str]) -> str:
    return " ".join(argv[1:3]) if argv[1] == "invert" else argv[1]


def test_readme_shows_and_runs_every_cli_command():
    shown = {_covered(s.argv) for s in _steps() if s.kind == "compnn" and not s.needs} | {"demo"}  # make demo
    commands = {c for c in COMMANDS if c != "invert"} | {"invert train", "invert apply"}
    assert commands <= shown, f"README commands the test would run lack {sorted(commands - shown)}"


def test_readme_skips_only_what_it_marks():
    steps = _steps()
    assert [s for s in steps if s.needs], "the README marks its Ray commands [needs: ...]"
    assert all("Ray" in s.needs or "segmentation_models_pytorch" in s.needs for s in steps if s.needs)


def test_every_readme_command_runs(tmp_path):
    if not (FACADES_DIR / "train").is_dir():
        pytest.skip(f"the README's Facades commands need {FACADES_DIR}")
    t0 = time.perf_counter()
    runner = Runner(_workdir(tmp_path))
    demo = _demo_command() + DEMO_SMALL
    runner._check("make demo (" + " ".join(demo) + ")",
                  subprocess.run([str(BIN / "compnn"), *demo[1:]], cwd=tmp_path, env=runner.env,
                                 capture_output=True, text=True, timeout=300))
    try:
        for step in _steps():
            runner.run(step)
    finally:
        runner.stop()
    seconds = time.perf_counter() - t0
    print(f"\nREADME: {len(runner.ran)} compnn commands in {seconds:.1f}s; serve answered /health "
          f"{runner.health_seconds and round(runner.health_seconds, 2)}s after start; skipped:\n  "
          + "\n  ".join(runner.skipped))
    assert not runner.failures, "\n\n".join(runner.failures)
    assert runner.health_seconds is not None and runner.health_seconds < 10
    assert any(a[1] == "serve" for a in runner.ran) and shutil.which("curl")
    assert re.search(r"indexes/facades_seg\b", " ".join(" ".join(a) for a in runner.ran))


# ---------------------------------------------------------------------------- the reader itself
def test_reader_joins_continuations_expands_variables_and_reads_markers():
    text = textwrap.dedent("""\
        ```bash
        F=facades                     # the archive
        compnn train --data $F \\
                     --size 256 --out m.pt   # trained
        # [needs: a Ray cluster]
        compnn serve S --ray auto
        python tools/x.py             # not a compnn command
        ```
        ```python
        print(1)
        ```
        """)
    steps = readme_steps(text, {"facades": "/data/f"})
    assert [s.kind for s in steps] == ["compnn", "compnn", "python"]
    assert steps[0].argv == ["compnn", "train", "--data", "/data/f", "--size", "256", "--out", "m.pt"]
    assert steps[0].needs is None and steps[1].needs == "a Ray cluster" and steps[2].text == "print(1)"


def test_ellipsis_repeats_the_last_full_command_without_its_out_and_the_options_given_again():
    previous = {"build": ["compnn", "build", "--model", "m.pt", "--codec", "fp32", "--out", "a", "--overwrite"]}
    got = expand_ellipsis(["compnn", "build", "...", "--codec", "fp16", "--out", "b"], previous)
    assert got == ["compnn", "build", "--model", "m.pt", "--overwrite", "--codec", "fp16", "--out", "b"]
    with pytest.raises(ValueError, match="follows no full 'compnn query'"):
        expand_ellipsis(["compnn", "query", "..."], previous)


def test_shrink_lowers_scale_options_and_adds_only_what_the_parser_accepts():
    parser = build_parser()
    train = shrink(["compnn", "train", "--data", "d", "--size", "256", "--ngf", "64", "--epochs", "5",
                    "--task", "segment", "--out", "m.pt"], parser)
    assert train == ["compnn", "train", "--data", "d", "--size", "64", "--ngf", "8", "--epochs", "1",
                     "--task", "segment", "--out", "m.pt", "--limit", "16", "--threads", "1"]
    evaluate = shrink(["compnn", "evaluate", "S", "--data", "d", "--limit", "20", "--out", "o"], parser)
    assert evaluate[evaluate.index("--limit") + 1] == "2"  # a test split: two images
    assert shrink(["compnn", "import-pix2pix", "w.pth", "--size", "256", "--out", "m.pt"], parser) == \
        ["compnn", "import-pix2pix", "w.pth", "--size", "256", "--out", "m.pt"]  # the weights fix its size
    assert shrink(["compnn", "invert", "train", "--store", "S", "--layer", "d4", "--epochs", "2", "--out", "i.pt"],
                  parser) == ["compnn", "invert", "train", "--store", "S", "--layer", "d4", "--epochs", "1",
                              "--out", "i.pt", "--limit", "16", "--threads", "1"]  # the nested parser's options
