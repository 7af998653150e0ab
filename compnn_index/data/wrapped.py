"""Any map-style dataset (e.g. a ``torch.utils.data.Dataset``) as a :class:`PairedDataset`,
and the subset rules of ``limit`` / ``sample``.

A wrapped dataset returns ``(input, target)`` per index — tensors or arrays — and may carry
``names``, ``num_classes`` (or ``classes``), ``ignore_index``, ``palette`` attributes. Inputs
are float ``(C, H, W)`` (used as given: the network's own normalisation) or uint8 ``(H, W, 3)``
pictures (converted to ``[-1, 1]``); targets are integer ``(H, W)`` class maps (segment) or
float ``(C, H, W)`` / uint8 ``(H, W, 3)`` images (translate).
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import numpy as np

from ..checks import check_choice, check_int, resolve_callable
from ..errors import DataError
from .base import PairedDataset
from .images import to_network
from .palette import jet_palette

#: How ``limit`` picks images: the first N, N evenly spaced over the split, or N at random.
SAMPLES = ("first", "every", "random")


def select_indices(n: int, limit: int | None, sample: str = "first", seed: int = 0) -> list[int]:
    """Which of ``n`` items a ``limit`` keeps, in their original order.

    ``"first"``: ``0 .. limit-1``; ``"every"``: evenly spaced over all ``n`` (so an evaluation
    does not take N consecutive frames of one video sequence); ``"random"``: a random subset
    drawn with ``seed``.
    """
    check_choice(sample, "sample", SAMPLES, error=DataError)
    if limit is None or limit >= n:
        return list(range(n))
    if sample == "first":
        return list(range(limit))
    if sample == "every":
        return [int(i * n // limit) for i in range(limit)]
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, size=limit, replace=False))


def _numpy(value: Any) -> Any:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        return value.detach().cpu().numpy()
    return value


def _as_input(value: Any, where: str) -> np.ndarray:
    a = _numpy(value)
    if not isinstance(a, np.ndarray):
        raise DataError(f"{where}: expected the input as a tensor or array, got {type(a).__name__}")
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3:
        return to_network(a)
    if a.ndim == 3 and np.issubdtype(a.dtype, np.floating):
        return np.ascontiguousarray(a, dtype=np.float32)
    raise DataError(
        f"{where}: expected the input as a float (C, H, W) or uint8 (H, W, 3) array, got "
        f"{a.dtype} of shape {a.shape}"
    )


def _as_target(value: Any, where: str) -> np.ndarray:
    a = _numpy(value)
    if not isinstance(a, np.ndarray):
        raise DataError(f"{where}: expected the target as a tensor or array, got {type(a).__name__}")
    if np.issubdtype(a.dtype, np.integer) and a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3:
        return to_network(a)
    if np.issubdtype(a.dtype, np.integer) and a.ndim == 2:
        return np.ascontiguousarray(a, dtype=np.int64)
    if np.issubdtype(a.dtype, np.floating) and a.ndim == 3:
        return np.ascontiguousarray(a, dtype=np.float32)
    raise DataError(
        f"{where}: expected the target as integer (H, W) class labels or a float (C, H, W) / "
        f"uint8 (H, W, 3) image, got {a.dtype} of shape {a.shape}"
    )


def _pair(item: Any, where: str) -> tuple[Any, Any]:
    if isinstance(item, Mapping) and "input" in item and "target" in item:
        return item["input"], item["target"]
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    raise DataError(
        f"{where}: expected an (input, target) pair (or a dict with 'input' and 'target'), got "
        f"{type(item).__name__}"
    )


class WrappedDataset(PairedDataset):
    """A map-style dataset of ``(input, target)`` pairs seen as a :class:`PairedDataset`.

    Parameters
    ----------
    source : object with ``__len__`` and ``__getitem__``
        E.g. a ``torch.utils.data.Dataset``.
    task : {"translate", "segment"}, optional
        Default: ``"segment"`` when the first target is an integer ``(H, W)`` map, else
        ``"translate"``.
    num_classes : int, optional
        Segment: default ``source.num_classes``, ``len(source.classes)``, else the largest label
        over every target (ignore label excluded) + 1.
    ignore_index : int, optional
        Segment: default ``source.ignore_index``.
    names : list of str, optional
        Default ``source.names``, else ``item00000``, ``item00001``, … (the source's indices).
    palette, class_names : optional
        Default: the source's attributes of those names; palette else a jet palette.
    limit, sample, seed : optional
        Keep ``limit`` items chosen by :func:`select_indices`.
    identity : dict, optional
        Recorded in the manifest (default: the source's class).
    """

    kind = "wrapped"

    def __init__(
        self, source: Any, *, task: str | None = None, num_classes: int | None = None,
        ignore_index: int | None = None, names: Sequence[str] | None = None,
        palette: Any = None, class_names: Sequence[str] | None = None,
        limit: int | None = None, sample: str = "first", seed: int = 0,
        identity: Mapping[str, Any] | None = None,
    ) -> None:
        if not hasattr(source, "__getitem__") or not hasattr(source, "__len__"):
            raise DataError(
                f"Expected a map-style dataset (with __len__ and __getitem__), got "
                f"{type(source).__name__}"
            )
        self.source = source
        total = len(source)
        if total == 0:
            raise DataError(f"the dataset {type(source).__name__} is empty")
        if limit is not None:
            limit = check_int(limit, "limit", low=1, error=DataError)
        self._indices = select_indices(total, limit, sample, seed)
        inp, target = self._convert(0)
        if task is None:
            task = "segment" if target.ndim == 2 else "translate"
        check_choice(task, "task", ("translate", "segment"), error=DataError)
        if (task == "segment") != (target.ndim == 2):
            raise DataError(
                f"task = {task!r}, but the first target is {target.dtype} of shape {target.shape}; "
                "segment needs integer (H, W) labels, translate an image"
            )
        if ignore_index is None:
            ignore_index = getattr(source, "ignore_index", None)
        if task == "translate":
            ignore_index = None
            num_classes = None
        else:
            if ignore_index is not None:
                ignore_index = check_int(ignore_index, "ignore_index", low=0, error=DataError)
            num_classes = self._num_classes(num_classes, ignore_index)
        if names is None:
            names = getattr(source, "names", None)
        if names is not None:
            names = [str(n) for n in names]
            if len(names) != total:
                raise DataError(f"Expected {total} names (one per item), got {len(names)}")
            names = [names[i] for i in self._indices]
        else:
            names = [f"item{i:05d}" for i in self._indices]
        if palette is None:
            palette = getattr(source, "palette", None)
        if palette is None and task == "segment":
            palette = jet_palette(num_classes)
        if palette is not None:
            palette = np.asarray(palette, dtype=np.uint8)
        if class_names is None:
            class_names = getattr(source, "class_names", None)
        h, w = (int(s) for s in inp.shape[1:])
        ident = {"kind": self.kind, "class": f"{type(source).__module__}.{type(source).__qualname__}"}
        ident.update(identity or {})
        ident.update(task=task, size=None, limit=limit, sample=sample, seed=seed,
                     ignore_index=ignore_index)
        ident.setdefault("split", None)
        ident.setdefault("direction", "AtoB")
        super().__init__(names=names, task=task, num_classes=num_classes, ignore_index=ignore_index,
                         image_size=(h, w), identity=ident, palette=palette,
                         class_names=None if class_names is None else tuple(class_names))
        self.in_channels = int(inp.shape[0])
        self._first = (inp, target)

    def _num_classes(self, given: int | None, ignore: int | None) -> int:
        if given is None:
            given = getattr(self.source, "num_classes", None)
        if given is None and isinstance(getattr(self.source, "classes", None), (list, tuple)):
            given = len(self.source.classes)
        if given is not None:
            return check_int(given, "num_classes", low=2, error=DataError)
        top = -1
        for j in range(len(self._indices)):
            t = self._convert(j)[1]
            values = t[t != ignore] if ignore is not None else t
            if values.size:
                top = max(top, int(values.max()))
        if top < 1:
            raise DataError("cannot infer num_classes from the targets; pass num_classes")
        return top + 1

    def _convert(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        i = self._indices[j]
        where = f"{type(self.source).__name__}[{i}]"
        inp, target = _pair(self.source[i], where)
        inp, target = _as_input(inp, where), _as_target(target, where)
        if inp.shape[1:] != target.shape[-2:]:
            raise DataError(
                f"{where}: target size {target.shape[-2]}×{target.shape[-1]} (H×W) differs from "
                f"the input's {inp.shape[1]}×{inp.shape[2]}"
            )
        return inp, target

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i == 0 and self._first is not None:
            return self._first
        inp, target = self._convert(i)
        if self.num_classes is not None:
            bad = (target < 0) | (target >= self.num_classes)
            if self.ignore_index is not None:
                bad &= target != self.ignore_index
            if bad.any():
                raise DataError(
                    f"{type(self.source).__name__}[{self._indices[i]}]: label "
                    f"{int(target[bad].flat[0])} outside 0..{self.num_classes - 1}"
                    + (f" (ignore_index = {self.ignore_index})" if self.ignore_index is not None else "")
                )
        return inp, target

    def _meta(self, i: int) -> dict[str, Any]:
        return {"index": int(self._indices[i])}


def as_paired_dataset(dataset: Any, **options: Any) -> PairedDataset:
    """``dataset`` itself when it is a :class:`PairedDataset` (or behaves like one: ``task``,
    ``image_size`` and samples with ``.input``), else a :class:`WrappedDataset` of it."""
    if isinstance(dataset, PairedDataset) or (
        hasattr(dataset, "task") and hasattr(dataset, "image_size") and hasattr(dataset, "identity")
    ):
        if options:
            raise DataError(f"options {sorted(options)} apply only to a wrapped dataset")
        return dataset
    return WrappedDataset(dataset, **options)


def open_factory_dataset(
    spec: str, *, split: str | None = "train", args: Mapping[str, Any] | None = None,
    task: str | None = None, limit: int | None = None, sample: str = "first", seed: int = 0,
    ignore_index: int | None = None,
) -> WrappedDataset:
    """``--data package.module:function``: call it and wrap the dataset it returns.

    The function is called as ``function(split=SPLIT, **args)`` when it takes a ``split``
    parameter (or ``**kwargs``), else as ``function(**args)``.
    """
    fn = resolve_callable(spec, "--data", error=DataError)
    kwargs = dict(args or {})
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    takes_split = "split" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    if takes_split and split is not None:
        kwargs.setdefault("split", split)
    try:
        source = fn(**kwargs)
    except TypeError as exc:
        raise DataError(f"--data {spec}: calling it with {kwargs} failed: {exc}") from None
    identity = {"kind": "factory", "factory": spec, "args": dict(args or {}), "split": split}
    return WrappedDataset(source, task=task, limit=limit, sample=sample, seed=seed,
                          ignore_index=ignore_index, identity=identity)
