"""The house refactor changed no answer: NN fields of a fixed store, byte for byte, as before it.

The digests were computed with the code before the refactor (commit a504e5c) by the same
procedure; the store is built from a seeded, untrained U-Net on seeded synthetic data, so the
only thing that can move them is a change in extraction, shortlisting or search. Exact search is
pinned on its reference method (FAISS, ``exact_method="faiss"``); the fused pixel-level method and
the bounded method (the default where a store has a screen) round differently and are checked
against it to 1e-5.
Float results
of torch's CPU kernels depend on the instruction set torch picks, so the digests are checked on
the capability they were recorded on (AVX2) and skipped elsewhere.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from compnn_index.api import CompNN
from compnn_index.data import open_dataset
from compnn_index.index import build_index
from compnn_index.models import build_model
from compnn_index.options import QueryOptions

RECORDED_ON = "AVX2"
PINNED = {"exact": "1d1e560af5fbbd83", "patchmatch": "eb1fddbd77973275", "coarse": "0210092d01a5e8e9"}


def _digest(field) -> str:
    h = hashlib.sha256()
    for a in (field.image, field.y, field.x, field.similarity):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != RECORDED_ON,
                    reason=f"digests recorded with torch CPU capability {RECORDED_ON}")
def test_nn_fields_are_byte_identical_to_before_the_refactor(tmp_path):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = open_dataset("synthetic", size=64, limit=6, seed=0)
        model = build_model("unet", task="translate", ngf=8, size=64, seed=0).eval()
        build_index(model, ds, layers=["decoder2", "decoder3"], out=tmp_path / "s", progress=False, threads=1)
        cnn = CompNN.load(tmp_path / "s", model=model, threads=1)
        q = open_dataset("synthetic", split="test", size=64, limit=1, seed=0)[0].input
        got = {
            "exact": cnn.explain(q, layer="decoder2", top_k=4, options=QueryOptions(exact_method="faiss")).field,
            "patchmatch": cnn.explain(q, layer="decoder2", top_k=6, search="patchmatch", iterations=4,
                                      samples=3, jumps=2, seed=5, init="staged").field,
            "coarse": cnn.explain(q, layer="decoder2", top_k=6, search="patchmatch", iterations=3,
                                  samples=2, jumps=1, seed=1, init="coarse",
                                  options=QueryOptions(exact_method="faiss")).field,
        }
        fused = cnn.explain(q, layer="decoder2", top_k=4, options=QueryOptions(exact_method="fused"))
        bounded = cnn.explain(q, layer="decoder2", top_k=4)  # auto: the store has a screen
    finally:
        torch.set_num_threads(previous)
    assert {k: _digest(f) for k, f in got.items()} == PINNED
    assert fused.params["exact_method"] == "fused"
    np.testing.assert_allclose(fused.field.similarity, got["exact"].similarity, atol=1e-5, rtol=0)
    same = (fused.field.image == got["exact"].image) & (fused.field.y == got["exact"].y) & (fused.field.x == got["exact"].x)
    assert same.mean() > 0.99  # the rest are near-exact ties
    assert bounded.params["exact_method"] == "bounded"
    np.testing.assert_allclose(bounded.field.similarity, got["exact"].similarity, atol=1e-5, rtol=0)
