"""Layer taps and hyperpatches: reading a network's activations and turning them into
L2-normalised k×k×C window vectors (CompNN's embedding), plus per-image global descriptors.

Works with any ``nn.Module``: built-in models name their taps (``model.layer_taps()``); for other
networks give :class:`LayerSpec` objects whose ``module`` is a path for
``model.get_submodule``.
"""
from .extractor import FeatureExtractor
from .inject import forward_with
from .pairs import PairGeometry, pair_geometry, pair_key, target_index, window_vectors
from .spec import IO_KINDS, LayerSpec, Specs
from .taps import (ArrayLike, capture, default_layer_specs, global_descriptor, hyperpatches,
                   infer_layer_specs, probe_shapes, smallest_tap)

__all__ = ["ArrayLike", "FeatureExtractor", "IO_KINDS", "LayerSpec", "Specs", "capture",
           "default_layer_specs", "forward_with", "global_descriptor", "hyperpatches", "infer_layer_specs",
           "pair_geometry", "pair_key", "PairGeometry", "probe_shapes", "smallest_tap", "target_index",
           "window_vectors"]
