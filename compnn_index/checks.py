"""Checks at the edge: the one integer parser, bounded ints, choices, and the thread limiter.

Every surface (Python API, command line, HTTP service) validates user options through these
functions, so a bound or a message is defined once and is identical everywhere. Messages quote
the bad value and say what was expected; the error class is chosen by the caller (``QueryError``
for query options, ``ModelError`` for model options, ...).

Threads are limited here and only here: :func:`thread_limit` is entered once at the outer entry
point (a CLI command, a service worker's call, a public API call) and sets torch's intra-op pool
and both OpenMP runtimes (the libgomp copies torch and FAISS each bring) for its duration,
restoring them afterwards. Inner code asks :func:`current_threads` instead of limiting again.
"""
from __future__ import annotations

import contextvars
import os
import re
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import CompNNError, QueryError


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


#: Upper bound on any thread count: a generous multiple of the cores, never below 8. A request
#: for 100,000 threads would otherwise spawn thousands of OS threads and crash the process.
MAX_THREADS = max(8, 4 * cpu_count())
#: Bounds of the HyperPatch-Match options (the same on every surface).
MAX_ITERATIONS = 256
MAX_SAMPLES = 256
MAX_JUMPS = 256
#: Largest HyperPatch-Match seed (the kernel's counter-based generator takes 63 bits).
MAX_SEED = 2**63 - 1
#: Longest ``restrict`` list accepted (ids or names).
MAX_RESTRICT = 100_000
#: Deepest nesting of arrays and objects accepted in a JSON document (a request body, a
#: ``--restrict`` file, a manifest). Deeper documents are refused before they can recurse.
MAX_JSON_DEPTH = 32
#: ``(low, high)`` of the integer query options, the same on every surface (the API's
#: :class:`~compnn_index.options.QueryOptions`, the command line's flags, the HTTP fields).
#: ``top_k``'s upper bound is the database's image count (``QueryOptions.resolve_top_k``).
QUERY_INT_BOUNDS: dict[str, tuple[int, int | None]] = {
    "iterations": (0, MAX_ITERATIONS),
    "samples": (0, MAX_SAMPLES),
    "jumps": (0, MAX_JUMPS),
    "seed": (0, MAX_SEED),
    "seed_images": (1, None),
}

_INT_TEXT = re.compile(r"[+-]?[0-9]+")


def parse_int(text: Any, name: str, *, low: int | None = None, high: int | None = None,
              error: type[CompNNError] = QueryError) -> int:
    """Parse an integer from text (or accept an int) and check its bounds.

    Only ASCII decimal digits with one optional sign are integers: ``"²"``, ``"+-3"``, ``"--3"``,
    ``"1.5"`` and ``" 3 "`` are refused (``str.isdigit`` would pass some of them, and ``int()``
    then raises a bare ``ValueError``).

    >>> parse_int("12", "top_k", low=1)
    12
    >>> parse_int("--3", "top_k")
    Traceback (most recent call last):
    ...
    compnn_index.errors.QueryError: Expected top_k to be an integer, but top_k = '--3'
    """
    if isinstance(text, str):
        if len(text) > 40 or not _INT_TEXT.fullmatch(text):
            raise error(f"Expected {name} to be an integer, but {name} = {_quote(text)}")
        value: Any = int(text)
    else:
        value = text
    return check_int(value, name, low=low, high=high, error=error)


def check_int(value: Any, name: str, *, low: int | None = None, high: int | None = None,
              error: type[CompNNError] = QueryError) -> int:
    """``value`` as an int if it is an integer (not a bool) within ``[low, high]``; else ``error``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise error(f"Expected {name} to be an integer, but {name} = {_quote(value)}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise error(f"Expected {_bounds(name, low, high)}, but {name} = {value}")
    return value


def is_int_text(text: str) -> bool:
    """True if ``text`` is an ASCII decimal integer with at most one sign (what :func:`parse_int` accepts)."""
    return isinstance(text, str) and len(text) <= 40 and _INT_TEXT.fullmatch(text) is not None


def is_int(value: Any) -> bool:
    """True for Python and NumPy integers (bools excluded)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_choice(value: Any, name: str, choices: Sequence[str], *,
                 error: type[CompNNError] = QueryError) -> str:
    """``value`` if it is one of ``choices``; else ``error`` listing them."""
    if not isinstance(value, str) or value not in choices:
        raise error(f"Unknown {name} {_quote(value)}; expected one of {', '.join(choices)}")
    return value


def check_number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 error: type[CompNNError] = QueryError) -> float:
    """A finite real number, at least ``low`` and at most ``high`` if given."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value):
        raise error(f"Expected {name} to be a finite number, but {name} = {_quote(value)}")
    if low is not None and value < low:
        raise error(f"Expected {name} >= {low}, but {name} = {value}")
    if high is not None and value > high:
        raise error(f"Expected {name} <= {high}, but {name} = {value}")
    return float(value)


def check_threads(threads: Any, name: str = "threads", *,
                  error: type[CompNNError] = QueryError) -> int | None:
    """None, or an int in ``[1, MAX_THREADS]``."""
    if threads is None:
        return None
    return parse_int(threads, name, low=1, high=MAX_THREADS, error=error)


# ------------------------------------------------------------------------------------ threads

_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("compnn_thread_limit", default=None)


def current_threads() -> int:
    """The thread count in force: the innermost :func:`thread_limit`, else every usable CPU."""
    n = _LIMIT.get()
    return n if n is not None else cpu_count()


@contextmanager
def thread_limit(threads: int | None) -> Iterator[int]:
    """Limit torch, OpenMP (torch's and FAISS's libgomp) and BLAS threads inside the block.

    ``None`` keeps the limit already in force (an enclosing ``thread_limit``) or, at the top,
    leaves every runtime as it is. Nested calls with the same count cost nothing. Yields the count
    in force, which native code (the HyperPatch-Match kernel) uses for its own pool.
    """
    threads = check_threads(threads)
    if threads is None or threads == _LIMIT.get():
        yield current_threads()
        return
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    token = _LIMIT.set(threads)
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield threads
    finally:
        torch.set_num_threads(previous)
        _LIMIT.reset(token)


# ------------------------------------------------------------------------------------ helpers


def _quote(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bounds(name: str, low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"{low} <= {name} <= {high}"
    if low is not None:
        return f"{name} >= {low}"
    return f"{name} <= {high}"


def parse_restrict(value: Any, name: str = "restrict") -> Any:
    """The one parser of ``restrict`` (property / bias control), for the CLI, HTTP and Python.

    Accepts None; a ``{"key": value}`` mapping of image meta; ``"KEY=VALUE"``; a list of image ids
    and names; or a comma-separated string of them. Returns None, a dict, or a list of ints (ids)
    and strings (names) — what :meth:`CompNN.candidates` takes. Refuses empty or nested lists
    and lists longer than :data:`MAX_RESTRICT`.

    >>> parse_restrict("3, 7,brick_12")
    [3, 7, 'brick_12']
    >>> parse_restrict("material=brick")
    {'material': 'brick'}
    """
    if value is None:
        return None
    # Count before splitting: an 8 MiB "1,1,1,..." is refused without building 4 million items.
    if (isinstance(value, str) and value.count(",") >= MAX_RESTRICT) or \
            (isinstance(value, (list, tuple)) and len(value) > MAX_RESTRICT):
        raise QueryError(f"Expected at most {MAX_RESTRICT} {name} entries, got more")
    if isinstance(value, dict):
        if not value or not all(isinstance(k, str) and isinstance(v, (str, int)) and not isinstance(v, bool)
                                for k, v in value.items()):
            raise QueryError(f"Expected {name} as {{\"key\": value}} pairs of image meta, got {_quote(value)}")
        return dict(value)
    if isinstance(value, str) and "=" in value:
        key, _, val = value.partition("=")
        if not key.strip() or not val.strip():
            raise QueryError(f"Expected {name} as KEY=VALUE (e.g. material=brick), got {_quote(value)}")
        return {key.strip(): val.strip()}
    if isinstance(value, str):
        items: list = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = []
        for v in value:
            if isinstance(v, str) and "," in v:
                items.extend(p.strip() for p in v.split(",") if p.strip())
            else:
                items.append(v)
    elif is_int(value):
        items = [int(value)]
    else:
        raise QueryError(f"Expected {name} to be ids or names (a list or comma-separated), or "
                         f"KEY=VALUE, but {name} = {_quote(value)}")
    if not items:
        raise QueryError(f"{name} is empty ({_quote(value)}): expected at least one database image "
                         "id or name, or KEY=VALUE")
    if len(items) > MAX_RESTRICT:
        raise QueryError(f"Expected at most {MAX_RESTRICT} {name} entries, got {len(items)}")
    out: list = []
    for v in items:
        if is_int(v):
            out.append(int(v))
        elif isinstance(v, str):
            out.append(int(v) if is_int_text(v) else v)
        else:
            raise QueryError(f"{name}: expected image ids or names, got {_quote(v)}")
    return out


# ------------------------------------------------------------------------------------ JSON


def check_json_depth(value: Any, what: str = "JSON", *, limit: int = MAX_JSON_DEPTH,
                     error: type[CompNNError] = QueryError) -> Any:
    """``value`` if its arrays and objects nest at most ``limit`` deep; else ``error``.

    Iterative (a deep document cannot exhaust the stack here), linear in the containers' sizes.
    """
    stack = [(value, 1)] if isinstance(value, (list, dict)) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise error(f"{what} is nested more than {limit} levels deep")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (list, dict)))
    return value


def load_json(text: str | bytes, what: str = "JSON", *, limit: int = MAX_JSON_DEPTH,
              error: type[CompNNError] = QueryError) -> Any:
    """``json.loads`` that refuses documents nested deeper than ``limit`` with ``error``.

    Invalid JSON raises ``json.JSONDecodeError`` / ``UnicodeDecodeError`` as usual (callers word
    that message themselves); nesting deep enough to exhaust the parser's recursion is ``error``,
    never a ``RecursionError``.
    """
    import json

    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{what} is nested more than {limit} levels deep") from None
    return check_json_depth(value, what, limit=limit, error=error)


_CALLABLE_SPEC = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def is_callable_spec(text: Any) -> bool:
    """True for ``package.module:function`` text (what :func:`resolve_callable` reads)."""
    return isinstance(text, str) and len(text) <= 300 and _CALLABLE_SPEC.fullmatch(text) is not None


def resolve_callable(spec: Any, name: str, *, error: type[CompNNError] = QueryError) -> Any:
    """Import ``package.module:function`` (``function`` may be dotted: ``module:Class.build``).

    The user's own code, named on the command line (``--model-factory``, ``--data``), is
    imported like any other module; nothing else is executed. Refusals name the option, the
    module and what went wrong.
    """
    import importlib

    if not is_callable_spec(spec):
        raise error(f"Expected {name} as package.module:function, but {name} = {_quote(spec)}")
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"{name}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}); "
                    "is it installed, or on PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise error(f"{name}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{name}: {spec} is a {type(obj).__name__}, expected a function or class")
    return obj


def parse_exclude(value: Any, name: str = "exclude") -> list:
    """Database images never matched: ids and names as :func:`parse_restrict` reads them
    (a list, or a comma-separated string), without the KEY=VALUE form. None or empty: ``[]``."""
    if value is None or (isinstance(value, (str, list, tuple)) and not len(value)):
        return []
    out = parse_restrict(value, name)
    if isinstance(out, dict):
        raise QueryError(f"Expected {name} as image ids or names, got {_quote(value)}")
    return out
