"""Correspondences and the global nearest-neighbour baselines: a mixin of :class:`CompNN`."""
from __future__ import annotations

from typing import TYPE_CHECKING

import time
from typing import Sequence

import numpy as np

from ..errors import QueryError
from ..index import LayerVectors
from ..results import Correspondence, GlobalNN
from ..search import exact_search


if TYPE_CHECKING:  # the image types of the API, defined beside CompNN
    from .core import ImageArg

class BaselinesMixin:
    """Two-image correspondences and global NN (bottleneck, output, aligned layer)."""

    # ------------------------------------------------------------------ correspond
    def correspond(self, image_a: ImageArg, image_b: ImageArg, *, layer: str | None = None,
                   threads: int | None = None) -> Correspondence:
        """Semantic correspondences: every hyperpatch of A matched to its most similar in B."""
        layer = self.check_layer(layer)
        spec = self.store.spec(layer)
        t = time.perf_counter()
        with self.thread_limits(threads):
            fa = self.extract(image_a, [layer], name="image_a")
            fb = self.extract(image_b, [layer], name="image_b")
            vb = fb.hyperpatches[layer]
            hb, wb, d = vb.shape
            nb = fb.hyperpatch_norms.get(layer)
            b_layer = LayerVectors.from_array(
                np.ascontiguousarray(vb.reshape(hb * wb, d)), grids=(hb, wb), name=layer, spec=spec,
                norms=None if nb is None else np.ascontiguousarray(nb.reshape(-1), dtype=np.float32))
            nnf = exact_search(fa.hyperpatches[layer], b_layer, [0],
                               query_norms=fa.hyperpatch_norms.get(layer))
        return Correspondence(layer, spec, nnf, fa.image, fb.image, {"total": time.perf_counter() - t},
                              context=self.context())

    # ------------------------------------------------------------------ global NN
    def output_similarity(self, output: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """How alike the network's output on a query is to its stored outputs on ``candidates``:
        pixel agreement for label maps, cosine for images (the "last layer" global NN)."""
        outputs = self.array("outputs")
        sims = np.empty(len(candidates), dtype=np.float32)
        for j, n in enumerate(candidates):
            o = np.asarray(outputs[n])
            if o.shape != output.shape:
                raise QueryError(f"global_nn: stored output of image {n} has shape {o.shape}, the "
                                 f"query's has {output.shape}")
            if output.dtype.kind in "iu":
                sims[j] = float(np.mean(o == output))
            else:
                denom = max(float(np.linalg.norm(o) * np.linalg.norm(output)), 1e-12)
                sims[j] = float(np.dot(o.ravel(), output.ravel()) / denom)
        return sims

    def global_nn(self, image: ImageArg, *, by: str = "bottleneck", restrict=None,
                  exclude: Sequence[int] = (), threads: int | None = None) -> GlobalNN:
        """The global nearest-neighbour baseline.

        ``by="bottleneck"`` ranks database images by the global descriptor. ``by="output"``
        compares the network's last layer globally: its output on the query against its stored
        outputs on the database images (pixel agreement of labels, or cosine of images); it reads
        only the ``outputs`` sidecar array. ``by=<layer>`` ranks them by the mean cosine
        similarity of spatially aligned hyperpatches at that layer; it reads every candidate's
        vectors of that layer, which is slow on a store larger than the page cache.
        """
        if by not in ("bottleneck", "output") and by not in self.layers:
            raise QueryError(f"Unknown global_nn by={by!r}; expected 'bottleneck', 'output' or a "
                             f"layer of this index ({', '.join(self.layers)})")
        cands = self.candidates(restrict, exclude, purpose="global_nn")
        with self.thread_limits(threads):
            feats = self.extract(image, [by] if by in self.layers else ())
            if by == "bottleneck":
                sims = self.store.global_vectors()[cands] @ feats.global_descriptor
            elif by == "output":
                sims = self.output_similarity(feats.output, cands)
            else:
                sims = self._aligned_similarity(feats.hyperpatches[by], self.store.layer(by), cands)
        order = np.argsort(-sims, kind="stable")
        return GlobalNN(int(cands[order[0]]), float(sims[order[0]]), by, cands[order], sims[order],
                        context=self.context())

    @staticmethod
    def _aligned_similarity(q: np.ndarray, layer: LayerVectors, cands: np.ndarray) -> np.ndarray:
        hq, wq, d = q.shape
        qf = q.reshape(-1, d)
        sims = np.empty(len(cands), dtype=np.float32)
        for j, n in enumerate(cands):
            if tuple(layer.grids[n]) != (hq, wq):
                sims[j] = -np.inf
                continue
            start, stop = layer.image_range(int(n))
            sims[j] = sum(float(np.einsum("ij,ij->", qf[a - start: a - start + len(b)], b))
                          for a, b in layer.blocks(start, stop)) / qf.shape[0]
        return sims
