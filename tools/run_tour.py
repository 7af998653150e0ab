"""Execute the notebook tour (``docs/tour.ipynb``) on a demo folder's stores.

    python tools/run_tour.py indexes/demo                      # -> indexes/demo/tour.ipynb
    python tools/run_tour.py indexes/demo --out /tmp/tour.ipynb

``make demo`` runs it after ``compnn demo``. The notebook in ``docs/`` is kept without outputs;
the executed copy (pictures included) is written to ``--out``. Exits non-zero, naming the cell,
when a cell fails.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

TOUR = Path(__file__).resolve().parents[1] / "docs" / "tour.ipynb"


def execute_tour(demo: str | Path, out: str | Path, *, timeout: int = 600):
    """Run every cell of the tour with ``COMPNN_DEMO=demo`` (from ``docs/``); write it to ``out``."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(TOUR, as_version=4)
    os.environ["COMPNN_DEMO"] = str(Path(demo).resolve())
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(TOUR.parent)}}).execute()
    finally:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out)
    return nb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("demo", help="the folder 'compnn demo' wrote (index_photo2labels inside)")
    p.add_argument("--out", default=None, help="executed notebook (default: DEMO/tour.ipynb)")
    a = p.parse_args(argv)
    if not (Path(a.demo) / "index_photo2labels").is_dir():
        print(f"run_tour: {a.demo!r} holds no index_photo2labels store; run 'make demo' first", file=sys.stderr)
        return 2
    out = Path(a.out or Path(a.demo) / "tour.ipynb")
    from nbclient.exceptions import CellExecutionError

    try:
        execute_tour(a.demo, out)
    except CellExecutionError as exc:
        print(f"run_tour: a cell of {TOUR.name} failed (executed copy: {out}):\n{exc}", file=sys.stderr)
        return 1
    print(f"tour: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
