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

__all__ = ["Phase", "SuiteEntry"]


@dataclass(frozen=True)
class SuiteEntry:
    """One run of a runbook in ``runbook suite`` (see :mod:`runbooklib.suite`).

    A phase lists its entries in the order they run; the suite orders phases by :attr:`Phase.after`.
    """

    runbook: str  # notebook name under notebooks/ (without .ipynb)
    label: str = ""  # the step's own name when a runbook runs twice in a phase (default: the runbook)
    apply: bool = True  # runs with --apply when the suite applies (False: a report or gate that never changes anything)
    allow_not_ready: bool = False  # a bad verdict is a finding, not a stop (the preflight before the baseline)
    when: str = ""  # a parameter path (``storage.gluster``) that must be set, else the step is skipped, saying so
    needs: tuple[str, ...] = ()  # steps whose applied result this one uses: checked in the archive before it runs

    @property
    def name(self) -> str:
        return self.label or self.runbook


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
    suite: tuple[SuiteEntry, ...] = ()  # what ``runbook suite`` runs of this phase, in order
