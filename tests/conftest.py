"""Fixtures shared by the test modules.

Besides the data fixtures, this builds the session's tiny index stores once: a U-Net (ngf 8) trained
for one epoch on 12 synthetic 64×64 facades, indexed at three decoder layers (so the
coarse-to-fine pyramid has levels), once for label transfer (``task="segment"``, photo → labels)
and once for image translation (``task="translate"``, label map → photo). Tests that need to write
a store build their own from these checkpoints; the shared stores are never modified.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The real Facades data, outside the repository (never copied into it).
FACADES_DIR = REPO_ROOT / ".." / "shared" / "data" / "facades"

#: The shared tiny stores: image size, number of training images, indexed layers (finest first).
TINY_SIZE = 64
TINY_IMAGES = 12
TINY_LAYERS = ("decoder2", "decoder3", "decoder4")


@dataclass(frozen=True)
class TinyIndex:
    """A session-built model checkpoint and the index store built from it."""

    model: Path
    index: Path
    task: str
    direction: str

    def dataset_args(self) -> dict:
        """The ``data``/``size``/``direction`` arguments the store was built with."""
        return dict(data="synthetic", size=TINY_SIZE, direction=self.direction)


def _build_tiny(root: Path, *, task: str, direction: str) -> TinyIndex:
    from compnn_index.jobs import workflows

    common = dict(data="synthetic", size=TINY_SIZE, limit=TINY_IMAGES, direction=direction,
                  threads=1, progress=False)
    model = root / "model.pt"
    workflows.train(task=task, arch="unet", ngf=8, epochs=4, batch_size=2, out=model, **common)
    index = workflows.build(model=model, layers=list(TINY_LAYERS), out=root / "index", **common)
    return TinyIndex(model=model, index=Path(index), task=task, direction=direction)


@pytest.fixture(scope="session")
def facades_dir() -> Path:
    """Path of the real pix2pix Facades folder; skips the test when it is absent."""
    if not (FACADES_DIR / "train").is_dir():
        pytest.skip(f"real Facades data not found at {FACADES_DIR}")
    return FACADES_DIR


@pytest.fixture(scope="session")
def synthetic_small():
    """Eight 64×64 synthetic facades (photo → label map), cheap to build models and indexes on."""
    from compnn_index.data import open_dataset

    return open_dataset("synthetic", size=64, limit=8)


@pytest.fixture(scope="session")
def translate_index(tmp_path_factory) -> TinyIndex:
    """Label map → photo (pix2pix Facades direction BtoA), layers :data:`TINY_LAYERS`."""
    return _build_tiny(tmp_path_factory.mktemp("tiny_translate"), task="translate", direction="BtoA")


@pytest.fixture(scope="session")
def segment_index(tmp_path_factory) -> TinyIndex:
    """Photo → class labels (label transfer, direction AtoB), layers :data:`TINY_LAYERS`."""
    return _build_tiny(tmp_path_factory.mktemp("tiny_segment"), task="segment", direction="AtoB")


@pytest.fixture(scope="session")
def translate_cnn(translate_index):
    """The translation store loaded for queries (one thread: the cores are shared)."""
    from compnn_index.api import CompNN

    return CompNN.load(translate_index.index, threads=1)


@pytest.fixture(scope="session")
def segment_cnn(segment_index):
    """The segmentation store loaded for queries (one thread)."""
    from compnn_index.api import CompNN

    return CompNN.load(segment_index.index, threads=1)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray cluster of 2 CPUs shared by the distributed tests (a start costs seconds);
    skips when Ray is not installed (``pip install 'compnn-index[ray]'``)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'compnn-index[ray]')")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()
