"""Search methods that turn query hyperpatches into an :class:`NNField`.

``exact_search`` is dense GEMM over the shortlisted images' id ranges; ``patchmatch`` /
``patchmatch_reference`` (HyperPatch-Match, ``search/patchmatch.py``) run the native kernel or
its NumPy reference.

The HyperPatch-Match functions are imported here, eagerly, on purpose: the function
``patchmatch`` shares its name with the submodule ``search/patchmatch.py``, and importing a
submodule binds the *module* to the package attribute. A lazy ``__getattr__`` export therefore
breaks as soon as anyone imports the submodule first; binding the function after the submodule
import (below) is the only order that always wins. The import stays optional: if it fails, this
package still loads, and accessing ``patchmatch`` raises ``ImportError`` naming the cause.
"""
from __future__ import annotations

from typing import Any

from .exact import exact_search
from .field import NNField

__all__ = ["NNField", "exact_search", "patchmatch", "patchmatch_reference"]

try:
    from .patchmatch import patchmatch, patchmatch_reference
except ImportError as _exc:  # pragma: no cover - only on a broken installation
    _PATCHMATCH_ERROR: str | None = f"{type(_exc).__name__}: {_exc}"
else:
    _PATCHMATCH_ERROR = None


def __getattr__(name: str) -> Any:
    if name in ("patchmatch", "patchmatch_reference") and _PATCHMATCH_ERROR is not None:
        raise ImportError(
            f"compnn_index.search.{name} is unavailable: search/patchmatch.py failed to import "
            f"({_PATCHMATCH_ERROR})"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
