"""What a runbook shows a person: tables, folded details, progress bars and banners.

The plan/apply confirmation and the verdict are the run's (:mod:`runbooklib.notebook`); they use these.

Every display carries both an HTML and a plain-text form, so JupyterLab shows a formatted table,
the archived HTML keeps it, and a terminal or a headless log still reads well. Text passes through
the run's redactor first, so a secret resolved in the run never shows up in a cell's output.
"""

from __future__ import annotations

import html
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .secrets import Redactor

_NO_REDACTION = Redactor()


def in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def show(obj: Any) -> None:
    """Display in a notebook (rich), print elsewhere (text). Plain strings are printed as they are."""
    if isinstance(obj, str):
        print(obj)
    elif in_notebook():
        from IPython.display import display

        display(obj)
    else:
        print(repr(obj))


@dataclass
class Table:
    """A table with a title; ``rows`` are dicts or sequences matching ``columns``."""

    rows: Sequence[Any]
    columns: Sequence[str] | None = None
    title: str = ""
    redactor: Redactor = _NO_REDACTION
    # cells to highlight: a function (row_index, column) -> "ok" | "bad" | "warn" | ""
    status: Callable[[int, str], str] | None = None
    collapsed: bool = False  # HTML: folded under its title until clicked

    def _grid(self) -> tuple[list[str], list[list[str]]]:
        cols = list(self.columns or (self.rows[0].keys() if self.rows and isinstance(self.rows[0], dict) else []))
        grid = []
        for row in self.rows:
            values = [row.get(c, "") for c in cols] if isinstance(row, dict) else list(row)
            grid.append([self.redactor.scrub(_fmt(v)) for v in values])
        return cols, grid

    def __repr__(self) -> str:
        cols, grid = self._grid()
        widths = [max([len(c)] + [len(r[i]) for r in grid]) for i, c in enumerate(cols)]
        line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
        out = [self.title] if self.title else []
        out += [line, "  ".join("-" * w for w in widths)]
        out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in grid]
        if not grid:
            out.append("(none)")
        return "\n".join(out)

    def _repr_html_(self) -> str:
        cols, grid = self._grid()
        colors = {"ok": "#e6f4ea", "bad": "#fce8e6", "warn": "#fef7e0"}
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in cols)
        body = []
        for i, r in enumerate(grid):
            cells = []
            for c, v in zip(cols, r):
                tone = self.status(i, c) if self.status else ""
                style = f"text-align:left;background:{colors[tone]}" if tone in colors else "text-align:left"
                style = f" style='{style}'"
                cells.append(f"<td{style}>{html.escape(v)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        if not grid:
            body.append(f"<tr><td colspan='{max(len(cols), 1)}'><em>(none)</em></td></tr>")
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        if self.collapsed:
            return f"<details><summary><strong>{html.escape(self.title or 'table')}</strong></summary>{table}</details>"
        title = f"<p><strong>{html.escape(self.title)}</strong></p>" if self.title else ""
        return title + table


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple, set)):
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


@dataclass
class Details:
    """Long text (a diff, a log) folded under a one-line summary in HTML; printed whole as text."""

    summary: str
    text: str

    def __repr__(self) -> str:
        return f"{self.summary}\n{self.text}"

    def _repr_html_(self) -> str:
        return (f"<details><summary>{html.escape(self.summary)}</summary>"
                f"<pre style='font-size:85%'>{html.escape(self.text)}</pre></details>")


@dataclass
class Banner:
    """A one-block summary at the top of a run: what, where, which mode."""

    lines: list[tuple[str, str]]
    tone: str = "info"  # info | lab | apply

    def __repr__(self) -> str:
        width = max(len(k) for k, _ in self.lines)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in self.lines)

    def _repr_html_(self) -> str:
        colors = {"info": "#e8f0fe", "lab": "#fef7e0", "apply": "#fce8e6"}
        rows = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
                       f"<td style='text-align:left'>{html.escape(v)}</td></tr>" for k, v in self.lines)
        return f"<div style='background:{colors.get(self.tone, '#eee')};padding:6px'><table>{rows}</table></div>"


class _Silent:
    """A progress bar that draws nothing: headless, the per-host and per-change lines tell the story."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None):
        self.iterable, self.total, self.n = iterable, total, 0

    def __iter__(self):
        for item in self.iterable or ():
            yield item
            self.n += 1

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None, headless: bool = False):
    """A progress bar: a live widget in JupyterLab, a text bar on a terminal, nothing in pipes and records."""
    if in_notebook() and not headless:
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total)
    if headless or not sys.stderr.isatty():
        return _Silent(iterable, total)
    from tqdm.std import tqdm

    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, mininterval=1.0, ascii=True, dynamic_ncols=False, ncols=90)
