"""What the API returns: query features, explanations, correspondences, global NN — and how a
result writes itself to disk.

These types sit below the API and above the pictures, so a result can save itself (the same
files ``compnn query`` writes) without importing any job.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from .features import LayerSpec
from .search.field import NNField


@dataclass
class QueryFeatures:
    """One forward pass over a query image: everything a search needs, computed once.

    Attributes
    ----------
    image : float32 (3, H, W) network input.
    logits : float32 (C, H, W) raw network output (tanh image or class logits).
    output : what the network outputs: float32 (3, H, W) image or int64 (H, W) labels.
    hyperpatches : layer -> float32 (Hq, Wq, D) unit vectors.
    global_descriptor : float32 (Dg,) unit vector.
    seconds : time the extraction took.
    """

    image: np.ndarray
    logits: np.ndarray
    output: np.ndarray
    hyperpatches: dict[str, np.ndarray]
    global_descriptor: np.ndarray
    seconds: float = 0.0


@dataclass
class QueryResult:
    """What one query returns.

    Attributes
    ----------
    layer : the layer searched; ``spec`` its LayerSpec.
    field : the NN field (image, y, x, similarity per query feature position).
    shortlist : database image ids searched, best global similarity first;
        ``shortlist_similarity`` their global-descriptor cosine similarity.
    output : the network's own output for the query (float (3, H, W) image or int (H, W) labels).
    reconstructions : source name -> pasted array ("target", "input", "self").
    timings : seconds per stage (features, shortlist, search, compose, total).
    search, params : the search method and its parameters.
    """

    layer: str
    spec: LayerSpec
    field: NNField
    shortlist: np.ndarray
    shortlist_similarity: np.ndarray
    query_input: np.ndarray
    output: np.ndarray
    reconstructions: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    search: str = "exact"
    params: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "layer": self.layer,
            "spec": self.spec.to_dict(),
            "search": self.search,
            "params": self.params,
            "nn_field": self.field.to_dict(),
            "shortlist": [int(i) for i in self.shortlist],
            "shortlist_similarity": [round(float(s), 6) for s in self.shortlist_similarity],
            "timings": {k: round(float(v), 6) for k, v in self.timings.items()},
        }


@dataclass
class Correspondence:
    """Semantic correspondences from image A's hyperpatches to image B's."""

    layer: str
    spec: LayerSpec
    field: NNField  # image id is always 0 (= image B)
    image_a: np.ndarray
    image_b: np.ndarray
    timings: dict = field(default_factory=dict)


@dataclass
class GlobalNN:
    """The global nearest-neighbour baseline: the single most similar training image."""

    image: int
    similarity: float
    by: str
    ranking: np.ndarray
    similarities: np.ndarray


@dataclass
class ActivationPrediction:
    """What :meth:`CompNN.predict_activations` returns.

    Attributes
    ----------
    geometry : the pair's :class:`~compnn_index.features.PairGeometry`.
    field : NN field over the window grid (database windows of the pair).
    shortlist : database images searched; ``global_image`` the global NN (best global descriptor).
    true, compnn, global_nn : target activations (C, H, W): the CNN's, CompNN's prediction and the
        global NN's whole map.
    scores : ``{"compnn": {...}, "global": {...}}`` from
        :func:`compnn_index.activations.activation_scores` (``..._decoder`` for the decoder's own
        channels of a U-Net tap, when the target is a concatenation).
    outputs : ``{"cnn", "compnn", "global"}``: the network's output, and its output when the
        predicted (global NN) activations replace the true ones from the target tap onwards.
    output_agreement : ``{"compnn": {...}, "global": {...}}`` agreement with the CNN's output
        (pixel accuracy and mean IoU for labels, PSNR and L1 for images).
    """

    geometry: Any
    field: NNField
    shortlist: np.ndarray
    global_image: int
    true: np.ndarray
    compnn: np.ndarray
    global_nn: np.ndarray
    scores: dict
    outputs: dict
    output_agreement: dict
    timings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"pair": self.geometry.to_dict(), "shortlist": [int(i) for i in self.shortlist],
                "global_image": int(self.global_image), "scores": self.scores,
                "output_agreement": self.output_agreement,
                "timings": {k: round(float(v), 4) for k, v in self.timings.items()}}


def save_result(result: QueryResult, out_dir: str | os.PathLike, *,
                db_images: Callable[[int], np.ndarray], palette: Any = None,
                name: str = "query") -> dict:
    """Write a query's PNGs and ``result.json`` into ``out_dir``; return the JSON written.

    ``db_images(i)`` gives database image ``i``'s input as a picture (for the correspondence
    map's legend); ``palette`` colours label maps. Everything is rendered into a temporary folder
    first, then moved into ``out_dir`` file by file with ``result.json`` last, so a crash mid-way
    changes nothing and ``result.json`` never describes pictures that are not there.
    Reconstructions from an earlier run with other sources are removed.
    """
    from .pictures import correspondence_map, to_rgb

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix=".compnn-query-", dir=out_dir) as tmp_name:
        tmp = Path(tmp_name)

        def put(fname: str, rgb: np.ndarray | Image.Image) -> None:
            img = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
            img.save(tmp / fname)
            files[fname.rsplit(".", 1)[0]] = fname

        put("input.png", to_rgb(result.query_input, None))
        put("output.png", to_rgb(result.output, palette))
        for src, arr in result.reconstructions.items():
            put(f"reconstruction_{src}.png", to_rgb(arr, palette))
        cmap = correspondence_map(result.field, stride=result.spec.stride, region=result.spec.region,
                                  out_size=result.query_input.shape[1:], db_images=db_images,
                                  query_image=to_rgb(result.query_input, None))
        put("correspondence_map.png", cmap)
        doc = {"name": name, **result.to_json(), "files": files}
        (tmp / "result.json").write_text(json.dumps(doc))
        for stale in out_dir.glob("reconstruction_*.png"):
            if stale.name not in files.values():
                stale.unlink()
        for fname in [*files.values(), "result.json"]:
            os.replace(tmp / fname, out_dir / fname)
    return doc
