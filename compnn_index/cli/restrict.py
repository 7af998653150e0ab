"""``--restrict`` of the command line: ids, names, ``KEY=VALUE`` or a file of them."""
from __future__ import annotations

import json
from pathlib import Path

from .. import checks
from ..errors import QueryError


def parse_restrict(text: str | None):
    """``--restrict``: '3,7,9' | 'material=brick' | '@FILE' (or a .txt/.json path).

    A text file lists ids or names separated by commas or whitespace; a JSON file holds a list
    of ids/names, a single one, or an object of image-meta values (``{"material": "brick"}``).
    The text, or what the file holds, is parsed by :func:`compnn_index.checks.parse_restrict`:
    ids come back as ints, names as strings.
    """
    if text is None:
        return None
    path = Path(text.lstrip("@"))
    if text.startswith("@") or (path.suffix in (".txt", ".json") and path.exists()):
        return checks.parse_restrict(_read_restrict_file(path), "--restrict")
    return checks.parse_restrict(text, "--restrict")


def _read_restrict_file(path: Path):
    """What a ``--restrict`` file holds: a list, an id or name, or an object of meta values."""
    if not path.is_file():
        raise QueryError(f"--restrict: no such file {str(path)!r}")
    try:
        raw = path.read_text(encoding="utf-8")
        items = checks.load_json(raw, f"--restrict file {str(path)!r}") if path.suffix == ".json" \
            else raw.replace(",", " ").split()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QueryError(f"--restrict: cannot read {str(path)!r}: {exc}") from None
    if isinstance(items, (int, str)) and not isinstance(items, bool):
        return [items]
    if not isinstance(items, (list, dict)):
        raise QueryError(
            f"--restrict: {str(path)!r} must hold a list of ids or names, or an object of "
            f"meta values; got a JSON {type(items).__name__}"
        )
    return items
