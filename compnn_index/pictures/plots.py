"""Plots: quality against throughput (as ann-benchmarks draws it), and a training's loss curve.

Two panels share the y axis (queries per second, log scale): similarity ratio to exact search
and fidelity (the reconstruction's agreement with the CNN). Each method is one line of labelled
points (its parameter: iterations, efSearch, nprobe), exact search is a star, and the Pareto
front — the fastest setting at each quality — is drawn dashed over all of them.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

#: Short labels of the parameter that varies along each method's line.
_POINT_PARAM = {"patchmatch": ("iterations", "it"), "hnsw": ("efSearch", "ef"), "ivf": ("nprobe", "nprobe")}
_NAMES = {"patchmatch": "HyperPatch-Match", "hnsw": "FAISS HNSW", "ivf": "FAISS IVF-Flat"}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (quality, qps) points no other point beats on both, by decreasing quality."""
    front, best_qps = [], float("-inf")
    for q, v in sorted(points, key=lambda p: (-p[0], -p[1])):
        if v > best_qps:
            front.append((q, v))
            best_qps = v
    return front


def _label(row: dict) -> str:
    key, short = _POINT_PARAM.get(row["method"], (None, None))
    params = row.get("params", {})
    return f"{short}={params[key]}" if key in params else ",".join(f"{a}={b}" for a, b in params.items())


def quality_vs_throughput(doc: dict, path: str | Path | None = None):
    """Draw ``compnn compare``'s document (``comparison.json``); save to ``path`` if given.

    Returns the matplotlib figure.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fidelity = "label-transfer pixel accuracy vs CNN" if doc.get("task") == "segment" else "PSNR vs CNN (dB)"
    metrics = [("similarity_ratio", "similarity ratio to exact search"), ("fidelity", f"fidelity: {fidelity}")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), dpi=110, sharey=True)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in doc["settings"]:
        name = _NAMES.get(r["method"], r["method"])
        if r["method"] == "patchmatch" and "init" in r.get("params", {}):
            name += f" ({r['params']['init']})"
        groups[(name, r["top_k"])].append(r)
    several_k = len({k for _, k in groups}) > 1
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (metric, title) in zip(axes, metrics):
        every = []
        for i, ((name, k), rows) in enumerate(sorted(groups.items())):
            key, _ = _POINT_PARAM.get(rows[0]["method"], (None, None))
            rows = sorted(rows, key=lambda r: (r.get("params", {}).get(key, 0), r[metric]))
            xs = [r[metric] for r in rows]
            ys = [1.0 / r["seconds_per_query"] if r["seconds_per_query"] > 0 else float("nan") for r in rows]
            every += list(zip(xs, ys))
            c = colours[i % len(colours)]
            ax.plot(xs, ys, marker="o", color=c, label=name + (f", top-{k}" if several_k else ""))
            for x, y, r in zip(xs, ys, rows):
                ax.annotate(_label(r), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=c)
        for k, e in doc["exact"]["by_top_k"].items():
            x = 1.0 if metric == "similarity_ratio" else e["fidelity"]
            y = 1.0 / e["seconds_per_query"]
            every.append((x, y))
            ax.scatter([x], [y], marker="*", s=180, color="black", zorder=5,
                       label=f"exact search{f', top-{k}' if several_k else ''}")
            ax.annotate("exact", (x, y), textcoords="offset points", xytext=(-30, -12), fontsize=8)
        front = pareto_front([p for p in every if p[1] == p[1]])
        if len(front) > 1:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", linestyle="--",
                    color="0.3", linewidth=1, label="Pareto front", zorder=1)
        ax.set_yscale("log")
        ax.set_xlabel(title + " →  better")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("queries per second (log) ↑  faster\n(ANN index build time excluded)")
    handles, labels = axes[0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=min(len(uniq), 5), fontsize=8,
               frameon=False)
    fig.suptitle(f"Quality vs throughput: layer {doc['layer']}, {doc['queries']} "
                 f"quer{'y' if doc['queries'] == 1 else 'ies'}", fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    if path is not None:
        fig.savefig(path)
        plt.close(fig)
    return fig


def loss_curve(losses: Sequence[float], minutes: Sequence[float], path: str | Path | None = None, *,
               title: str = "training loss"):
    """A training's loss per epoch (bottom axis) with its training minutes (top axis).

    Written beside a checkpoint by ``compnn train`` after every epoch, so a long run can be
    judged (still falling? flat?) without reading its log. Returns the matplotlib figure.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = list(range(1, len(losses) + 1))
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(epochs, list(losses), marker="o" if len(epochs) <= 50 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean loss")
    ax.grid(True, alpha=0.3)
    if len(epochs) >= 2 and len(minutes) == len(epochs):
        top = ax.secondary_xaxis("top", functions=(
            lambda e: np.interp(e, epochs, list(minutes)), lambda m: np.interp(m, list(minutes), epochs)))
        top.set_xlabel("training minutes")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{title}: {len(epochs)} epochs, {minutes[-1] if minutes else 0:.1f} min", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
        plt.close(fig)
    return fig
