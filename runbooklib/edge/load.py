"""A small, bounded load against the edge nodes from the runbook host: requests served, errors, latency percentiles.

It plays the clients that hold the round-robin record: each new connection goes to the next edge
address in turn (as a client picking among the A records would), alternating the CDN, HTTP and TLS
passthrough. It stops at ``edge.load.requests`` or ``edge.load.seconds``, whichever comes first, with
``edge.load.concurrency`` connections at a time, and dials only the edge addresses of the parameters.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .probe import Answer, kinds, probe, targets


@dataclass
class Sample:
    label: str  # "before", "during the failure", ...
    started: float
    answers: list[Answer] = field(default_factory=list)
    seconds: float = 0.0


def run_load(p, label: str, requests: int | None = None, seconds: float | None = None, retry_next: bool = False) -> Sample:
    """One bounded load; the answers in the order they were started.

    ``retry_next``: a client that, when an address does not answer, tries the next one in the record
    (browsers and most HTTP libraries do); the request counts once, against the address it tried
    first, with the time of both attempts.
    """
    cfg = p.edge.load
    requests = requests or cfg.requests
    seconds = seconds or cfg.seconds
    plan = itertools.cycle([(edge, address, kind) for kind in kinds(p) for edge, address in targets(p)])
    lock = threading.Lock()
    sample = Sample(label, time.monotonic())
    deadline = sample.started + seconds
    issued = itertools.count()

    def worker() -> None:
        while True:
            with lock:
                if next(issued) >= requests or time.monotonic() >= deadline:
                    return
                edge, address, kind = next(plan)
            a = probe(p, edge, address, kind)
            if retry_next and not a.ok and a.status is None:  # no answer at all: the next address of the record
                others = [t for t in targets(p) if t[0] != edge]
                if others:
                    b = probe(p, others[0][0], others[0][1], kind)
                    a = Answer(edge, kind, b.ok, b.status, a.seconds + b.seconds, b.first_line, b.headers,
                               "" if b.ok else f"{a.error}; then {others[0][0]}: {b.error}", a.started)
            with lock:
                sample.answers.append(a)

    with ThreadPoolExecutor(cfg.concurrency) as pool:
        for _ in range(cfg.concurrency):
            pool.submit(worker)
    sample.seconds = time.monotonic() - sample.started
    sample.answers.sort(key=lambda a: a.started)
    return sample


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def summary_rows(samples: list[Sample]) -> list[dict]:
    """Per sample and edge node (and all together): requests, served, errors, error share, p50/p95/p99 of the served ones."""
    rows = []
    for s in samples:
        groups = {edge: [a for a in s.answers if a.edge == edge] for edge in dict.fromkeys(a.edge for a in s.answers)}
        groups["all"] = s.answers
        for edge, answers in groups.items():
            ok = [a.seconds * 1000 for a in answers if a.ok]
            errors = [a for a in answers if not a.ok]
            first_error = errors[0].error if errors else ""

            def ms(q):
                v = percentile(ok, q)
                return "" if v is None else round(v, 1)
            rows.append({"load": s.label, "edge": edge, "requests": len(answers), "served": len(ok), "errors": len(errors),
                         "error %": round(100 * len(errors) / len(answers), 1) if answers else 0.0,
                         "p50 ms": ms(50), "p95 ms": ms(95), "p99 ms": ms(99), "seconds": round(s.seconds, 1),
                         "first error": first_error})
    return rows


def figure(samples: list[Sample], title: str = "Load through the edge nodes"):
    """Latency of every request over time (one colour per edge node, errors as crosses), one panel per sample."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samples), figsize=(4.6 * len(samples), 3.6), squeeze=False, sharey=True)
    edges = list(dict.fromkeys(a.edge for s in samples for a in s.answers))
    colours = dict(zip(edges, ["#1a73e8", "#e8710a", "#188038", "#a142f4"] * 4))
    for ax, s in zip(axes[0], samples):
        for edge in edges:
            ok = [a for a in s.answers if a.edge == edge and a.ok]
            bad = [a for a in s.answers if a.edge == edge and not a.ok]
            ax.scatter([a.started - s.started for a in ok], [a.seconds * 1000 for a in ok], s=8, color=colours[edge],
                       label=f"{edge} served ({len(ok)})")
            if bad:
                ax.scatter([a.started - s.started for a in bad], [a.seconds * 1000 for a in bad], s=28, marker="x",
                           color=colours[edge], label=f"{edge} errors ({len(bad)})")
        served = [a.seconds * 1000 for a in s.answers if a.ok]
        p95 = percentile(served, 95)
        if p95 is not None:
            ax.axhline(p95, color="#5f6368", linestyle="--", linewidth=0.8, label=f"p95 {p95:.1f} ms")
        ax.set_title(f"{s.label}: {len(served)}/{len(s.answers)} served")
        ax.set_xlabel("seconds into the load")
        ax.set_yscale("log")
        ax.legend(fontsize=7, loc="upper right")
    axes[0][0].set_ylabel("latency (ms, log)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
