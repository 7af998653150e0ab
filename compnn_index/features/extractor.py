"""``FeatureExtractor``: batched outputs, hyperpatches and global descriptors — the one
extraction path of the build and the query."""
from __future__ import annotations


import numpy as np
from torch import nn

from ..errors import ModelError
from .spec import LayerSpec, Specs
from .taps import ArrayLike, _model_taps, _resolve, _size_pair, _spec_list, capture, global_descriptor, hyperpatches, probe_shapes


class FeatureExtractor:
    """Batched extraction of outputs, per-layer hyperpatches and global descriptors.

    Parameters
    ----------
    model : nn.Module
        Any network; built-in models validate the input size.
    specs : mapping or iterable of LayerSpec
        Layers whose hyperpatches are extracted.
    global_tap : str or LayerSpec, optional
        Activation used for the global descriptor: a name from ``specs`` or from
        ``model.layer_taps()``, a module path of the model (its output), or a spec. Default:
        ``model.bottleneck_tap()``.

    Attributes
    ----------
    specs : dict of str to LayerSpec
        The hyperpatch layers.
    global_spec : LayerSpec
        The global-descriptor tap.

    Raises
    ------
    ModelError
        If a tap is unknown, a layer's stride is not known yet (see
        :func:`~compnn_index.features.infer_layer_specs`), or no global tap can be chosen.
    """

    def __init__(
        self, model: nn.Module, specs: Specs, *, global_tap: str | LayerSpec | None = None
    ) -> None:
        self.model = model
        self.specs = {s.name: s for s in _spec_list(specs)}
        if not self.specs and not isinstance(global_tap, LayerSpec):
            raise ModelError("FeatureExtractor needs at least one LayerSpec (or a global_tap LayerSpec)")
        unresolved = [s.name for s in self.specs.values() if s.stride is None]
        if unresolved:
            raise ModelError(
                f"layers {unresolved} have no stride yet; infer it by probing with "
                "infer_layer_specs(model, specs, image_size) (build_index does) or give it"
            )
        self.global_spec = self._global_spec(global_tap)
        for spec in self.specs.values():
            _resolve(model, spec)
        _resolve(model, self.global_spec)
        self._shapes: dict[tuple[int, int], dict[str, tuple[int, int, int]]] = {}

    def _global_spec(self, global_tap: str | LayerSpec | None) -> LayerSpec:
        if isinstance(global_tap, LayerSpec):
            return global_tap
        if global_tap is None:
            bottleneck = getattr(self.model, "bottleneck_tap", None)
            if bottleneck is None:
                raise ModelError(
                    f"{type(self.model).__name__} has no bottleneck_tap(); pass global_tap (a "
                    "layer name or a LayerSpec) to choose the global-descriptor activation"
                )
            global_tap = bottleneck()
        if global_tap in self.specs:
            return self.specs[global_tap]
        taps = _model_taps(self.model) or {}
        if global_tap not in taps:
            if isinstance(global_tap, str) and global_tap and _is_submodule(self.model, global_tap):
                return LayerSpec(global_tap, global_tap, "output", k=1)
            available = sorted(set(taps) | set(self.specs))
            raise ModelError(
                f"unknown global_tap {global_tap!r}; available taps: {', '.join(available)}; "
                f"or a module path of {type(self.model).__name__}"
            )
        module, io = taps[global_tap]
        return LayerSpec(global_tap, module, io, k=1)

    def _capture_specs(self) -> list[LayerSpec]:
        specs = list(self.specs.values())
        if self.global_spec.name not in self.specs:
            specs.append(self.global_spec)
        elif (self.specs[self.global_spec.name].module, self.specs[self.global_spec.name].io) != (
                self.global_spec.module, self.global_spec.io):
            raise ModelError(
                f"global tap {self.global_spec.name!r} clashes with a layer of the same name "
                "but a different module"
            )
        return specs

    def __call__(
        self, batch: ArrayLike, *, return_norms: bool = False
    ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """Extract features of a batch of images.

        Parameters
        ----------
        batch : ndarray or Tensor, shape (B, C, H, W)
            float32 images in [-1, 1].
        return_norms : bool, default False
            Also return ``{layer: float32 (B, Hp, Wp)}``, every hyperpatch's norm before
            normalisation, as a fourth element (the build's norms sidecar, fused exact search).

        Returns
        -------
        outputs : ndarray of float32, shape (B, out_channels, H, W)
            The network's raw outputs (tanh images or class logits).
        hyperpatches : dict of str to ndarray
            ``{layer: float32 (B, Hp, Wp, D)}`` as :func:`hyperpatches`.
        global : ndarray of float32, shape (B, G)
            Global descriptors as :func:`global_descriptor`.
        """
        output, acts = capture(self.model, batch, self._capture_specs())
        if isinstance(output, (tuple, list)):
            output = output[0]
        outputs = np.ascontiguousarray(output.detach().cpu().numpy(), dtype=np.float32)
        gdesc = global_descriptor(acts[self.global_spec.name])
        if return_norms:
            pairs = {name: hyperpatches(acts[name], spec.k, return_norms=True) for name, spec in self.specs.items()}
            return (outputs, {n: p[0] for n, p in pairs.items()}, gdesc,  # type: ignore[return-value]
                    {n: p[1] for n, p in pairs.items()})
        patches = {name: hyperpatches(acts[name], spec.k) for name, spec in self.specs.items()}
        return outputs, patches, gdesc

    def layer_shapes(self, image_size: int | tuple[int, int]) -> dict[str, tuple[int, int, int]]:
        """Hyperpatch grid and dimension ``(Hp, Wp, D)`` of each layer for one image.

        Parameters
        ----------
        image_size : int or (int, int)
            Input height and width.
        """
        shapes = self._probe(image_size)
        out = {}
        for name, spec in self.specs.items():
            c, h, w = shapes[name]
            out[name] = (h - spec.k + 1, w - spec.k + 1, spec.k * spec.k * c)
        return out

    def global_dim(self, image_size: int | tuple[int, int]) -> int:
        """Length of the global descriptor for images of ``image_size``."""
        c, h, w = self._probe(image_size)[self.global_spec.name]
        return c * h * w

    def _probe(self, image_size: int | tuple[int, int]) -> dict[str, tuple[int, int, int]]:
        key = _size_pair(image_size)
        if key not in self._shapes:
            self._shapes[key] = probe_shapes(self.model, key, self._capture_specs())
        return self._shapes[key]


def _is_submodule(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True
