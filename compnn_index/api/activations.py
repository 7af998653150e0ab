"""CompNN's activation prediction (the papers' Figure 3): a mixin of :class:`CompNN`."""
from __future__ import annotations

from typing import TYPE_CHECKING

import time
from typing import Sequence

import numpy as np

from ..activations import activation_scores, find_pair, output_agreement, own_channels, paste_activations
from ..features import LayerSpec, PairGeometry, capture, forward_with, global_descriptor, window_vectors
from ..index import LayerVectors
from ..checks import is_int
from ..options import QueryOptions
from ..results import ActivationPrediction, QueryFeatures
from ..search import search_field


if TYPE_CHECKING:  # the image types of the API, defined beside CompNN
    from .core import ImageArg

class ActivationsMixin:
    """Predict a layer's activations by pasting matched training activations."""

    # ------------------------------------------------------------------ activation prediction
    def pair(self, source: str, target: str, k: int | None = None) -> tuple[PairGeometry, dict]:
        """The stored activation pair (geometry, manifest entry); see :func:`find_pair`."""
        return find_pair(self.store.manifest, source, target, k)

    def predict_activations(self, image: ImageArg, *, source_layer: str = "decoder4",
                            target_layer: str = "decoder3", k: int | None = None,
                            options: QueryOptions | None = None, top_k: int | None = None,
                            restrict=None, exclude: Sequence = (), threads: int | None = None) -> ActivationPrediction:
        """Predict ``target_layer``'s activations by matching ``source_layer``'s k×k windows.

        Each query window is matched (``options``: exact or HyperPatch-Match, over the top-k
        shortlist by global descriptor) to the stored windows of the pair; the matched windows'
        target blocks are pasted (:func:`compnn_index.activations.paste_activations`). The global
        NN baseline is the best-ranked shortlisted image's whole target map. Both are scored
        against the true activations and fed into the rest of the network in place of them.
        """
        t0 = time.perf_counter()
        geom, entry = self.pair(source_layer, target_layer, k)
        taps = self.model.layer_taps()
        src, tgt = (LayerSpec(n, *taps[n]) for n in (source_layer, target_layer))
        opts = (options or QueryOptions()).with_(top_k=top_k)
        if is_int(image):  # a bad query id is named as such, before the exclude list it may be in
            self.check_ids([image], what="query image")
        cands = self.candidates(restrict, exclude)
        img = image.image if isinstance(image, QueryFeatures) else self.resolve_image(image)
        with self.thread_limits(threads):
            with self._forward_lock:
                logits, acts = capture(self.model, img[None], [src, tgt, self._global_spec])
            true = acts[target_layer][0].numpy()
            ids, _ = self.shortlist(global_descriptor(acts[self.global_tap])[0], cands,
                                    opts.resolve_top_k(len(cands)))
            vectors = self.array(entry["vectors"])
            lv = LayerVectors.from_array(vectors, grids=np.tile(geom.grid, (self.num_images, 1)),
                                         name=geom.key)
            q = window_vectors(acts[source_layer], geom)[0]
            t = time.perf_counter()
            nnf = search_field({geom.key: q}, {geom.key: lv}, ids, layer=geom.key, options=opts)
            t_search = time.perf_counter() - t
            targets = self.array(entry["targets"])
            pred, glob = paste_activations(nnf, targets, geom), np.array(targets[ids[0]], np.float32)
            cnn_out = self.output_array(logits[0])
            outs = {"cnn": cnn_out}
            for name, act in (("compnn", pred), ("global", glob)):
                with self._forward_lock:
                    outs[name] = self.output_array(forward_with(self.model, img[None], tgt, act[None])[0])
        scores = {"compnn": activation_scores(pred, true), "global": activation_scores(glob, true)}
        own = own_channels(self.model, target_layer, true.shape[0])
        if own is not None:
            scores["compnn_decoder"] = activation_scores(pred, true, channels=own)
            scores["global_decoder"] = activation_scores(glob, true, channels=own)
        agree = {n: output_agreement(outs[n], cnn_out, num_classes=self.num_classes) for n in ("compnn", "global")}
        return ActivationPrediction(geom, nnf, ids, int(ids[0]), true, pred, glob, scores, outs, agree,
                                    {"search": t_search, "total": time.perf_counter() - t0})
