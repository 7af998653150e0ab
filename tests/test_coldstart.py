"""The cold-start measurement (``compnn_index.jobs.coldstart``) times a cold store or says it could not."""
from __future__ import annotations

import gc
import mmap
import os
import shutil

import numpy as np
import pytest

from compnn_index.jobs.coldstart import _evict, _resident, cold_start


def _store_copy(segment_index, tmp_path):
    gc.collect()  # release mappings of stores other tests left in reference cycles
    return shutil.copytree(segment_index.index, tmp_path / "store")


def _evicts(path) -> bool:
    """Whether this filesystem drops a file's clean pages on request (tmpfs does not)."""
    _evict(path)
    return _resident(path)[0] == 0


def test_cold_start_times_a_query_on_an_evicted_layer(segment_index, tmp_path):
    store = _store_copy(segment_index, tmp_path)
    layer = store / "layers" / "decoder2.faiss"
    if not _evicts(layer):
        pytest.skip(f"{layer.parent} is on a filesystem that keeps evicted pages (tmpfs?)")
    doc = cold_start(store, data="synthetic", layer="decoder2", threads=1)
    assert doc["not_cold"] is None
    assert doc["resident_pages_before"] <= 64 < doc["resident_pages_after_query"]
    assert doc["query_seconds"] > 0


def test_cold_start_says_so_when_another_mapping_keeps_the_layer_warm(segment_index, tmp_path):
    store = _store_copy(segment_index, tmp_path)
    layer = store / "layers" / "decoder2.faiss"
    with open(layer, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        pages = np.frombuffer(m, dtype=np.uint8)[:: mmap.PAGESIZE]
        assert int(pages.sum()) >= 0  # fault every page into this process's page tables
        doc = cold_start(store, data="synthetic", layer="decoder2", threads=1)
        del pages
    assert doc["not_cold"] is not None and "stayed in the page cache" in doc["not_cold"]
    assert "decoder2.faiss" in doc["not_cold"]
    assert doc["resident_pages_before"] > max(256, 0.01 * doc["file_pages"])
