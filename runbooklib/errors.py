"""One exception family for everything the runbooks report to a person.

Every message names the file, field or host it is about and says what to do. The command line
prints ``str(error)`` and exits with ``error.exit_code``; notebooks show the same text.
"""

from __future__ import annotations

from dataclasses import dataclass


class RunbookError(Exception):
    """Base of every error the library raises on purpose."""

    exit_code = 1


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a parameter file: where (a field path) and what."""

    path: str
    message: str
    line: int | None = None

    def render(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line else file
        field = f" {self.path}:" if self.path else ""
        return f"{where}:{field} {self.message}"


class ParamsError(RunbookError):
    """The parameter file cannot be used; nothing remote has been touched."""

    exit_code = 2

    def __init__(self, file: str, problems: list[Problem]):
        self.file = file
        self.problems = problems
        count = len(problems)
        head = f"{file}: {count} problem{'s' if count != 1 else ''} in the parameter file; nothing was run"
        body = "\n".join("  " + p.render(file) for p in problems)
        super().__init__(f"{head}\n{body}")


class SecretError(RunbookError):
    """A secret reference cannot be resolved. The message names the field, never the value."""

    exit_code = 2


class SecretTextError(SecretError, TypeError):
    """A resolved Secret was about to become text (str, format, JSON); its value stays hidden."""


class LockedError(RunbookError):
    """Another run of the same notebook on the same environment holds the lock."""

    exit_code = 3


class ArchiveError(RunbookError):
    """The run archive is unreadable or was tampered with."""

    exit_code = 1


class ArchiveNotReady(ArchiveError):
    """The archive cannot take a record (unwritable, damaged ledger or index); nothing was run."""

    exit_code = 2


class NotebookError(RunbookError):
    """The notebook given is missing or not a notebook; nothing was run."""

    exit_code = 2


class RunFailed(RunbookError):
    """A notebook run failed; its record was archived anyway."""

    exit_code = 1


class HostError(RunbookError):
    """An operation failed on one host; the message starts with the host's name."""

    def __init__(self, host: str, message: str):
        self.host = host
        super().__init__(f"{host}: {message}")
