"""``LayerSpec``: a layer tap and the geometry of its hyperpatches."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping, Union

from ..checks import is_int
from ..errors import ModelError

IO_KINDS = ("input", "output")

Specs = Union[Mapping[str, "LayerSpec"], Iterable["LayerSpec"]]


def _is_positive_int(value: object) -> bool:
    return is_int(value) and value >= 1


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
    k : int, default 2
        Hyperpatch window side in feature cells.
    stride : int, optional
        Image pixels per feature cell. ``None`` (the default): not known yet —
        :func:`compnn_index.features.infer_layer_specs` (which ``build_index`` calls) measures it
        by probing the tap with a dummy input (image size / tap size per axis), and nothing
        extracts hyperpatches from a spec whose stride is still ``None``.
    region : int, optional
        Side in pixels of the image block a hyperpatch stands for; default ``k * stride`` (the
        block its k×k cells cover). The hyperpatch at feature position (y, x) stands for
        ``[y*stride, y*stride + region) × [x*stride, x*stride + region)``.
    """

    name: str
    module: str
    io: str = "output"
    k: int = 2
    stride: int | None = None
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
            if option == "stride" and value is None:
                continue
            if not _is_positive_int(value):
                raise ModelError(
                    f"layer {self.name!r}: expected {option} to be a positive integer, "
                    f"but {option} = {value!r}"
                )
            object.__setattr__(self, option, int(value))
        if self.region is None:
            if self.stride is not None:
                object.__setattr__(self, "region", self.k * self.stride)
        elif not _is_positive_int(self.region):
            raise ModelError(
                f"layer {self.name!r}: expected region to be a positive integer (pixels), "
                f"but region = {self.region!r}"
            )
        else:
            object.__setattr__(self, "region", int(self.region))

    @property
    def resolved(self) -> bool:
        """True once the stride is known (given, or inferred by probing)."""
        return self.stride is not None

    @classmethod
    def parse(cls, text: str) -> "LayerSpec":
        """``NAME=MODULE.PATH[:input|output]`` (the command line's ``--layers`` items).

        The stride and region are left to be inferred by probing; ``k`` is 2.

        >>> LayerSpec.parse("d0=decoder.blocks.0:input")
        LayerSpec(name='d0', module='decoder.blocks.0', io='input', k=2, stride=None, region=None)
        """
        if not isinstance(text, str) or "=" not in text:
            raise ModelError(
                f"Expected a layer as NAME=MODULE.PATH[:input|output], but got {text!r}"
            )
        name, _, path = (t.strip() for t in text.partition("="))
        io = "output"
        if ":" in path:
            path, _, io = (t.strip() for t in path.rpartition(":"))
        if not name or not path:
            raise ModelError(
                f"Expected a layer as NAME=MODULE.PATH[:input|output], but got {text!r}"
            )
        return cls(name, path, io)

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
