"""Secrets are references in parameter files, resolved only when a step needs them.

A secret field holds ``env:NAME`` (an environment variable), ``file:PATH`` (a file; relative paths
are relative to the parameter file) or, in a lab parameter file only, a literal value. Resolved
values are wrapped in :class:`Secret`, whose ``repr`` never shows the value, and registered with a
:class:`Redactor` so that anything the library displays or archives is scrubbed of them: the plain
value, each long line of a multi-line value, and its base64 forms (standalone, URL-safe, and as it
appears inside a larger base64 blob at any of the three byte alignments).
"""

from __future__ import annotations

import base64
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import SecretError

SCHEMES = ("env", "file")
_SCHEME_RE = re.compile(r"^(env|file):(.+)$", re.DOTALL)


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives. ``scheme`` is ``env``, ``file`` or ``literal``."""

    scheme: str
    target: str

    @classmethod
    def parse(cls, value: Any) -> "SecretRef":
        if isinstance(value, SecretRef):
            return value
        if not isinstance(value, str) or not value:
            raise ValueError("expected a secret reference such as env:NAME or file:/path")
        m = _SCHEME_RE.match(value)
        if m:
            target = m.group(2).strip()
            if m.group(1) == "env" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", target):
                raise ValueError(f"env:{target!r} is not an environment variable name")
            return cls(m.group(1), target)
        return cls("literal", value)

    @property
    def is_literal(self) -> bool:
        return self.scheme == "literal"

    def path(self, base_dir: Path | None = None) -> Path:
        """The file a ``file:`` reference points at (for consumers that want a path, e.g. SSH keys)."""
        if self.scheme != "file":
            raise SecretError(f"{self} is not a file reference; this field needs file:PATH")
        p = Path(self.target).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        return p

    def resolve(self, base_dir: Path | None = None, field: str = "secret") -> str:
        """The secret's value. Errors name the field and the reference, never a value."""
        if self.scheme == "literal":
            return self.target
        if self.scheme == "env":
            value = os.environ.get(self.target)
            if value is None:
                raise SecretError(
                    f"{field}: environment variable {self.target} is not set; export it before "
                    f"the run (the parameter file says env:{self.target})"
                )
            return value
        p = self.path(base_dir)
        try:
            return read_secret_file(p).rstrip("\n")
        except OSError as e:
            raise SecretError(
                f"{field}: cannot read secret file {p} ({e.strerror}); create it or fix the "
                f"reference file:{self.target}"
            ) from None
        except ValueError as e:
            raise SecretError(f"{field}: secret file {p} {e}; fix the reference file:{self.target}") from None

    def __str__(self) -> str:
        return "<literal secret>" if self.is_literal else f"{self.scheme}:{self.target}"

    def __repr__(self) -> str:
        return f"SecretRef({str(self)!r})"


MAX_SECRET_BYTES = 1 << 20  # a kubeconfig or a service-account key is a few kB


def read_secret_file(path: Path) -> str:
    """A secret file's text: a regular UTF-8 file of bounded size (a FIFO must not block a check).

    Raises OSError when it cannot be read and ValueError (a sentence without the content) when it is
    not a file a secret can live in.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("is not a regular file")
        data = os.read(fd, MAX_SECRET_BYTES + 1)
        while len(data) <= MAX_SECRET_BYTES and (more := os.read(fd, MAX_SECRET_BYTES + 1 - len(data))):
            data += more
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise ValueError(f"is larger than {MAX_SECRET_BYTES // 1024} KiB; is this the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("is not UTF-8 text") from None


class Secret:
    """A resolved secret. Printing it shows the field, never the value; ``reveal()`` gives it."""

    __slots__ = ("_value", "field")

    def __init__(self, value: str, field: str):
        self._value = value
        self.field = field

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.field}: ********)"

    __str__ = __repr__

    def __reduce__(self):  # never let a pickle carry the value into a file
        raise TypeError("a Secret cannot be pickled")


def _b64_variants(raw: bytes) -> Iterable[str]:
    std = base64.b64encode(raw).decode()
    yield std
    yield std.rstrip("=")
    yield base64.urlsafe_b64encode(raw).decode().rstrip("=")
    # Inside a larger blob (a dockerconfigjson, a kubeconfig) the value starts at any byte offset;
    # for each alignment keep only the characters that depend on the value alone.
    for offset in range(3):
        enc = base64.b64encode(b"\0" * offset + raw).decode().rstrip("=")
        skip = (offset * 4 + 2) // 3  # characters touched by the padding bytes in front
        keep = (4 * (len(raw) + offset)) // 3  # characters whose six bits all come from the value
        core = enc[skip:keep]
        if len(core) >= 8:
            yield core
            yield core.replace("+", "-").replace("/", "_")


class Redactor:
    """Scrubs registered secret values, and their encoded forms, from text and structures."""

    def __init__(self) -> None:
        self._needles: dict[str, str] = {}
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str, label: str) -> None:
        if not value:
            return
        forms = {value}
        if "\n" in value:
            forms.update(line.strip() for line in value.splitlines() if len(line.strip()) >= 16)
        forms.update(v for v in _b64_variants(value.encode()) if v)
        for form in forms:
            self._needles.setdefault(form, label)
        self._pattern = None

    def merge(self, other: "Redactor") -> None:
        for needle, label in other._needles.items():
            self._needles.setdefault(needle, label)
        self._pattern = None

    def __len__(self) -> int:
        return len(self._needles)

    @property
    def needles(self) -> dict[str, str]:
        """Every byte form that must never appear in a record, mapped to its field label."""
        return dict(self._needles)

    def _regex(self) -> re.Pattern[str] | None:
        if self._pattern is None and self._needles:
            ordered = sorted(self._needles, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(n) for n in ordered))
        return self._pattern

    def scrub(self, text: str) -> str:
        rx = self._regex()
        if rx is None or not text:
            return text
        return rx.sub(lambda m: f"[redacted:{self._needles[m.group(0)]}]", text)

    def scrub_obj(self, obj: Any) -> Any:
        """Scrub every string inside dicts and lists (keys included), returning a new structure."""
        if isinstance(obj, str):
            return self.scrub(obj)
        if isinstance(obj, dict):
            return type(obj)((self.scrub(k) if isinstance(k, str) else k, self.scrub_obj(v)) for k, v in obj.items())
        if isinstance(obj, list):
            return [self.scrub_obj(v) for v in obj]
        return obj

    def leaks(self, data: bytes) -> list[str]:
        """Labels of secrets found in ``data`` (the last line of defence before a file is kept)."""
        found = []
        for needle, label in self._needles.items():
            if needle.encode() in data and label not in found:
                found.append(label)
        return found
