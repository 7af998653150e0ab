"""Human names for the keys of ``evaluate``'s and ``compare``'s rows (the JSON keeps the keys).

Used by the Markdown tables and the demo report, so a reader sees "pixel accuracy", "CompNN"
and "compared with: CNN output" where ``results.json`` says ``pixel_accuracy``, ``compnn`` and
``"vs": "cnn"``.
"""
from __future__ import annotations

from typing import Any

#: Column key -> header.
HEADERS = {
    "method": "method", "top_k": "top-k", "source": "pasted from", "vs": "compared with",
    "pixel_accuracy": "pixel accuracy", "mean_iou": "mean IoU", "l1": "L1 (lower is better)",
    "psnr": "PSNR dB", "params": "parameters", "seconds_per_query": "s / query",
    "queries_per_second": "queries / s", "speedup": "speed-up", "recall_at_1": "recall@1",
    "similarity_ratio": "similarity ratio", "agreement": "agreement with exact", "fidelity": "fidelity",
    "fidelity_delta": "Δ fidelity vs exact", "build_seconds": "ANN build s",
}
#: Value names per column.
VALUES = {
    "method": {"cnn": "CNN", "compnn": "CompNN", "global_bottleneck": "global NN (bottleneck)",
               "global_last": "global NN (last layer = network output)", "exact": "exact search",
               "patchmatch": "HyperPatch-Match", "hnsw": "FAISS HNSW", "ivf": "FAISS IVF-Flat"},
    "source": {"original": "training labels / outputs", "self_supervised": "network's own outputs",
               "input": "training inputs"},
    "vs": {"ground_truth": "ground truth", "cnn": "CNN output", "input_labels": "input label map"},
}


def header(key: str) -> str:
    """The column header of ``key``."""
    return HEADERS.get(key, key.replace("_", " "))


def value(key: str, v: Any) -> str:
    """A cell: named values by their name, floats to 4 places, None as empty."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return VALUES.get(key, {}).get(str(v), str(v))
