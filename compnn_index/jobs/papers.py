"""The two CompNN papers' published Facades figures, which of our rows they belong to, and the
claims our per-image statistics can support or contradict.

The figures are transcribed in ``../shared/PAPERS_TABLES.md``: "ICLR" (*Do Convolutional Neural
Networks act as Compositional Nearest Neighbors?*, Table 1: absolute pixel accuracy / mIoU vs
ground truth) and "ECCV-W" (Fragoso et al., *Patch Correspondences for Interpreting Pixel-level
CNNs*, Table 1: differences from the CNN; Table 2: input-reconstruction MPA). They are Facades
figures: a paper column is filled only when the store was built on the papers' Facades (the
pix2pix ``facades`` folder, :func:`papers_dataset`), for the task and direction the paper ran
(photo → labels for Table 1, labels → photo for Table 2) and the layer it searched (decoder2).
A store of synthetic facades, CamVid or anything else gets empty (None) paper cells: comparing
its figures with Facades' would be meaningless.

ICLR's Table 1 does not state its shortlist size, so its CompNN figure sits beside every top-k
row. ECCV-W's OR rows paste the training labels (our ``source: "original"``); it searched with
HyperPatch-Match, so its figures sit beside both ``compnn`` and ``compnn_hpm`` rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Mapping

#: The papers' Facades Table 1, ICLR (absolute, vs ground truth): (method, source) -> (PA, mIoU).
#: Our ``global_layer`` (decoder2's aligned hyperpatches) is its "Global Decode2 NN".
ICLR_TABLE1 = {
    ("cnn", None): (0.545, 0.157),
    ("compnn", "self_supervised"): (0.505, 0.137), ("compnn", "original"): (0.493, 0.134),
    ("global_bottleneck", "self_supervised"): (0.324, 0.057), ("global_bottleneck", "original"): (0.381, 0.065),
    ("global_layer", "self_supervised"): (0.387, 0.087), ("global_layer", "original"): (0.393, 0.090),
}
#: ECCV-W Table 1: the CNN's own (absolute) figures, the base of its differences.
ECCVW_CNN = (0.5105, 0.2218)
#: ECCV-W Table 1 differences from the CNN: (method, source, top-k) -> (Δ PA, Δ mIoU).
#: GR (Bottleneck) = our global_bottleneck, GR (FC7) = global_penultimate, OR = CompNN (original).
ECCVW_TABLE1_DELTA = {
    ("global_bottleneck", "original", None): (-0.1963, -0.1437),
    ("global_penultimate", "original", None): (-0.1730, -0.1126),
    ("compnn", "original", 1): (-0.0102, -0.0253), ("compnn", "original", 16): (0.0324, 0.0214),
    ("compnn", "original", 32): (0.0336, 0.0232), ("compnn", "original", 64): (0.0343, 0.0246),
}
#: ECCV-W Table 2: input-reconstruction MPA of the labels -> photo network, per top-k.
ECCVW_TABLE2_MPA = {1: 0.723, 16: 0.837, 32: 0.844, 64: 0.846}
#: The layer both papers search on pix2pix.
PAPER_LAYER = "decoder2"
#: Paper columns of a row (all None unless the row belongs to a paper's Facades table).
PAPER_KEYS = ("paper_pixel_accuracy", "paper_mean_iou", "paper_delta_pixel_accuracy", "paper_delta_mean_iou")


def papers_dataset(identity: Mapping[str, Any] | None) -> str | None:
    """``"facades"`` when a store's dataset identity is the papers' Facades, else None.

    The papers' Facades is the pix2pix ``facades`` archive: a pix2pix-layout folder
    (``kind: "pix2pix"``) named ``facades``. Synthetic facades (``kind: "synthetic"``) are not
    it, whatever they resemble.
    """
    if not isinstance(identity, Mapping) or identity.get("kind") != "pix2pix" or not identity.get("path"):
        return None
    return "facades" if PurePath(str(identity["path"])).name.lower() == "facades" else None


@dataclass(frozen=True)
class PaperContext:
    """What decides whether a row has a paper figure: the store's dataset, task, direction, layer."""

    dataset: str | None
    task: str | None = None
    direction: str | None = None
    layer: str | None = None

    @classmethod
    def of_store(cls, manifest: Mapping[str, Any], layer: str | None) -> "PaperContext":
        ds = manifest.get("dataset") or {}
        return cls(papers_dataset(ds), manifest.get("task") or ds.get("task"), ds.get("direction"), layer)

    @property
    def table1(self) -> bool:
        """Facades photo -> labels at decoder2: ICLR and ECCV-W Table 1."""
        return (self.dataset == "facades" and self.task == "segment" and self.direction == "AtoB"
                and self.layer == PAPER_LAYER)

    @property
    def table2(self) -> bool:
        """Facades labels -> photo at decoder2: ECCV-W Table 2."""
        return (self.dataset == "facades" and self.task == "translate" and self.direction == "BtoA"
                and self.layer == PAPER_LAYER)


def paper_figures(row: Mapping[str, Any], context: PaperContext) -> dict[str, float | None]:
    """The paper columns of one ``evaluate`` row: ICLR's absolute ``paper_pixel_accuracy`` /
    ``paper_mean_iou``, ECCV-W's ``paper_delta_*`` (the CNN row: ``paper_eccvw_*``, its absolute
    figures) and, for input-reconstruction rows, ECCV-W Table 2's ``paper_mpa``. None where no
    paper prints a figure for the row, and always None off the papers' Facades."""
    out: dict[str, float | None] = dict.fromkeys(PAPER_KEYS)
    method = "compnn" if row.get("method") == "compnn_hpm" else row.get("method")
    if row.get("vs") == "input_labels":
        out["paper_mpa"] = ECCVW_TABLE2_MPA.get(row.get("top_k")) if context.table2 and method == "compnn" else None
        return out
    if not context.table1 or row.get("vs") != "ground_truth":
        return out
    iclr = ICLR_TABLE1.get((method, row.get("source")))
    if iclr:
        out["paper_pixel_accuracy"], out["paper_mean_iou"] = iclr
    key = (method, row.get("source"), row.get("top_k") if method == "compnn" else None)
    if key in ECCVW_TABLE1_DELTA:
        out["paper_delta_pixel_accuracy"], out["paper_delta_mean_iou"] = ECCVW_TABLE1_DELTA[key]
    if method == "cnn":
        out["paper_eccvw_pixel_accuracy"], out["paper_eccvw_mean_iou"] = ECCVW_CNN
    return out


@dataclass(frozen=True)
class Claim:
    """A difference a paper prints between two of our rows (``a`` minus ``b``, vs ground truth).

    Row keys are ``(method, top_k, source)``; ``paper`` the difference it prints (its sign is
    the claim).
    """

    id: str
    text: str
    source: str
    a: tuple
    b: tuple
    metric: str
    paper: float


def claims(top_ks: list[int]) -> list[Claim]:
    """The Table 1 claims that a run with these top-k values can test: every "CompNN vs CNN" and
    "CompNN vs global NN" difference the two papers print, for pixel accuracy and mIoU.

    ICLR's CompNN rows are compared at top-16 (the largest top-k when 16 was not run): the paper
    does not state its shortlist.
    """
    out: list[Claim] = []
    iclr_k = 16 if 16 in top_ks else max(top_ks)
    cnn = ("cnn", None, None)
    for m, metric in enumerate(("pixel_accuracy", "mean_iou")):
        short = "PA" if m == 0 else "mIoU"
        for src, tag in (("self_supervised", "SS"), ("original", "O")):
            a = ("compnn", iclr_k, src)
            out.append(Claim(f"iclr_compnn_{tag}_vs_cnn_{short}", f"CompNN ({tag}, top-{iclr_k}) vs CNN, {short}",
                             "ICLR Table 1", a, cnn, metric,
                             round(ICLR_TABLE1[("compnn", src)][m] - ICLR_TABLE1[("cnn", None)][m], 4)))
            for g, gname in (("global_bottleneck", "global bottleneck NN"), ("global_layer", "global decoder2 NN")):
                out.append(Claim(f"iclr_compnn_{tag}_vs_{g}_{short}", f"CompNN ({tag}, top-{iclr_k}) vs {gname} ({tag}), {short}",
                                 "ICLR Table 1", a, (g, None, src), metric,
                                 round(ICLR_TABLE1[("compnn", src)][m] - ICLR_TABLE1[(g, src)][m], 4)))
        for k in (k for k in (1, 16, 32, 64) if k in top_ks):
            d = ECCVW_TABLE1_DELTA[("compnn", "original", k)][m]
            out.append(Claim(f"eccvw_compnn_top{k}_vs_cnn_{short}", f"CompNN OR (top-{k}) vs CNN, {short}",
                             "ECCV-W Table 1", ("compnn", k, "original"), cnn, metric, d))
            for g, gname in (("global_bottleneck", "GR (bottleneck)"), ("global_penultimate", "GR (FC7)")):
                if k != iclr_k:
                    continue
                gd = ECCVW_TABLE1_DELTA[(g, "original", None)][m]
                out.append(Claim(f"eccvw_compnn_top{k}_vs_{g}_{short}", f"CompNN OR (top-{k}) vs {gname}, {short}",
                                 "ECCV-W Table 1", ("compnn", k, "original"), (g, None, "original"), metric,
                                 round(d - gd, 4)))
    return out
