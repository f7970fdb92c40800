"""The registry of phases: the one list a new phase is added to.

Order is the order of the migration; each phase also says which phases it needs first
(:attr:`runbooklib.phase.Phase.after`).
"""

from __future__ import annotations

import importlib
from functools import cache

from .phase import Phase

PHASE_PACKAGES: tuple[str, ...] = (
    "overview", "vm", "kubernetes", "registry", "database", "storage", "cache", "logging", "edge", "foldin", "residency",
)


@cache
def phases() -> tuple[Phase, ...]:
    """Every registered phase, in migration order."""
    return tuple(importlib.import_module(f"runbooklib.{name}").PHASE for name in PHASE_PACKAGES)


def phase(name: str) -> Phase:
    for p in phases():
        if p.name == name:
            return p
    raise KeyError(f"no phase named {name!r}; registered: {', '.join(PHASE_PACKAGES)}")
