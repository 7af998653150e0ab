"""Reading a network's activations (forward hooks) and turning them into hyperpatches and
global descriptors; per-tap geometry by probing."""
from __future__ import annotations

from typing import Any, Mapping, Union

import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from .spec import LayerSpec, Specs, _is_positive_int

ArrayLike = Union[np.ndarray, torch.Tensor]


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


def infer_layer_specs(
    model: nn.Module, specs: Specs, image_size: int | tuple[int, int]
) -> dict[str, LayerSpec]:
    """Fill in each spec's stride (and default region) by probing its tap with a dummy input.

    The stride is the image size divided by the tap's map size, per axis; it must be the same
    integer on both axes (square cells). A stride that was given is checked against the probe
    when the sizes divide evenly. Never a silent default: a tap whose map does not divide the
    image is refused, naming the tap and both shapes.

    Parameters
    ----------
    model : nn.Module
        Any network.
    specs : mapping or iterable of LayerSpec
        Taps; ``stride=None`` means "infer".
    image_size : int or (int, int)
        Input height and width of the images that will be indexed.

    Returns
    -------
    dict of str to LayerSpec
        Every spec with its stride and region set, in the given order.

    Raises
    ------
    ModelError
        For a non-integer or non-square stride, a given stride the probe contradicts, or a
        window larger than the tap's map.
    """
    spec_list = _spec_list(specs)
    height, width = _size_pair(image_size)
    shapes = probe_shapes(model, (height, width), spec_list) if spec_list else {}
    out = {}
    for spec in spec_list:
        c, h, w = shapes[spec.name]
        where = f"layer {spec.name!r} ({spec.io} of module {spec.module!r})"
        even = height % h == 0 and width % w == 0
        if spec.stride is None:
            if not even or height // h != width // w:
                raise ModelError(
                    f"{where}: the {height}×{width} (H×W) input gives a {h}×{w} map "
                    f"(tap shape {c}×{h}×{w}), a stride of {_ratio(height, h)}×{_ratio(width, w)} "
                    "pixels per cell, not one integer; choose another tap or image size, or give "
                    "the LayerSpec stride and region explicitly"
                )
            spec = LayerSpec(spec.name, spec.module, spec.io, k=spec.k, stride=height // h,
                             region=spec.region)
        elif even and height // h == width // w and height // h != spec.stride:
            raise ModelError(
                f"{where}: stride = {spec.stride} was given, but the {height}×{width} (H×W) input "
                f"gives a {h}×{w} map, a stride of {height // h}; leave stride out to infer it"
            )
        if spec.k > min(h, w):
            raise ModelError(
                f"{where}: a {spec.k}×{spec.k} window does not fit its {h}×{w} map; give k=1"
            )
        out[spec.name] = spec
    return out


def smallest_tap(
    model: nn.Module, specs: Specs, image_size: int | tuple[int, int]
) -> LayerSpec:
    """The spec (``k = 1``) of the tap with the smallest map — the default global descriptor of
    a network without ``bottleneck_tap()``. Ties go to the first."""
    spec_list = _spec_list(specs)
    if not spec_list:
        raise ModelError("no layer taps to choose a global descriptor from; name a global layer")
    shapes = probe_shapes(model, image_size, spec_list)
    best = min(spec_list, key=lambda s: shapes[s.name][1] * shapes[s.name][2])
    return LayerSpec(best.name, best.module, best.io, k=1, stride=best.stride)


def _ratio(a: int, b: int) -> str:
    return str(a // b) if a % b == 0 else f"{a / b:.3g}"


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


def hyperpatches(act: ArrayLike, k: int, *, return_norms: bool = False
                 ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Every k×k window of an activation, flattened and L2-normalised.

    Parameters
    ----------
    act : ndarray or Tensor, shape (B, C, h, w)
        Layer activations.
    k : int
        Window side (``1 <= k <= min(h, w)``).
    return_norms : bool, default False
        Also return every window's norm before normalisation (what fused exact search needs to
        turn the stored unit vectors back into pixel features: pixel ``(y, x)`` is slot
        ``(0, 0)`` of window ``(y, x)`` times its norm).

    Returns
    -------
    ndarray of float32, shape (B, h-k+1, w-k+1, k*k*C)
        C-contiguous; ``vec[(dy*k + dx)*C + c] = act[c, y+dy, x+dx]`` divided by the window's
        norm. An all-zero window stays zero.
    norms : ndarray of float32, shape (B, h-k+1, w-k+1)
        Only with ``return_norms``: the windows' L2 norms (0 for an all-zero window).

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
    if return_norms:
        return out.numpy(), norm2.sqrt().numpy()
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


# ---------------------------------------------------------------------------- helpers

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
