"""RKE2's recurring etcd snapshots: ``etcd-snapshot-schedule-cron`` (default every 12 hours) and ``-retention``.

Each server with etcd saves ``etcd-snapshot-<node>-<unix time>`` in ``etcd-snapshot-dir`` (default
``/var/lib/rancher/rke2/server/db/snapshots``) with the real etcdctl when the schedule says, then
keeps the newest ``etcd-snapshot-retention`` of its own scheduled snapshots; ``rke2 etcd-snapshot
save`` takes ``on-demand-<node>-<unix time>`` ones, which the schedule never prunes.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import Fatal

RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
NAMES = ("minute", "hour", "day of month", "month", "day of week")


def parse_cron(text: str) -> list[set[int]]:
    """The five fields of a cron schedule as sets of values (``*``, ``*/n``, ``a``, ``a-b``, ``a-b/n``, lists)."""
    fields = text.split()
    if len(fields) != 5:
        raise Fatal(f"invalid etcd-snapshot-schedule-cron {text!r}: five fields expected (minute hour day month weekday)")
    out = []
    for field, (low, high), name in zip(fields, RANGES, NAMES):
        values: set[int] = set()
        for part in field.split(","):
            span, _, step = part.partition("/")
            try:
                every = int(step) if step else 1
                first, last = (low, high) if span == "*" else (int(span.split("-")[0]), int(span.split("-")[-1]))
            except ValueError:
                raise Fatal(f"invalid etcd-snapshot-schedule-cron {text!r}: {part!r} is not a {name}") from None
            if every < 1 or not low <= first <= last <= high:
                raise Fatal(f"invalid etcd-snapshot-schedule-cron {text!r}: {part!r} is outside {low}-{high} ({name})")
            values |= set(range(first, last + 1, every))
        if name == "day of week" and 7 in values:
            values = (values - {7}) | {0}
        out.append(values)
    return out


def matches(fields: list[set[int]], t: time.struct_time) -> bool:
    minute, hour, dom, month, dow = fields
    weekday = (t.tm_wday + 1) % 7  # cron counts from Sunday
    day_ok = (t.tm_mday in dom) or (weekday in dow) if len(dom) < 31 and len(dow) < 7 else (t.tm_mday in dom and weekday in dow)
    return t.tm_min in minute and t.tm_hour in hour and t.tm_mon in month and day_ok


class Schedule:
    """Takes a snapshot once in each minute the schedule matches, then prunes to the retention."""

    def __init__(self, cron: str, retention: int, directory: str, node: str, log):
        self.fields = parse_cron(cron)
        self.retention, self.directory, self.node, self.log = retention, directory, node, log
        self.last: tuple | None = None

    def tick(self, now: float | None = None) -> str | None:
        t = time.localtime(now)
        key = t[:5]
        if key == self.last or not matches(self.fields, t):
            return None
        self.last = key
        return self.take(f"etcd-snapshot-{self.node}-{int(time.mktime(t))}")

    def take(self, name: str) -> str | None:
        from .etcd import snapshot_save

        path = str(Path(self.directory) / name)
        r = snapshot_save(path)
        if r.returncode != 0:
            self.log.error(f"etcd snapshot {name} failed: {(r.stderr or r.stdout).strip()[-300:]}")
            return None
        self.log.info(f"Saved etcd snapshot {name} to {self.directory}")
        self.prune()
        return path

    def prune(self) -> list[str]:
        from .etcd import snapshots

        own = [p for p in snapshots(self.directory) if p.name.startswith(f"etcd-snapshot-{self.node}-")]
        removed = []
        for p in own[:max(0, len(own) - self.retention)]:
            p.unlink(missing_ok=True)
            removed.append(p.name)
            self.log.info(f"Removed etcd snapshot {p.name} (etcd-snapshot-retention {self.retention})")
        return removed
