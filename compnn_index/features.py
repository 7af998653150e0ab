"""Layer taps and hyperpatches: reading a network's activations and turning them into
L2-normalised k×k×C window vectors (CompNN's embedding), plus per-image global descriptors.

Works with any ``nn.Module``: built-in models name their taps (``model.layer_taps()``); for other
networks give :class:`LayerSpec` objects whose ``module`` is a path for
``model.get_submodule``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping, Union

import numpy as np
import torch
from torch import nn

from compnn_index.errors import ModelError

IO_KINDS = ("input", "output")

Specs = Union[Mapping[str, "LayerSpec"], Iterable["LayerSpec"]]
ArrayLike = Union[np.ndarray, torch.Tensor]


@dataclass(frozen=True)
class LayerSpec:
    """A layer tap and the geometry of its hyperpatches.

    Parameters
    ----------
    name : str
        Tap name (e.g. ``"decoder2"``).
    module : str
        Module path for ``model.get_submodule`` (``""`` is the model itself).
    io : {"output", "input"}
        Read the module's output or its (first) input.
    k : int
        Hyperpatch window side in feature cells.
    stride : int
        Image pixels per feature cell.
    region : int, optional
        Side in pixels of the image block a hyperpatch stands for; default ``k * stride``.
        The hyperpatch at feature position (y, x) stands for
        ``[y*stride, y*stride + region) × [x*stride, x*stride + region)``.
    """

    name: str
    module: str
    io: str = "output"
    k: int = 2
    stride: int = 1
    region: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ModelError(f"Expected LayerSpec.name to be a non-empty string, got {self.name!r}")
        if not isinstance(self.module, str):
            raise ModelError(
                f"layer {self.name!r}: expected module to be a module path string, "
                f"got {self.module!r}"
            )
        if self.io not in IO_KINDS:
            raise ModelError(
                f"layer {self.name!r}: expected io to be one of {list(IO_KINDS)}, but io = {self.io!r}"
            )
        for option in ("k", "stride"):
            value = getattr(self, option)
            if not _is_positive_int(value):
                raise ModelError(
                    f"layer {self.name!r}: expected {option} to be a positive integer, "
                    f"but {option} = {value!r}"
                )
            object.__setattr__(self, option, int(value))
        if self.region is None:
            object.__setattr__(self, "region", self.k * self.stride)
        elif not _is_positive_int(self.region):
            raise ModelError(
                f"layer {self.name!r}: expected region to be a positive integer (pixels), "
                f"but region = {self.region!r}"
            )
        else:
            object.__setattr__(self, "region", int(self.region))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; :meth:`from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LayerSpec":
        """Rebuild a spec from :meth:`to_dict`'s output.

        Raises
        ------
        ModelError
            For missing or unknown keys or invalid values.
        """
        known = {f.name for f in fields(cls)}
        if not isinstance(d, Mapping):
            raise ModelError(f"Expected a LayerSpec dict, got {type(d).__name__}")
        unknown = sorted(set(d) - known)
        missing = [k for k in ("name", "module") if k not in d]
        if unknown or missing:
            raise ModelError(
                f"LayerSpec dict {dict(d)!r}: unknown keys {unknown}, missing keys {missing}; "
                f"expected keys among {sorted(known)}"
            )
        return cls(**d)


def default_layer_specs(
    model: nn.Module, image_size: int | tuple[int, int]
) -> dict[str, LayerSpec]:
    """A :class:`LayerSpec` for every tap of a built-in model.

    The stride of each tap comes from one forward pass on zeros; ``k`` is 2, or 1 where the
    feature map is smaller than 2×2.

    Parameters
    ----------
    model : nn.Module
        A model with ``layer_taps()`` (every built-in model).
    image_size : int or (int, int)
        Input height and width in pixels.

    Returns
    -------
    dict
        ``{tap name: LayerSpec}`` in the model's tap order.

    Raises
    ------
    ModelError
        If the model has no ``layer_taps()``, the size does not suit it, or a tap's map does not
        divide the image evenly.
    """
    taps = _model_taps(model)
    if taps is None:
        raise ModelError(
            f"{type(model).__name__} has no layer_taps(); give LayerSpec(name, module, io, k, "
            "stride) objects for its layers instead"
        )
    height, width = _size_pair(image_size)
    probe = {name: LayerSpec(name, module, io) for name, (module, io) in taps.items()}
    shapes = probe_shapes(model, (height, width), probe)
    specs = {}
    for name, (_, h, w) in shapes.items():
        if height % h or width % w or height // h != width // w:
            raise ModelError(
                f"layer {name!r}: feature map {h}×{w} does not divide the {height}×{width} image "
                "into square cells; give its LayerSpec stride explicitly"
            )
        k = 2 if min(h, w) >= 2 else 1
        specs[name] = LayerSpec(name, probe[name].module, probe[name].io, k=k, stride=height // h)
    return specs


def probe_shapes(
    model: nn.Module, image_size: int | tuple[int, int], specs: Specs
) -> dict[str, tuple[int, int, int]]:
    """Activation shape ``(C, h, w)`` of each tap for one image of ``image_size``.

    One forward pass on zeros, on the model's device (no computation on a ``meta`` model).

    Parameters
    ----------
    model : nn.Module
        The network.
    image_size : int or (int, int)
        Input height and width.
    specs : mapping or iterable of LayerSpec
        Taps to measure.
    """
    height, width = _size_pair(image_size)
    device = _model_device(model)
    x = torch.zeros((1, _in_channels(model), height, width), device=device)
    _, acts = capture(model, x, specs)
    return {name: tuple(int(s) for s in a.shape[1:]) for name, a in acts.items()}  # type: ignore[misc]


def capture(
    model: nn.Module, images: ArrayLike, specs: Specs
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Run the model once and read the activations of the given taps.

    Hooks sit on ``model.get_submodule(spec.module)``'s input (pre-hook) or output and store a
    *clone*, so later in-place operations cannot change what was read; they are removed in
    ``finally`` (also when the forward raises). The forward runs under ``no_grad`` with the model
    in eval mode; its previous mode is restored afterwards. A tuple-valued input or output (e.g.
    a pooling layer returning indices) contributes its first tensor.

    Parameters
    ----------
    model : nn.Module
        Any network.
    images : ndarray or Tensor, shape (B, C, H, W)
        Input batch (converted to float32 on the model's device).
    specs : mapping or iterable of LayerSpec
        Taps to read.

    Returns
    -------
    output : Tensor or object
        The model's output.
    activations : dict of str to Tensor
        ``{spec.name: Tensor (B, C, h, w)}``.

    Raises
    ------
    ModelError
        For an unknown module path (the message lists the model's taps), a tap that the forward
        never reaches or reaches twice, a non-4-D activation, or an input size the model
        rejects.
    """
    spec_list = _spec_list(specs)
    x = _as_batch(images, model)
    modules = {spec.name: _resolve(model, spec) for spec in spec_list}
    captured: dict[str, torch.Tensor] = {}

    def make_hook(spec: LayerSpec):
        def store(value: Any) -> None:
            if spec.name in captured:
                raise ModelError(
                    f"layer {spec.name!r}: module {spec.module!r} ran more than once in one "
                    "forward pass, so its activation is ambiguous; tap a module that runs once"
                )
            captured[spec.name] = _first_tensor(value, spec).detach().clone()

        if spec.io == "input":
            return lambda module, args: store(args)
        return lambda module, args, output: store(output)

    handles = []
    was_training = model.training
    try:
        for spec in spec_list:
            module = modules[spec.name]
            hook = make_hook(spec)
            if spec.io == "input":
                handles.append(module.register_forward_pre_hook(hook))
            else:
                handles.append(module.register_forward_hook(hook))
        model.eval()
        with torch.no_grad():
            output = model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missing = [s.name for s in spec_list if s.name not in captured]
    if missing:
        raise ModelError(
            f"layers {missing} were not reached by the forward pass of {type(model).__name__}; "
            "check their module paths"
        )
    return output, {s.name: captured[s.name] for s in spec_list}


def hyperpatches(act: ArrayLike, k: int) -> np.ndarray:
    """Every k×k window of an activation, flattened and L2-normalised.

    Parameters
    ----------
    act : ndarray or Tensor, shape (B, C, h, w)
        Layer activations.
    k : int
        Window side (``1 <= k <= min(h, w)``).

    Returns
    -------
    ndarray of float32, shape (B, h-k+1, w-k+1, k*k*C)
        C-contiguous; ``vec[(dy*k + dx)*C + c] = act[c, y+dy, x+dx]`` divided by the window's
        norm. An all-zero window stays zero.

    Raises
    ------
    ModelError
        For a non-4-D activation or a window larger than the map.
    """
    t = _as_activation(act)
    b, c, h, w = t.shape
    if not _is_positive_int(k) or k > min(h, w):
        raise ModelError(
            f"Expected 1 <= k <= min(h, w) = {min(h, w)} for a {h}×{w} feature map, but k = {k!r}"
        )
    hp, wp = h - k + 1, w - k + 1
    pix = t.permute(0, 2, 3, 1).contiguous()  # (B, h, w, C)
    out = torch.empty((b, hp, wp, k * k * c), dtype=torch.float32)
    sq = pix.square().sum(-1)  # (B, h, w): per-cell squared norm
    norm2 = torch.zeros((b, hp, wp), dtype=torch.float32)
    for dy in range(k):
        for dx in range(k):
            j = dy * k + dx
            out[..., j * c : (j + 1) * c] = pix[:, dy : dy + hp, dx : dx + wp, :]
            norm2 += sq[:, dy : dy + hp, dx : dx + wp]
    out *= _inverse_norm(norm2).unsqueeze(-1)
    return out.numpy()


def global_descriptor(act: ArrayLike) -> np.ndarray:
    """Whole activation per image, flattened in (c, y, x) order and L2-normalised.

    Parameters
    ----------
    act : ndarray or Tensor, shape (B, C, h, w)
        Activations (by default the model's bottleneck).

    Returns
    -------
    ndarray of float32, shape (B, C*h*w)
        C-contiguous unit vectors (zero rows stay zero).
    """
    t = _as_activation(act)
    flat = t.reshape(t.shape[0], -1).clone()
    flat *= _inverse_norm(flat.square().sum(-1)).unsqueeze(-1)
    return flat.numpy()


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
        ``model.layer_taps()``, or a spec. Default: ``model.bottleneck_tap()``.

    Attributes
    ----------
    specs : dict of str to LayerSpec
        The hyperpatch layers.
    global_spec : LayerSpec
        The global-descriptor tap.

    Raises
    ------
    ModelError
        If a tap is unknown or no global tap can be chosen.
    """

    def __init__(
        self, model: nn.Module, specs: Specs, *, global_tap: str | LayerSpec | None = None
    ) -> None:
        self.model = model
        self.specs = {s.name: s for s in _spec_list(specs)}
        if not self.specs and not isinstance(global_tap, LayerSpec):
            raise ModelError("FeatureExtractor needs at least one LayerSpec (or a global_tap LayerSpec)")
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
            available = sorted(set(taps) | set(self.specs))
            raise ModelError(
                f"unknown global_tap {global_tap!r}; available taps: {', '.join(available)}"
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
        self, batch: ArrayLike
    ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """Extract features of a batch of images.

        Parameters
        ----------
        batch : ndarray or Tensor, shape (B, C, H, W)
            float32 images in [-1, 1].

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
        patches = {name: hyperpatches(acts[name], spec.k) for name, spec in self.specs.items()}
        return outputs, patches, global_descriptor(acts[self.global_spec.name])

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


# ---------------------------------------------------------------------------- helpers


def _is_positive_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def _inverse_norm(norm2: torch.Tensor) -> torch.Tensor:
    """1/sqrt(norm2), with 0 where norm2 is 0 (zero vectors stay zero)."""
    return torch.where(norm2 > 0, norm2.rsqrt(), torch.zeros_like(norm2))


def _size_pair(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if _is_positive_int(image_size):
        return int(image_size), int(image_size)  # type: ignore[arg-type]
    if (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(_is_positive_int(v) for v in image_size)
    ):
        return int(image_size[0]), int(image_size[1])
    raise ModelError(
        f"Expected image_size to be a positive int or (height, width), but image_size = "
        f"{image_size!r}"
    )


def _model_taps(model: nn.Module) -> dict[str, tuple[str, str]] | None:
    taps = getattr(model, "layer_taps", None)
    return dict(taps()) if callable(taps) else None


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _in_channels(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    if isinstance(config, dict) and _is_positive_int(config.get("in_channels")):
        return int(config["in_channels"])
    return 3


def _spec_list(specs: Specs) -> list[LayerSpec]:
    if isinstance(specs, LayerSpec):
        specs = [specs]
    if isinstance(specs, Mapping):
        for key, spec in specs.items():
            if not isinstance(spec, LayerSpec) or spec.name != key:
                raise ModelError(
                    f"specs[{key!r}]: expected a LayerSpec named {key!r}, got {spec!r}"
                )
        items = list(specs.values())
    else:
        items = list(specs)
    names = []
    for spec in items:
        if not isinstance(spec, LayerSpec):
            raise ModelError(f"Expected LayerSpec objects, got {type(spec).__name__}: {spec!r}")
        names.append(spec.name)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ModelError(f"layer names must be unique, but {dupes} appear more than once")
    return items


def _resolve(model: nn.Module, spec: LayerSpec) -> nn.Module:
    try:
        return model.get_submodule(spec.module)
    except AttributeError:
        taps = _model_taps(model)
        if taps is not None:
            listing = "available taps: " + ", ".join(taps)
        else:
            names = [n for n, _ in model.named_modules() if n]
            listing = "available modules: " + ", ".join(names[:40])
            if len(names) > 40:
                listing += f", … ({len(names)} in all)"
        raise ModelError(
            f"unknown layer {spec.name!r}: {type(model).__name__} has no module "
            f"{spec.module!r}; {listing}"
        ) from None


def _first_tensor(value: Any, spec: LayerSpec) -> torch.Tensor:
    while isinstance(value, (tuple, list)) and value:
        value = value[0]
    if not isinstance(value, torch.Tensor) or value.ndim != 4:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ModelError(
            f"layer {spec.name!r}: the {spec.io} of module {spec.module!r} is {shape}; expected "
            "a (B, C, h, w) tensor"
        )
    return value


def _as_batch(images: ArrayLike, model: nn.Module) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    elif isinstance(images, torch.Tensor):
        x = images.float()
    else:
        raise ModelError(f"Expected images as an ndarray or Tensor, got {type(images).__name__}")
    if x.ndim != 4:
        raise ModelError(f"Expected images of shape (B, C, H, W), but got shape {tuple(x.shape)}")
    channels = _in_channels(model)
    if hasattr(model, "config") and x.shape[1] != channels:
        raise ModelError(
            f"Expected images with in_channels = {channels} channels, but got "
            f"{x.shape[1]} (shape {tuple(x.shape)})"
        )
    check = getattr(model, "check_input_size", None)
    if callable(check):
        check(int(x.shape[2]), int(x.shape[3]))
    return x.to(_model_device(model))


def _as_activation(act: ArrayLike) -> torch.Tensor:
    if isinstance(act, np.ndarray):
        t = torch.from_numpy(np.asarray(act, dtype=np.float32))
    elif isinstance(act, torch.Tensor):
        t = act.detach().to("cpu", torch.float32)
    else:
        raise ModelError(f"Expected an activation ndarray or Tensor, got {type(act).__name__}")
    if t.ndim != 4:
        raise ModelError(f"Expected an activation of shape (B, C, h, w), but got {tuple(t.shape)}")
    return t
