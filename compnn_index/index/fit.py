"""What a build fits before it writes anything: the ``sq8`` ranges and the screen bases.

Both come from one sample of whole images spread evenly over the dataset
(:func:`layer_sample`). A plain build fits them itself (:func:`fit_sample`). A sharded build
fits them **once, in the driver, over the whole dataset** and hands the same
:class:`BuildFit` to every shard's :func:`~compnn_index.index.build.build_index` (its
``fitted=`` keyword), for two reasons:

- cost: the sample pass (a forward pass over ~17 images at 128 px, 34 for ``sq8``) and the fit
  are a build's fixed cost; four shards that each fitted their own repeated it four times on
  the same cores (the 4-shard Ray build took 0.51x the time of one process, issue 23);
- sameness: every shard's screen then projects on the same basis and every ``sq8`` shard
  decodes with the same ranges, the ones an unsharded build of the same dataset would fit. A
  shard's own fit would be a valid screen too (any orthonormal basis bounds correctly), but it
  would depend on where the shard boundaries fall.

A resumed sharded build reloads the fit it saved (:meth:`BuildFit.save` in its work folder), so
shards built before and after an interruption share it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import IndexStoreError
from .memory import available_memory_bytes
from .codecs import SQ_TRAIN_ROWS, check_codec, n_trained, roundtrip, train_codec
from .screen import FIT_ROWS, fit_screen


@dataclass(frozen=True)
class LayerFit:
    """One layer's fitted values.

    Attributes
    ----------
    trained : ndarray of float32
        The codec's trained values (``sq8``: ``vmin[d]`` then ``vdiff[d]``; empty otherwise).
    basis : ndarray of float32, shape (d, width - 1), or None
        The screen basis (None when the build writes no screen).
    energy : float or None
        Mean fraction of a sampled vector's energy the basis holds (the manifest's ``energy``).
    """

    trained: np.ndarray
    basis: np.ndarray | None
    energy: float | None


@dataclass(frozen=True)
class BuildFit:
    """The fitted values of every layer of a build of ``codec`` with a ``screen``-wide screen."""

    codec: str
    screen: int
    layers: Mapping[str, LayerFit]

    def digest(self) -> str:
        """SHA-256 over the codec, the width and every layer's arrays (which fit a shard used)."""
        h = hashlib.sha256(f"{self.codec}|{self.screen}".encode())
        for name in sorted(self.layers):
            f = self.layers[name]
            h.update(name.encode() + b"\0")
            h.update(np.ascontiguousarray(f.trained, dtype="<f4").tobytes())
            if f.basis is not None:
                h.update(np.ascontiguousarray(f.basis, dtype="<f4").tobytes())
        return h.hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``path`` (``.npz``) through a temporary file renamed into place."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {"codec": np.array(self.codec), "screen": np.array(self.screen),
                                         "names": np.array(list(self.layers))}
        for i, (name, f) in enumerate(self.layers.items()):
            arrays[f"trained_{i}"] = np.asarray(f.trained, dtype=np.float32)
            if f.basis is not None:
                arrays[f"basis_{i}"] = np.asarray(f.basis, dtype=np.float32)
                arrays[f"energy_{i}"] = np.array(f.energy, dtype=np.float64)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BuildFit":
        """Read what :meth:`save` wrote; IndexStoreError naming the file if it cannot."""
        try:
            with np.load(path, allow_pickle=False) as z:
                layers = {}
                for i, name in enumerate(z["names"].tolist()):
                    basis = z[f"basis_{i}"] if f"basis_{i}" in z else None
                    layers[str(name)] = LayerFit(z[f"trained_{i}"], basis,
                                                 float(z[f"energy_{i}"]) if basis is not None else None)
                return cls(str(z["codec"]), int(z["screen"]), layers)
        except (OSError, ValueError, KeyError) as exc:
            raise IndexStoreError(f"the build's fit {os.fspath(path)!r} cannot be read: {exc}") from None


def sample_rows_needed(codec: str, screen: int) -> int:
    """Vectors per layer the sample must hold: the ``sq8`` training rows, the screen's fit rows."""
    return max(SQ_TRAIN_ROWS if n_trained(codec, 1) else 0, FIT_ROWS if screen else 0)


# What a build may hold on to of its sample pass, so that the sampled images are not forward-
# passed a second time when they are written (at most this, and an eighth of available memory).
REUSE_BYTES = 512 << 20


class SamplePass:
    """The extractor's results for the images the sample forward-passed, kept for the write.

    The sample pass is a build's fixed cost; keeping its per-image results (the image, the
    network's output, the hyperpatches and their norms, the global descriptor) lets the write
    take them instead of forward-passing those images again (issue 23: a 200-image ``sq8``
    build spent 1 s of its 7.4 s on the second pass). :meth:`take` hands each image out once,
    so the memory is returned as the write passes it.
    """

    def __init__(self) -> None:
        self._kept: dict[int, tuple] = {}
        self.bytes = 0

    def keep(self, index: int, sample: Any, outputs: np.ndarray, patches: Mapping[str, np.ndarray],
             gdesc: np.ndarray, norms: Mapping[str, np.ndarray]) -> None:
        item = (sample, outputs, dict(patches), gdesc, dict(norms))
        self._kept[int(index)] = item
        self.bytes += outputs.nbytes + gdesc.nbytes + sum(a.nbytes for a in (*patches.values(), *norms.values()))

    def __contains__(self, index: int) -> bool:
        return int(index) in self._kept

    def __len__(self) -> int:
        return len(self._kept)

    def take(self, index: int) -> tuple:
        """``(sample, outputs[1, ...], {layer: patches[1, ...]}, gdesc[1, ...], {layer: norms[1, ...]})``."""
        return self._kept.pop(int(index))


def _reuse_budget() -> int:
    return min(REUSE_BYTES, available_memory_bytes() // 8)


def layer_sample(dataset: Any, extractor: Any, shapes: Mapping[str, tuple[int, int, int]],
                 batch_size: int, rows: int, keep: SamplePass | None = None) -> dict[str, "SampleRows"]:
    """Per-layer hyperpatches of whole images spread evenly over the dataset, until every layer
    has ``rows`` of them (or the dataset ends): what the ``sq8`` ranges are trained on and the
    screen's basis is fitted to, as :class:`SampleRows` (the batches, not concatenated). Empty
    when ``rows`` is 0.

    With ``keep``, each sampled image's extractor results are also kept there (while they fit
    in :data:`REUSE_BYTES`) for the build's write to reuse.
    """
    if rows <= 0:
        return {}
    n = len(dataset)
    per_image = min(hp * wp for hp, wp, _ in shapes.values())
    count = max(1, min(n, -(-rows // max(per_image, 1))))
    picks = np.unique(np.linspace(0, n - 1, count).round().astype(int))
    budget = _reuse_budget() if keep is not None else 0
    samples: dict[str, list[np.ndarray]] = {name: [] for name in shapes}
    for start in range(0, len(picks), batch_size):
        chosen = [int(i) for i in picks[start: start + batch_size]]
        items = [dataset[i] for i in chosen]
        x = np.stack([np.asarray(s.input, dtype=np.float32) for s in items])
        outputs, patches, gdesc, norms = extractor(x, return_norms=True)
        for name, hp in patches.items():
            samples[name].append(hp.reshape(-1, hp.shape[-1]))
        if keep is not None:
            for j, i in enumerate(chosen):
                one = (outputs[j: j + 1], {k: v[j: j + 1] for k, v in patches.items()}, gdesc[j: j + 1],
                       {k: v[j: j + 1] for k, v in norms.items()})
                size = one[0].nbytes + one[2].nbytes + sum(a.nbytes for a in (*one[1].values(), *one[3].values()))
                if keep.bytes + size <= budget:
                    keep.keep(i, items[j], *one)
    return {name: SampleRows(parts, rows) for name, parts in samples.items()}


class SampleRows:
    """The first ``rows`` sampled vectors of a layer, held as the extractor's batches.

    Concatenating them (a ``sq8`` sample is 131,072 vectors, 134 MB at 256 dims) was 0.2 s of a
    build's ~1 s fixed cost, all of it page faults on the fresh copy (issue 23); the fit needs
    only the column extremes (the ``sq8`` ranges) and every k-th row (the screen's fit rows).
    """

    def __init__(self, parts: list[np.ndarray], rows: int) -> None:
        self.parts, self._len = [], 0
        for part in parts:
            take = part[: max(0, rows - self._len)]
            if len(take):
                self.parts.append(take)
                self._len += len(take)

    def __len__(self) -> int:
        return self._len

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = np.concatenate(self.parts) if self.parts else np.zeros((0, 0), np.float32)
        return whole if dtype is None else whole.astype(dtype)

    def extremes(self, rows: int) -> np.ndarray:
        """``[column minima, column maxima]`` (2, d) of the first ``rows`` vectors: the ``sq8``
        min-max training of those vectors gives the same ranges from these two rows."""
        lo = hi = None
        left = rows
        for part in self.parts:
            part = part[:left]
            if not len(part):
                break
            lo = part.min(0) if lo is None else np.minimum(lo, part.min(0))
            hi = part.max(0) if hi is None else np.maximum(hi, part.max(0))
            left -= len(part)
        return np.stack([lo, hi])

    def every(self, k: int, limit: int) -> np.ndarray:
        """Rows ``0, k, 2k, ...`` of the concatenation, at most ``limit`` of them (a copy)."""
        out, start = [], 0
        for part in self.parts:
            first = (-start) % k
            out.append(part[first::k])
            start += len(part)
        return np.concatenate(out)[:limit]


def fit_sample(dataset: Any, extractor: Any, shapes: Mapping[str, tuple[int, int, int]], *,
               batch_size: int, codec: str, screen: int, keep: SamplePass | None = None) -> BuildFit:
    """Sample ``dataset`` (:func:`layer_sample`) and fit every layer's codec ranges and screen
    basis on it; the basis is fitted to the vectors as the layer will hold them (decoded).
    ``keep``: see :func:`layer_sample`."""
    codec = check_codec(codec)
    sample = layer_sample(dataset, extractor, shapes, batch_size, sample_rows_needed(codec, screen), keep=keep)
    layers = {}
    for name, (_, _, d) in shapes.items():
        trained = train_codec(codec, sample[name].extremes(SQ_TRAIN_ROWS)) if n_trained(codec, d) \
            else np.zeros(0, dtype=np.float32)
        basis = energy = None
        if screen:
            # the fit's rows first, then decoded (per row: the same rows as decoding them all)
            rows = sample[name].every(max(1, len(sample[name]) // FIT_ROWS), FIT_ROWS)
            basis, energy = fit_screen(roundtrip(codec, rows, trained if trained.size else None), screen)
        layers[name] = LayerFit(trained, basis, energy)
    return BuildFit(codec, int(screen), layers)


def check_fit(fit: Any, *, codec: str, screen: int, shapes: Mapping[str, tuple[int, int, int]]) -> BuildFit:
    """``fit`` if it was made for this build (codec, screen width, layers and dimensions), else an
    IndexStoreError naming the first difference (a fit handed to the wrong build)."""
    if not isinstance(fit, BuildFit):
        raise IndexStoreError(f"Expected fitted to be a BuildFit (compnn_index.index.fit), but got "
                              f"{type(fit).__name__}")
    if fit.codec != codec or fit.screen != screen:
        raise IndexStoreError(f"fitted: made for codec {fit.codec} with screen {fit.screen}, but this build "
                              f"writes codec {codec} with screen {screen}")
    if list(fit.layers) != list(shapes):
        raise IndexStoreError(f"fitted: made for layers {list(fit.layers)}, but this build indexes {list(shapes)}")
    for name, (_, _, d) in shapes.items():
        f = fit.layers[name]
        if np.asarray(f.trained).size != n_trained(codec, d):
            raise IndexStoreError(f"fitted: layer {name!r} has {np.asarray(f.trained).size} trained values, "
                                  f"codec {codec} at {d} dims needs {n_trained(codec, d)}")
        want = (d, screen - 1) if screen else None
        got = None if f.basis is None else tuple(np.shape(f.basis))
        if got != want:
            raise IndexStoreError(f"fitted: layer {name!r} screen basis of shape {got}, expected {want}")
    return fit


def store_uses_fit(folder: str | os.PathLike, manifest: Mapping[str, Any], fit: BuildFit) -> bool:
    """Whether the store in ``folder`` (its ``manifest``) was written with ``fit``: the same
    codec, screen width, ``sq8`` ranges (read from each layer file's header) and screen bases.
    A resumed sharded build keeps only the shards for which this holds."""
    from .codecs import sq_header

    folder = Path(folder)
    if list(manifest.get("layers", {})) != list(fit.layers):
        return False
    for name, f in fit.layers.items():
        entry = manifest["layers"][name]
        if entry.get("codec", "fp32") != fit.codec:
            return False
        screen = entry.get("screen")
        if (screen is None) != (f.basis is None):
            return False
        try:
            if n_trained(fit.codec, int(entry["dim"])):
                head = sq_header(fit.codec, int(entry["dim"]), int(entry["ntotal"]), f.trained)
                with open(folder / entry["file"], "rb") as fh:
                    if fh.read(len(head)) != head:
                        return False
            if f.basis is not None and not np.array_equal(
                    np.load(folder / screen["basis"], allow_pickle=False), f.basis):
                return False
        except (OSError, ValueError, KeyError, TypeError, IndexStoreError):
            return False
    return True
