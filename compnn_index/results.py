"""What the API returns: query features, explanations, correspondences, global NN — and how a
result shows and writes itself.

These types sit below the API and above the pictures, so a result can draw and save itself (the
same files ``compnn query`` writes) without importing the API or any job. What it needs of the
index store — the palette, class names, the database pictures — comes in a small
:class:`ResultContext` that :class:`compnn_index.api.CompNN` attaches to every result.

In a notebook::

    res = cnn.explain(12, exclude=[12])
    res                      # a short repr: layer, search, timings, top sources
    res.show()               # input, output, reconstructions and the correspondence map
    res.images()["correspondence_map"]   # uint8 (H, W, 3)
    res.save("runs/q12")     # the files `compnn query` writes
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from .features import LayerSpec
from .search.field import NNField


@dataclass
class ResultContext:
    """What a result needs of its index store to draw itself.

    Attributes
    ----------
    palette : uint8 (K, 3) colours of label maps, or None (a default palette is used).
    class_names : names of the K classes, or None (``class i``).
    image_names : database image names, by id.
    db_picture : ``(image_id, kind) -> uint8 (H, W, 3)``: database image ``kind`` ("input",
        "target" or "output") as a picture.
    task : "translate" or "segment".
    input_legend : legend entries of the network's *input* when it is a label map drawn in a
        known palette (labels → photo on Facades), else None.
    """

    palette: Any = None
    class_names: Sequence[str] | None = None
    image_names: Sequence[str] = ()
    db_picture: Callable[[int, str], np.ndarray] | None = None
    task: str = "translate"
    input_legend: Sequence[Any] | None = None

    def picture(self, arr: np.ndarray) -> np.ndarray:
        """An output array (float image or int labels) as uint8 (H, W, 3)."""
        from .pictures import to_rgb

        return to_rgb(np.asarray(arr), self.palette)

    def class_entries(self, *label_maps: np.ndarray) -> list:
        """Legend entries of the classes present in any of ``label_maps`` (none for images)."""
        from .pictures import class_legend

        maps = [np.asarray(m) for m in label_maps if m is not None and np.asarray(m).ndim == 2]
        if not maps:
            return []
        k = len(self.palette) if self.palette is not None else int(max(m.max() for m in maps)) + 1
        present = np.unique(np.concatenate([np.unique(m) for m in maps]))
        return [e for e in class_legend(self.palette, self.class_names, num_classes=k) if e.key in set(present.tolist())]


def _shape(a: np.ndarray) -> str:
    return "×".join(str(int(v)) for v in np.shape(a))


def _seconds(timings: dict) -> str:
    parts = [f"{k} {float(v):.3g}s" for k, v in timings.items() if k != "total"]
    total = f"{float(timings['total']):.3g}s" if "total" in timings else ""
    return total + (f" ({', '.join(parts)})" if parts else "")


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _show(pictures: dict[str, np.ndarray], title: str, *, figsize=None):
    """A matplotlib figure of the pictures side by side (the correspondence map on a row of its own)."""
    import matplotlib.pyplot as plt

    wide = {k: v for k, v in pictures.items() if v.shape[1] > 1.5 * v.shape[0]}
    small = {k: v for k, v in pictures.items() if k not in wide}
    rows = (1 if small else 0) + len(wide)
    fig = plt.figure(figsize=figsize or (max(2.6 * len(small), 8), 3.0 * rows + 0.4), constrained_layout=True)
    sub = fig.subfigures(rows, 1, squeeze=False)[:, 0] if rows > 1 else [fig]
    r = 0
    if small:
        axes = sub[0].subplots(1, len(small), squeeze=False)[0]
        for ax, (name, img) in zip(axes, small.items()):
            ax.imshow(img, interpolation="nearest")
            ax.set_title(name.replace("_", " "), fontsize=10)
            ax.axis("off")
        r = 1
    for name, img in wide.items():
        ax = sub[r].subplots()
        ax.imshow(img, interpolation="nearest")
        ax.set_title(name.replace("_", " "), fontsize=10)
        ax.axis("off")
        r += 1
    fig.suptitle(title, fontsize=10)
    return fig


class _Shows:
    """``show()`` and ``_repr_png_`` from :meth:`images` (mixed into the result types)."""

    def images(self) -> dict[str, np.ndarray]:  # pragma: no cover - overridden
        raise NotImplementedError

    def summary(self) -> str:
        return repr(self)

    def show(self, **kwargs):
        """Draw :meth:`images` with matplotlib; returns the figure."""
        return _show(self.images(), self.summary(), **kwargs)

    def _repr_png_(self) -> bytes:
        """What a notebook shows: :meth:`images` in one captioned row (PIL, no matplotlib)."""
        from .pictures import grid

        pics = self.images()
        row = [p for p in pics.values()]
        return _png(grid([row], [n.replace("_", " ") for n in pics], font_size=12))


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
    hyperpatch_norms : layer -> float32 (Hq, Wq) window norms before normalisation (what fused
        exact search needs; empty when not extracted).
    """

    image: np.ndarray
    logits: np.ndarray
    output: np.ndarray
    hyperpatches: dict[str, np.ndarray]
    global_descriptor: np.ndarray
    seconds: float = 0.0
    hyperpatch_norms: dict = field(default_factory=dict)


@dataclass(repr=False)
class QueryResult(_Shows):
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
    exclude: tuple = ()
    context: ResultContext | None = field(default=None, compare=False)

    def top_sources(self, n: int = 5) -> list[tuple[int, float]]:
        """The ``n`` database images most positions were matched to, with their share of positions."""
        ids, counts = np.unique(np.asarray(self.field.image), return_counts=True)
        order = np.lexsort((ids, -counts))[:n]
        return [(int(ids[i]), float(counts[i] / max(counts.sum(), 1))) for i in order]

    def __repr__(self) -> str:
        out = "labels " + _shape(self.output) if np.asarray(self.output).ndim == 2 else "image " + _shape(self.output)
        params = {k: v for k, v in self.params.items() if k != "top_k"}
        tops = ", ".join(f"#{i} {s:.0%}" for i, s in self.top_sources(5))
        lines = [
            f"QueryResult(layer={self.layer!r} (stride {self.spec.stride}, {self.spec.region}×{self.spec.region} px), "
            f"search={self.search!r}{' ' + str(params) if params else ''}, top_k={len(self.shortlist)}"
            + (f", exclude={list(self.exclude)}" if len(self.exclude) else "") + ",",
            f"  field {_shape(self.field.image)} positions, mean similarity {float(np.mean(self.field.similarity)):.3f}; "
            f"output {out}; reconstructions {list(self.reconstructions)},",
            f"  top sources {tops}; shortlist {[int(i) for i in self.shortlist[:5]]}"
            + ("…" if len(self.shortlist) > 5 else "") + ",",
            f"  timings {_seconds(self.timings)})",
        ]
        return "\n".join(lines)

    def _ctx(self) -> ResultContext:
        return self.context or ResultContext(task="segment" if np.asarray(self.output).ndim == 2 else "translate")

    def correspondence_map(self, *, max_sources: int = 8):
        """The correspondence map (PIL image with a ``legend``); needs the index's context."""
        from .pictures import correspondence_map, to_rgb

        ctx = self._ctx()
        if ctx.db_picture is None:
            raise TypeError("this result has no index context (it was not made by CompNN.explain); "
                            "use CompNN.save(result, dir) or pictures.correspondence_map")
        pasted = "target" if "target" in self.reconstructions or not self.reconstructions else next(iter(self.reconstructions))
        kind = {"target": "target", "input": "input", "self": "output"}[pasted]
        classes = ctx.class_entries(self.output) if kind != "input" else (ctx.input_legend or [])
        names = list(ctx.image_names) or None
        return correspondence_map(
            self.field, stride=self.spec.stride, region=self.spec.region,
            out_size=self.query_input.shape[1:], db_images=lambda i: ctx.db_picture(int(i), kind),
            query_image=ctx.picture(self.output) if kind != "input" else to_rgb(self.query_input, None),
            names=names, max_sources=max_sources, class_entries=classes or None)

    def images(self) -> dict[str, np.ndarray]:
        """Every picture of the result as uint8 (H, W, 3) RGB: ``input``, ``output``,
        ``reconstruction_<source>`` (label maps coloured with the index's palette) and, with the
        index's context, ``correspondence_map``."""
        from .pictures import to_rgb

        ctx = self._ctx()
        pics = {"input": to_rgb(np.asarray(self.query_input), None), "output": ctx.picture(self.output)}
        for src, arr in self.reconstructions.items():
            pics[f"reconstruction_{src}"] = to_rgb(np.asarray(arr), None) if src == "input" else ctx.picture(arr)
        if ctx.db_picture is not None:
            pics["correspondence_map"] = np.asarray(self.correspondence_map())
        return pics

    def save(self, out_dir: str | os.PathLike, *, name: str = "query") -> dict:
        """Write the PNGs and ``result.json`` that ``compnn query`` writes; return the JSON."""
        return save_result(self, out_dir, name=name)

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
            **({"exclude": [int(i) for i in self.exclude]} if len(self.exclude) else {}),
        }


@dataclass(repr=False)
class Correspondence(_Shows):
    """Semantic correspondences from image A's hyperpatches to image B's."""

    layer: str
    spec: LayerSpec
    field: NNField  # image id is always 0 (= image B)
    image_a: np.ndarray
    image_b: np.ndarray
    timings: dict = field(default_factory=dict)
    context: ResultContext | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        return (f"Correspondence(layer={self.layer!r} (stride {self.spec.stride}, "
                f"{self.spec.region}×{self.spec.region} px), image_a {_shape(self.image_a)} → image_b "
                f"{_shape(self.image_b)}, field {_shape(self.field.image)} positions, mean similarity "
                f"{float(np.mean(self.field.similarity)):.3f}, timings {_seconds(self.timings)})")

    def images(self) -> dict[str, np.ndarray]:
        """``image_a``, ``image_b`` and ``correspondence`` (lines joining matched points), uint8 RGB."""
        from .pictures import correspondence_pairs, to_rgb

        a, b = to_rgb(np.asarray(self.image_a), None), to_rgb(np.asarray(self.image_b), None)
        pairs = correspondence_pairs(a, b, self.field, stride=self.spec.stride, region=self.spec.region)
        return {"image_a": a, "image_b": b, "correspondence": np.asarray(pairs)}

    def to_json(self) -> dict:
        return {"layer": self.layer, "spec": self.spec.to_dict(), "nn_field": self.field.to_dict(),
                "timings": {k: round(float(v), 6) for k, v in self.timings.items()}}

    def save(self, out_dir: str | os.PathLike, *, name: str = "correspond") -> dict:
        """Write ``image_a.png``, ``image_b.png``, ``correspondence.png`` and ``result.json``."""
        return _save_pictures(self.images(), {"name": name, **self.to_json()}, out_dir)


@dataclass(repr=False)
class GlobalNN(_Shows):
    """The global nearest-neighbour baseline: the single most similar training image."""

    image: int
    similarity: float
    by: str
    ranking: np.ndarray
    similarities: np.ndarray
    context: ResultContext | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        ctx = self.context
        name = f" ({ctx.image_names[self.image]})" if ctx is not None and self.image < len(ctx.image_names) else ""
        top = ", ".join(f"#{int(i)} {float(s):.3f}" for i, s in zip(self.ranking[:5], self.similarities[:5]))
        return (f"GlobalNN(by={self.by!r}: image #{self.image}{name}, similarity {self.similarity:.4f}; "
                f"top {top}{'…' if len(self.ranking) > 5 else ''} of {len(self.ranking)} candidates)")

    def images(self) -> dict[str, np.ndarray]:
        """The nearest training image's ``input`` and ``target`` (needs the index's context)."""
        if self.context is None or self.context.db_picture is None:
            raise TypeError("this result has no index context (it was not made by CompNN.global_nn)")
        return {kind: self.context.db_picture(self.image, kind) for kind in ("input", "target")}

    def to_json(self) -> dict:
        return {"image": self.image, "similarity": self.similarity, "by": self.by,
                "ranking": [int(i) for i in self.ranking],
                "similarities": [round(float(s), 6) for s in self.similarities]}


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


def _save_pictures(pictures: dict, doc: dict, out_dir: str | os.PathLike, *,
                   stale_glob: str | None = None) -> dict:
    """Write ``pictures`` (name -> RGB) as PNGs and ``doc`` (with a ``files`` entry) as ``result.json``.

    Everything is rendered into a temporary folder first, then moved into ``out_dir`` file by
    file with ``result.json`` last, so a crash mid-way changes nothing and ``result.json`` never
    describes pictures that are not there. Files matching ``stale_glob`` that this run did not
    write are removed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {n: f"{n}.png" for n in pictures}
    doc = {**doc, "files": files}
    with tempfile.TemporaryDirectory(prefix=".compnn-query-", dir=out_dir) as tmp_name:
        tmp = Path(tmp_name)
        for n, rgb in pictures.items():
            (rgb if isinstance(rgb, Image.Image) else Image.fromarray(np.asarray(rgb))).save(tmp / files[n])
        (tmp / "result.json").write_text(json.dumps(doc))
        if stale_glob:
            for stale in out_dir.glob(stale_glob):
                if stale.name not in files.values():
                    stale.unlink()
        for fname in [*files.values(), "result.json"]:
            os.replace(tmp / fname, out_dir / fname)
    return doc


def save_result(result: QueryResult, out_dir: str | os.PathLike, *,
                db_images: Callable[[int], np.ndarray] | None = None, palette: Any = None,
                name: str = "query") -> dict:
    """Write a query's PNGs and ``result.json`` into ``out_dir``; return the JSON written.

    The pictures are :meth:`QueryResult.images` (input, output, reconstructions, correspondence
    map) drawn with the result's :class:`ResultContext`. ``db_images(i)`` (database image ``i``'s
    pasted picture) and ``palette`` override the context's, for results made without one.
    Reconstructions from an earlier run with other sources are removed.
    """
    if db_images is not None or palette is not None:
        ctx = result.context or ResultContext()
        db = (lambda i, kind: np.asarray(db_images(i))) if db_images is not None else ctx.db_picture
        result = _with_context(result, ResultContext(
            palette=palette if palette is not None else ctx.palette, class_names=ctx.class_names,
            image_names=ctx.image_names, db_picture=db, task=ctx.task, input_legend=ctx.input_legend))
    if result._ctx().db_picture is None:
        raise TypeError("save_result: the result has no index context; pass db_images=")
    pics = result.images()
    return _save_pictures(pics, {"name": name, **result.to_json()}, out_dir,
                          stale_glob="reconstruction_*.png")


def _with_context(result: QueryResult, ctx: ResultContext) -> QueryResult:
    from dataclasses import replace

    return replace(result, context=ctx)
