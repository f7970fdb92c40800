"""Secrets are references in parameter files, resolved only when a step needs them.

A secret field holds ``env:NAME`` (an environment variable), ``file:PATH`` (a file; relative paths
are relative to the parameter file) or, in a lab parameter file only, a literal value. Resolved
values are wrapped in :class:`Secret`, which refuses to become text by accident, and registered with
a :class:`Redactor` so that anything the library displays or archives is scrubbed of them.

A secret is taken apart (:func:`secret_parts`): the value, each long line of a multi-line value (a
PEM body line by line), and every secret-bearing string inside a structured secret (the
``private_key`` of a service-account JSON key, the token or decoded ``client-key-data`` of a
kubeconfig, the password and decoded ``auth`` of a dockerconfigjson). Each part is looked for in
every form it is written out in (:func:`encoded_forms`): plain, JSON-escaped, ``repr``,
HTML-escaped, URL-encoded, hex, and base64 (standard, URL-safe, and inside a larger base64 blob at
any of the three byte alignments).
"""

from __future__ import annotations

import base64
import functools
import html
import json
import os
import re
import stat
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from .errors import SecretError, SecretTextError

SCHEMES = ("env", "file")
_SCHEME_RE = re.compile(r"^(env|file):(.+)$", re.DOTALL)


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives. ``scheme`` is ``env``, ``file`` or ``literal``."""

    scheme: str
    target: str

    @classmethod
    def parse(cls, value: Any) -> SecretRef:
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
    """A resolved secret that does not turn into text by accident.

    ``repr`` shows the field, never the value (so a notebook displaying it shows
    ``Secret(field: ********)``); ``str``, ``format`` (f-strings), ``%s``, ``bytes`` and JSON refuse
    with :class:`~runbooklib.errors.SecretTextError`, and pickling is refused. Only ``reveal()``
    gives the value: call it where the value must go (a library call that logs in, a file written
    with mode 600), never in a print. Deliberate obfuscation (reversing, rot13) is beyond any
    scrubber; this type makes every accidental path an error instead.
    """

    __slots__ = ("_value", "field")

    def __init__(self, value: str, field: str):
        self._value = value
        self.field = field

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.field}: ********)"

    def _refuse(self, how: str) -> NoReturn:
        raise SecretTextError(
            f"{self.field}: a secret cannot become text by {how}; pass the Secret to the library call "
            "that needs it, or call .reveal() exactly where the value must go (never in a print)")

    def __str__(self) -> str:  # noqa: PLE0307 (it never returns)
        self._refuse("str()")

    def __format__(self, spec: str) -> str:
        self._refuse("formatting (an f-string or format())")

    def __bytes__(self) -> bytes:  # noqa: PLE0308 (it never returns)
        self._refuse("bytes()")

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


def _text_variants(value: str) -> set[str]:
    """The ways a string is written out as text: JSON and Python string escapes, HTML, URLs, hex."""
    json_ascii = json.dumps(value)[1:-1]
    json_utf8 = json.dumps(value, ensure_ascii=False)[1:-1]
    py = repr(value)[1:-1]
    escaped = {value, json_ascii, json_utf8, py}
    forms = set(escaped)
    for form in escaped:  # a JSON or repr form shown in HTML, or HTML written into JSON
        forms.add(html.escape(form, quote=False))
        forms.add(html.escape(form))
        forms.add(html.escape(form).replace("&#x27;", "&#39;").replace("&quot;", "&#34;"))  # markupsafe, jinja
    forms.add(json.dumps(html.escape(value))[1:-1])
    forms.add(urllib.parse.quote(value, safe=""))
    forms.add(urllib.parse.quote(value))
    forms.add(urllib.parse.quote_plus(value))
    raw = value.encode()
    forms.add(raw.hex())
    forms.add(raw.hex().upper())
    return forms


def encoded_forms(value: str) -> set[str]:
    """Every form of ``value`` the redactor looks for: plain, escaped (JSON, repr, HTML), URL-encoded,
    hex, and base64 (standard, URL-safe, and inside a larger blob)."""
    forms = _text_variants(value)
    forms.update(_b64_variants(value.encode()))
    return {f for f in forms if f}


# Keys whose values carry a secret inside a structured one (service-account JSON, kubeconfig,
# dockerconfigjson); public parts (certificates, e-mail addresses, server URLs) are left readable.
_SECRET_KEYS = re.compile(r"private|secret|password|passwd|token|auth$|^auth|key(-data)?$|credential", re.IGNORECASE)
_PUBLIC_KEYS = re.compile(r"certificate|public|_url$|_uri$|^type$|email|username|^user$|client_id", re.IGNORECASE)
_MIN_PART = 8  # shorter inner values would match ordinary text; the whole value is always a needle
_MIN_LINE = 16


def secret_parts(value: str) -> set[str]:
    """The value and the secret-bearing pieces of it that may be printed on their own.

    Each line of a multi-line value (a PEM body line by line); every secret-bearing string inside a
    JSON or YAML document (``private_key`` of a service-account key, ``token`` and the decoded
    ``client-key-data`` of a kubeconfig, ``password`` and the decoded ``auth`` of a
    dockerconfigjson), themselves taken apart the same way.
    """
    parts: set[str] = set()
    _collect(value, parts, depth=0)
    return parts


def _collect(value: str, parts: set[str], depth: int) -> None:
    value = value.strip("\n")
    if not value or value in parts or depth > 4:
        return
    parts.add(value)
    if "\n" in value:
        for line in value.splitlines():
            if len(line.strip()) >= _MIN_LINE:
                parts.add(line.strip())
    doc = _parse_document(value)
    if doc is not None:
        for key, inner in _strings(doc):
            if len(inner) < _MIN_PART or _PUBLIC_KEYS.search(key) or not _SECRET_KEYS.search(key):
                continue
            _collect(inner, parts, depth + 1)
            decoded = _b64_text(inner)
            if decoded is not None:
                _collect(decoded, parts, depth + 1)
                if ":" in decoded and "\n" not in decoded:  # docker's auth is base64("user:password")
                    _collect(decoded.split(":", 1)[1], parts, depth + 1)


def _parse_document(value: str) -> Any:
    text = value.lstrip()
    if text.startswith(("{", "[")):
        try:
            return json.loads(value)
        except ValueError:
            return None
    if "\n" in value and re.search(r"^(apiVersion|clusters|users|contexts|auths):", value, re.MULTILINE):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return None
    return None


def _strings(doc: Any, key: str = "") -> Iterable[tuple[str, str]]:
    stack = [(key, doc)]
    while stack:
        key, node = stack.pop()
        if isinstance(node, dict):
            stack.extend((str(k), v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((key, v) for v in node)
        elif isinstance(node, str):
            yield key, node


def _b64_text(value: str) -> str | None:
    if len(value) < 12 or not re.fullmatch(r"[A-Za-z0-9+/_-]+=*", value):
        return None
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_" if "-" in value or "_" in value
                               else None, validate=True)
        return raw.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None


def _trie_pattern(words: Iterable[str]) -> str:
    """One regex for many literal needles that follows a single path per position (a trie), so
    scrubbing stays linear in the text however many needles there are; longest match first."""
    trie: dict = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = True

    def render(node: dict) -> str:
        # a run of single-child nodes is one literal: recursion only where needles branch or end
        run = []
        while len(node) == 1 and "" not in node:
            (ch, node), = node.items()
            run.append(ch)
        head = re.escape("".join(run))
        branches = [re.escape(ch) + render(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return head
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return head + ("(?:" + body + ")?" if "" in node else body)

    return render(trie)


@functools.lru_cache(maxsize=8)
def _compiled(needles: frozenset[str]) -> re.Pattern[str]:
    """The scrubbing regex of a set of needles, built once per process for the same secrets (a suite's runs
    share one parameter file: building the trie of thousands of encoded forms takes seconds)."""
    return re.compile(_trie_pattern(sorted(needles)))


class Redactor:
    """Scrubs registered secret values, and their encoded forms, from text and structures."""

    def __init__(self) -> None:
        self._needles: dict[str, str] = {}
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str, label: str) -> None:
        """Register a secret: every part of it (:func:`secret_parts`) in every form (:func:`encoded_forms`)."""
        if not value:
            return
        for part in secret_parts(value) | {value}:
            for form in encoded_forms(part):
                self._needles.setdefault(form, label)
        self._pattern = None

    def add_form(self, written: str, label: str) -> None:
        """Register one exact written form of a secret (say, as a YAML source spells it)."""
        if written:
            self._needles.setdefault(written, label)
            self._pattern = None

    def merge(self, other: Redactor) -> None:
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
            self._pattern = _compiled(frozenset(self._needles))
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
        """Labels of secrets found in ``data`` in any form (the last line of defence before a file is kept)."""
        rx = self._regex()
        if rx is None:
            return []
        found: list[str] = []
        for m in rx.finditer(data.decode("utf-8", errors="replace")):
            label = self._needles[m.group(0)]
            if label not in found:
                found.append(label)
        return found
