"""Search methods that turn query hyperpatches into an :class:`NNField`.

``exact_search`` (dense GEMM over the shortlisted images' id ranges) is imported eagerly; the
HyperPatch-Match wrappers (``patchmatch``, ``patchmatch_reference``) live in
``search/patchmatch.py`` and are imported on first access, so this package loads even where the
native kernel is not built.
"""
from __future__ import annotations

import importlib
from typing import Any

from .exact import exact_search
from .field import NNField

__all__ = ["NNField", "exact_search", "patchmatch", "patchmatch_reference"]

_LAZY = {"patchmatch": ".patchmatch", "patchmatch_reference": ".patchmatch"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
