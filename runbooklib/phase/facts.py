"""Facts: small named units of "how do we find out", gathered over a transport.

A :class:`Fact` is a command, a parser of its output and the value it takes when the parser
fails. Over SSH all facts of a host travel in one command (sections separated by markers), so
gathering costs one round trip per host, in parallel across hosts. Parsers are pure functions:
tests feed them recorded outputs (``tests/data/<phase>/facts/``).

A transport is anything with ``run(command_for_host, hosts=, desc=)`` returning a
``host name -> result`` mapping whose results have ``ok``, ``stdout`` and ``error``:
:class:`runbooklib.ssh.Fleet` today; a Kubernetes or database client for later phases.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

MARK = "@@RBFACT"


@dataclass(frozen=True)
class Fact:
    """One thing read from a host: ``command`` (may use ``{placeholders}``), ``process`` and a default."""

    name: str
    description: str
    command: str
    process: Callable[[str], Any]
    default: Any = None  # the value when the parser fails (the failure is reported beside it)

    def empty(self) -> Any:
        return copy.deepcopy(self.default)


class Gathered(NamedTuple):
    """What a gather returns: facts of the hosts that answered, and why the others did not.

    ``facts[host][fact]`` always holds every fact asked for, in its parser's shape;
    ``fact_errors[host][fact]`` says which of them fell back to the default, and why.
    """

    facts: dict[str, dict[str, Any]]
    errors: dict[str, str]
    fact_errors: dict[str, dict[str, str]] | None = None


def sections(text: str, sep: str = "--") -> dict[str, list[str]]:
    """Split output on ``--name--`` lines into named line lists (the first part is ``""``)."""
    out: dict[str, list[str]] = {"": []}
    key = ""
    for line in text.splitlines():
        m = re.fullmatch(rf"{sep}(\w+){sep}", line.strip())
        if m:
            key = m.group(1)
            out[key] = []
        else:
            out[key].append(line)
    return out


def host_script(facts: Iterable[Fact], context: Mapping[str, str] | None = None) -> str:
    """One shell script printing each fact's output between markers, with its exit code."""
    parts = []
    for fact in facts:
        cmd = fact.command.format(**(context or {}))
        parts.append(f"echo '{MARK} {fact.name}'; ( {cmd} ) 2>/dev/null; echo \"{MARK}-rc $?\"")
    return "\n".join(parts)


def parse_host_output(facts: Iterable[Fact], stdout: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Split one host's output into facts, each parsed by its own parser.

    A parser that fails, or a fact missing from the output (a cut connection), leaves the fact's
    default and a reason in the second mapping: one bad parser never hides the other facts.
    """
    by_name = {f.name: f for f in facts}
    raw: dict[str, str] = {}
    current, buf = None, []
    for line in stdout.splitlines(keepends=True):
        if line.startswith(MARK + " "):
            current, buf = line.split()[1], []
        elif current and (MARK + "-rc ") in line:  # at a line's start, or after output without a final newline
            buf.append(line[:line.index(MARK + "-rc ")])
            raw[current] = "".join(buf)
            current = None
        elif current:
            buf.append(line)
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, fact in by_name.items():
        if name not in raw:
            values[name], errors[name] = fact.empty(), "no output (the command was cut short)"
            continue
        try:
            values[name] = fact.process(raw[name])
        except Exception as e:  # a parser bug must not hide the other facts
            values[name], errors[name] = fact.empty(), f"cannot parse: {type(e).__name__}: {e}"
    return values, errors


@dataclass
class FactSet:
    """The facts of one phase, gathered together; ``context(host)`` fills their placeholders."""

    facts: tuple[Fact, ...]
    context: Callable[[Any], Mapping[str, str]] = field(default=lambda host: {})

    def named(self, names: Iterable[str] | None) -> tuple[Fact, ...]:
        if not names:
            return self.facts
        wanted = set(names)
        unknown = wanted - {f.name for f in self.facts}
        if unknown:
            raise KeyError(f"unknown fact(s) {', '.join(sorted(unknown))}; known: {', '.join(f.name for f in self.facts)}")
        return tuple(f for f in self.facts if f.name in wanted)

    def gather(self, transport, hosts: Iterable[Any], names: Iterable[str] | None = None,
               desc: str = "gather facts") -> Gathered:
        """Facts of every host, in parallel: one command per host."""
        chosen = self.named(names)
        results = transport.run(lambda h: host_script(chosen, self.context(h)), hosts=list(hosts), desc=desc)
        facts, errors, fact_errors = {}, {}, {}
        for name, result in results.items():
            if result.ok or (result.stdout and MARK in result.stdout):
                facts[name], bad = parse_host_output(chosen, result.stdout)
                if bad:
                    fact_errors[name] = bad
            else:
                errors[name] = result.error
        return Gathered(facts, errors, fact_errors)


def gather_key_values(fleet, command: str, hosts, desc: str) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Run ``command`` (which prints ``key=value`` lines) on ``hosts``: the values per host, and the hosts that did not answer."""
    facts: dict[str, dict[str, str]] = {}
    errors: dict[str, str] = {}
    for name, r in fleet.run(command, hosts=hosts, desc=desc).items():
        if r.exit_code is None:
            errors[name] = r.error
        else:
            facts[name] = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    return facts, errors
