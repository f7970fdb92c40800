"""What every phase is made of, written once.

A phase is a package ``runbooklib/<name>/`` that declares a :class:`Phase` in its ``__init__``
(its parameter section, its rules, its runbooks, the phases it needs first) and, where it touches
hosts, the three halves of the house shape:

- ``facts.py``: :class:`~runbooklib.phase.facts.Fact` s, gathered over a transport;
- ``checks.py``: :class:`~runbooklib.phase.checks.Rule` s judged on facts, with a :class:`Status`;
- ``operations.py``: an ordered ``OPERATIONS`` index of functions, one per ensured state, each
  returning the :class:`~runbooklib.phase.steps.Step` s still needed (none when converged).

Registering the package in :data:`runbooklib.phases.PHASE_PACKAGES` is the only shared edit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Phase"]


@dataclass(frozen=True)
class Phase:
    """A migration phase as the rest of the project sees it."""

    name: str  # the package name under runbooklib
    title: str
    runbooks: tuple[str, ...] = ()  # notebook names (without .ipynb), in order
    section: str | None = None  # the parameter file's key for this phase's settings
    model: type | None = None  # the section's pydantic model
    required: bool = False  # True: the section always exists (its model's defaults fill it)
    rules: Callable[[Any], list] | None = None  # cross-field rules: rules(params) -> list[Problem]
    after: tuple[str, ...] = ()  # phases that must have run first
