"""The house rules as a test: data flows one way, cli/service → jobs → api → index/search/compose
→ features → models/data, and no module reaches upwards or across a forbidden arrow."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "compnn_index"

#: (importer part, imported part) pairs that must never occur. A "part" is the first component
#: below ``compnn_index`` (``index``, ``search``, ``api``, ``jobs``, ...).
FORBIDDEN = {
    ("index", "search"),      # the store knows nothing of how it is searched
    ("index", "compose"),
    ("index", "api"),
    ("search", "compose"),    # search returns fields; pasting is someone else's job
    ("search", "api"),
    ("compose", "api"),
    ("features", "index"),
    ("features", "search"),
    ("models", "index"),
    ("models", "features"),
    ("data", "models"),
    ("data", "index"),
    ("service", "search"),    # the service uses the API and jobs only
    ("service", "index"),
    ("service", "compose"),
    ("service", "features"),
    ("index", "distributed"),  # the store knows nothing of where it is searched
    ("search", "distributed"),
    ("service", "distributed"),  # clusters are reached through the API only
    ("jobs", "distributed"),
    ("cli", "distributed"),
}
#: Layers from the top; a part may import only parts of its own layer or below.
LAYERS = [
    {"cli"},
    {"service"},
    {"jobs"},
    {"api"},
    {"results", "pictures"},
    {"index", "search", "distributed", "compose", "metrics", "activations"},
    {"features"},
    {"models", "data"},
    {"options", "checks", "errors", "__init__"},
]
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute compnn_index module) for every import in the file, lazy ones included."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("compnn_index")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("compnn_index"):
                if target == "compnn_index":  # from compnn_index import x: x is the part, if a module
                    out += [(node.lineno, f"compnn_index.{a.name}" if (root / a.name).is_dir()
                             or (root / f"{a.name}.py").is_file() else "compnn_index") for a in node.names]
                else:
                    out.append((node.lineno, target))
    return out


def violations(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        src = _part(_module_name(path, root))
        for line, target in imports_of(path, root):
            dst = _part(target)
            if dst == src:
                continue
            where = f"{path.relative_to(root.parent)}:{line} imports {target}"
            if (src, dst) in FORBIDDEN:
                found.append(f"{where} ({src} → {dst} is forbidden)")
            elif src in RANK and dst in RANK and RANK[dst] < RANK[src]:
                found.append(f"{where} ({src} may not import upwards into {dst})")
            elif src not in RANK or dst not in RANK:
                found.append(f"{where} (part {src if src not in RANK else dst!r} has no place in LAYERS)")
    return found


def test_the_package_follows_the_import_rules():
    assert violations() == []


@pytest.mark.parametrize("src, line, why", [
    ("index/extra.py", "from ..search import exact_search\n", "index → search is forbidden"),
    ("service/extra.py", "from ..search.exact import exact_search\n", "service → search is forbidden"),
    ("api_extra.py", "from .jobs import workflows\n", "may not import upwards into jobs"),
    ("models/extra.py", "from compnn_index.index import IndexStore\n", "models → index is forbidden"),
    ("data/extra.py", "def f():\n    from ..models import build_model\n", "data → models is forbidden"),
])
def test_a_forbidden_import_is_caught(tmp_path, src, line, why):
    root = tmp_path / "compnn_index"
    (root / Path(src).parent).mkdir(parents=True, exist_ok=True)
    (root / src).write_text(line)
    if src == "api_extra.py":  # a new top-level module is a part of its own: give it the API's rank
        RANK["api_extra"] = RANK["api"]
    try:
        found = violations(root)
    finally:
        RANK.pop("api_extra", None)
    assert len(found) == 1 and why in found[0], found
