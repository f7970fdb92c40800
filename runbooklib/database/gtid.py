"""Global transaction ids in the two forms the servers write them, read into values that compare.

MySQL (5.7, 8.0, 8.4) keeps a *set*: ``uuid:1-100:105-110,uuid2:1-5`` (8.4 adds tags,
``uuid:tag:1-5``); a transaction is one number under one source's uuid, and a replica has applied a
transaction when its executed set contains it. MariaDB keeps a *position*: ``domain-server-seq``,
one per replication domain (``0-1-100,1-2-7``); sequence numbers grow within a domain, so a replica
has reached a position when, in every domain, its sequence number is at least as high.

Both answer the same questions here: has ``have`` reached ``want``, how many transactions is it
behind, and what does a set or position look like written back (for SQL and for people).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_TAG = r"[a-zA-Z_][a-zA-Z0-9_]{0,31}"


class GtidError(ValueError):
    """Text that is not a GTID set or position; the message quotes it and shows the form expected."""


# -- MySQL: GTID sets ------------------------------------------------------------------------------

@dataclass(frozen=True)
class GtidSet:
    """A MySQL GTID set: for each ``(uuid, tag)``, sorted disjoint closed intervals of transaction numbers."""

    intervals: dict[tuple[str, str], tuple[tuple[int, int], ...]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> "GtidSet":
        """``uuid:1-5:7,uuid2:tag:3`` (newlines and spaces between entries allowed, as SHOW REPLICA STATUS prints them)."""
        out: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for entry in re.split(r"\s*,\s*", (text or "").strip().replace("\n", "")):
            if not entry:
                continue
            parts = entry.split(":")
            if not re.fullmatch(_UUID, parts[0]) or len(parts) < 2:
                raise GtidError(f"{entry!r} is not a GTID set entry; expected uuid:N[-M][:N[-M]...], like "
                                "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5")
            uuid, tag = parts[0].lower(), ""
            for part in parts[1:]:
                if re.fullmatch(_TAG, part):
                    tag = part.lower()
                    continue
                m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
                if not m or int(m.group(1)) < 1 or (m.group(2) and int(m.group(2)) < int(m.group(1))):
                    raise GtidError(f"{part!r} in {entry!r} is not an interval; expected N or N-M with 1 <= N <= M")
                out.setdefault((uuid, tag), []).append((int(m.group(1)), int(m.group(2) or m.group(1))))
        return cls({key: _merge(spans) for key, spans in out.items()})

    def __str__(self) -> str:
        by_uuid: dict[str, list[str]] = {}
        for (uuid, tag), spans in sorted(self.intervals.items()):
            text = ":".join(f"{a}-{b}" if a != b else str(a) for a, b in spans)
            by_uuid.setdefault(uuid, []).append(f"{tag}:{text}" if tag else text)
        return ",".join(f"{uuid}:{':'.join(parts)}" for uuid, parts in by_uuid.items())

    def __bool__(self) -> bool:
        return bool(self.intervals)

    def count(self) -> int:
        return sum(b - a + 1 for spans in self.intervals.values() for a, b in spans)

    def contains(self, other: "GtidSet") -> bool:
        """Every transaction of ``other`` is in this set."""
        return not other.minus(self)

    def minus(self, other: "GtidSet") -> "GtidSet":
        """The transactions of this set that ``other`` lacks."""
        out: dict[tuple[str, str], tuple[tuple[int, int], ...]] = {}
        for key, spans in self.intervals.items():
            left = list(spans)
            for b0, b1 in other.intervals.get(key, ()):
                nxt = []
                for a0, a1 in left:
                    if b1 < a0 or b0 > a1:
                        nxt.append((a0, a1))
                        continue
                    if a0 < b0:
                        nxt.append((a0, b0 - 1))
                    if b1 < a1:
                        nxt.append((b1 + 1, a1))
                left = nxt
            if left:
                out[key] = tuple(left)
        return GtidSet(out)


def _merge(spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return tuple(merged)


def mysql_gtid(text: str) -> tuple[str, str, int]:
    """One MySQL transaction id, ``uuid[:tag]:N``, as (uuid, tag, N)."""
    m = re.fullmatch(rf"\s*({_UUID})(?::({_TAG}))?:(\d+)\s*", text or "")
    if not m or int(m.group(3)) < 1:
        raise GtidError(f"{text!r} is not a MySQL GTID; expected uuid:N, like 3e11fa47-71ca-11e1-9e33-c80aa9429562:23")
    return m.group(1).lower(), (m.group(2) or "").lower(), int(m.group(3))


# -- MariaDB: GTID positions -----------------------------------------------------------------------

@dataclass(frozen=True)
class MariadbGtid:
    domain: int
    server: int
    seq: int

    @classmethod
    def parse(cls, text: str) -> "MariadbGtid":
        m = re.fullmatch(r"\s*(\d+)-(\d+)-(\d+)\s*", text or "")
        if not m:
            raise GtidError(f"{text!r} is not a MariaDB GTID; expected domain-server-sequence, like 0-1-23")
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)))

    def __str__(self) -> str:
        return f"{self.domain}-{self.server}-{self.seq}"


@dataclass(frozen=True)
class GtidPosition:
    """A MariaDB GTID position: the last transaction seen in each replication domain."""

    last: dict[int, MariadbGtid] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> "GtidPosition":
        out: dict[int, MariadbGtid] = {}
        for entry in re.split(r"\s*,\s*", (text or "").strip()):
            if entry:
                g = MariadbGtid.parse(entry)
                if g.domain in out:
                    raise GtidError(f"{text!r} names domain {g.domain} twice; a position has one GTID per domain")
                out[g.domain] = g
        return cls(out)

    def __str__(self) -> str:
        return ",".join(str(g) for _, g in sorted(self.last.items()))

    def __bool__(self) -> bool:
        return bool(self.last)

    def reached(self, want: "GtidPosition") -> bool:
        """In every domain of ``want``, this position is at or past it."""
        return all(d in self.last and self.last[d].seq >= g.seq for d, g in want.last.items())

    def behind(self, want: "GtidPosition") -> int:
        """How many transactions (summed over domains) this position lacks to reach ``want``."""
        return sum(max(0, g.seq - (self.last[d].seq if d in self.last else 0)) for d, g in want.last.items())

    def with_gtid(self, gtid: MariadbGtid) -> "GtidPosition":
        return GtidPosition({**self.last, gtid.domain: gtid})
