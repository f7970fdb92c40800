"""Generated parts of the runbooks' markdown, so that what a notebook promises cannot drift.

A markdown cell may hold a block::

    <!-- BEGIN generated: rollback table of runbooklib.vm.operations -->
    ...
    <!-- END generated -->

whose body is rendered from that module's ``OPERATIONS`` (:func:`runbooklib.phase.steps.rollback_markdown`).
``python -m runbooklib.phase.doc notebooks/*.ipynb`` rewrites the blocks; ``--check`` only reports
stale ones (the test suite runs it).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

import nbformat

from .steps import rollback_markdown

BLOCK = re.compile(r"(<!-- BEGIN generated: rollback table of ([\w.]+) -->\n)(.*?)(<!-- END generated -->)", re.S)


def render_blocks(text: str) -> str:
    def fill(m: re.Match) -> str:
        module = importlib.import_module(m.group(2))
        return m.group(1) + rollback_markdown(module.OPERATIONS) + "\n" + m.group(4)
    return BLOCK.sub(fill, text)


def stale_cells(path: Path) -> list[int]:
    """Indices of markdown cells whose generated blocks differ from what the code renders now."""
    nb = nbformat.read(path, as_version=4)
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and render_blocks(c.source) != c.source]


def sync(path: Path) -> bool:
    """Rewrite the notebook's generated blocks; True if anything changed."""
    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            new = render_blocks(cell.source)
            if new != cell.source:
                cell.source, changed = new, True
    if changed:
        nbformat.write(nb, path)
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runbooklib.phase.doc", description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--check", action="store_true", help="report stale blocks, change nothing (exit 1 if any)")
    args = ap.parse_args(argv)
    stale = []
    for path in args.notebooks:
        if args.check:
            if stale_cells(path):
                stale.append(path)
        elif sync(path):
            print(f"updated {path}")
    for path in stale:
        print(f"{path}: generated blocks are stale; run `make notebooks`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
