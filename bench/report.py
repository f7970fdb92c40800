"""`runbook report` on a large archive: the first build, and a rebuild after one more run.

    python bench/report.py [--runs 3000]

Commits N records through the Archive (as the runner commits them: a manifest chained in the ledger, an
.ipynb and an .html of about 40 KB each, suites of 15 steps, a few changes per run on 16 hosts), then
times `report.build` from scratch, again with nothing new, and after one more record. No lab needed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runbooklib.archive import Archive  # noqa: E402
from runbooklib.report.site import build  # noqa: E402

HOSTS = [f"w{i}" for i in range(1, 17)]


def commit(archive: Archive, i: int) -> None:
    minute, second = divmod(i, 60)
    day = 1 + minute // (24 * 60)
    started = f"2026-02-{day:02d}T{(minute // 60) % 24:02d}:{minute % 60:02d}:{second:02d}.000+00:00"
    run_id = f"202602{day:02d}T000000Z-{i:06x}"
    suite = {"id": f"suite-{i // 15:05d}", "phase": "vm", "step": f"step-{i % 15:02d}", "index": i % 15 + 1, "steps": 15,
             "mode": "apply", "applies": True, "allow_not_ready": False, "params_sha256": "ab" * 32}
    changes = [{"host": HOSTS[(i + k) % 16], "operation": "demo", "change": f"write /etc/demo-{i}-{k}", "at": started} for k in range(3)]
    failed = i % 97 == 5
    m = {"record": "runbook run", "run_id": run_id, "notebook": f"{i % 15:02d}-step", "environment": {"name": f"env{i % 3}", "kind": "lab"},
         "mode": "apply", "params": {"path": "p.yaml", "sha256": "ab" * 32, "content_redacted": "x: 1\n" * 80},
         "operator": "bench", "reason": "bench", "change": "", "started_at": started, "ended_at": started, "duration_s": 30.0,
         "status": "failed" if failed else "succeeded", "failure": {"ename": "E", "evalue": "boom"} if failed else None,
         "verdict": None if failed else {"verdict": "applied", "problems": []}, "changes": changes,
         "plans": [{"title": "plan", "count": 3, "digest": "cd" * 32, "steps": [{k: c[k] for k in ("host", "operation", "change")} for c in changes]}],
         "suite": suite}
    base = archive.record_base(m["environment"]["name"], started[:10], run_id, m["notebook"])
    body = (b"<html><body>" + b"<p>cell output</p>" * 2400 + b"</body></html>")
    archive.commit(m, {"notebook": (base.with_name(base.name + ".ipynb"), b"{}" + b" " * 40000),
                       "html": (base.with_name(base.name + ".html"), body)})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        archive = Archive(Path(tmp) / "archive")
        t0 = time.perf_counter()
        for i in range(args.runs):
            commit(archive, i)
        made = time.perf_counter() - t0
        out = Path(tmp) / "site"
        timings = []
        for label in ("first build", "rebuild, nothing new", "rebuild after one more run"):
            if label.endswith("one more run"):
                commit(archive, args.runs)
            t0 = time.perf_counter()
            s = build(archive, out)
            timings.append((label, time.perf_counter() - t0, s.written))
        pages = sum(1 for _ in out.rglob("*.html"))
    print(f"archive of {args.runs} runs made in {made:.1f} s; site: {pages} pages")
    for label, secs, written in timings:
        print(f"  {label:28} {secs:7.2f} s  ({written} files written, {1000 * secs / args.runs:.2f} ms per run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
