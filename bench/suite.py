"""The whole migration suite on a fresh lab: wall time, and the share spent outside the runbooks' own work.

    python bench/suite.py [--profile seed|small] [--archive DIR]

Builds a lab of its own (prefix rbsb, subnet 10.107.0.0/24, or --name/--subnet; removed afterwards),
runs ``runbook suite --apply`` in this process as the command line does, then reads the archived
records. The runbooks' own work is the time the kernel spent executing their code cells (each cell's
``execute_input`` to ``idle``, as the archived notebook records it); everything else in the suite's
wall time is overhead: kernel starts, papermill, the runner's checks, scrubbing, rendering the HTML,
archiving, and the suite's own bookkeeping. Target: overhead under 10% of the total. Needs root.

It then prints where each run's time went, stage by stage, as the runner measured it
(``runbooklib.runner.STAGE_LOG``): the checks before the lock, preparing (redactor, journal, git),
the kernel's start (a kernel launched ahead: the CPU its boot took beside the previous step, an upper
bound of what it took from that step's cells), papermill's saves and the rest of papermill, the kernel's stop, the output
relay, scrubbing, the HTML, the leak check, the commit into the chain, waiting for the kernel to
exit, and the suite's bookkeeping between runs. The machine is shared: give its load averages with
the figures, and compare candidates run alternately.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runbooklab import Lab  # noqa: E402
from runbooklib import runner  # noqa: E402
from runbooklib.suite import run_suite  # noqa: E402


def _t(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def cell_seconds(nb: dict) -> float:
    """Seconds the kernel spent executing the notebook's code cells."""
    total = 0.0
    for cell in nb.get("cells", []):
        ex = (cell.get("metadata") or {}).get("execution") or {}
        if "iopub.execute_input" in ex and "iopub.status.idle" in ex:
            total += max(0.0, _t(ex["iopub.status.idle"]) - _t(ex["iopub.execute_input"]))
    return total


# the stages a run's time is measured in (runbooklib.runner.STAGE_LOG); "papermill" holds the kernel's
# start and stop, papermill's saves and the cells; "after (all)" holds scrub, render, leak check, commit
STAGES = ("checks", "prepare", "kernel start", "papermill saves", "kernel stop", "papermill", "output relay drain", "scrub",
          "render html", "leak check", "archive commit", "git state", "kernel stop (wait)", "after (all)", "runner (whole call)")


def print_stages(rows: list, stages: list[dict], wall: float) -> None:
    """Per run and in total: seconds per stage, and what papermill spent besides the cells and the kernel."""
    short = {"papermill saves": "pm saves", "kernel start": "k start", "kernel stop": "k stop", "render html": "html",
             "leak check": "leaks", "archive commit": "commit", "git state": "git", "after (all)": "after",
             "runner (whole call)": "whole", "output relay drain": "relay", "kernel stop (wait)": "k exit"}
    print("\nwhere the time goes, per run (seconds; pm other = papermill - cells - kernel start/stop - saves; relay: waiting for the\n"
          "kernel's output relay; k exit: waiting, after the record is written, for the kernel to exit):")
    cols = [*STAGES, "pm other"]
    print(f"{'step':34} " + " ".join(f"{short.get(c, c):>8}" for c in cols))
    totals = dict.fromkeys(cols, 0.0)
    for (step, _dur, own, _status), st in zip(rows, stages):
        st = dict(st)
        st["pm other"] = st.get("papermill", 0.0) - own - st.get("kernel start", 0.0) - st.get("kernel stop", 0.0) - st.get("papermill saves", 0.0)
        for c in cols:
            totals[c] += st.get(c, 0.0)
        print(f"{step:34} " + " ".join(f"{st.get(c, 0.0):8.2f}" for c in cols))
    print(f"{'total':34} " + " ".join(f"{totals[c]:8.2f}" for c in cols))
    print(f"suite bookkeeping (wall - the runner's calls): {wall - totals['runner (whole call)']:.2f} s\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="seed")
    ap.add_argument("--name", default="rbsb")
    ap.add_argument("--subnet", default="10.107.0.0/24")
    ap.add_argument("--archive", type=Path, help="keep the records here (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp:
        work = Path(tmp)
        archive = args.archive or work / "archive"
        lab = Lab(work / "lab", name=args.name, subnet=args.subnet)
        lab.down()
        try:
            t0 = time.perf_counter()
            lab.up(profile=args.profile)
            lab_s = time.perf_counter() - t0
            os.environ["RUNBOOK_LOCK_DIR"] = str(work / "locks")
            log = io.StringIO()
            runner.STAGE_LOG = []  # where each run's time goes, stage by stage
            load = os.getloadavg()
            t0 = time.perf_counter()
            result = run_suite(lab.params_file, apply=True, archive_root=archive, stream=log, out=sys.stderr, why="bench/suite.py")
            wall = time.perf_counter() - t0
        finally:
            lab.down()
        rows = []
        for m in (json.loads(p.read_text()) for p in sorted(archive.rglob("*.manifest.json"))):
            if (m.get("suite") or {}).get("id") != result.suite_id:
                continue
            nb_file = (m.get("files") or {}).get("notebook")
            own = cell_seconds(json.loads((archive / nb_file["path"]).read_text())) if nb_file else 0.0
            rows.append((m["suite"]["step"], m.get("duration_s") or 0.0, own, m.get("status")))
    stages = runner.STAGE_LOG or []
    own_total = sum(r[2] for r in rows)
    overhead = wall - own_total
    in_runs = sum(r[1] - r[2] for r in rows)  # kernel start, papermill, the injected parameters, journal
    print(f"suite on the lab ({args.profile} profile, {len(rows)} runs, exit {result.exit_code}); lab up {lab_s:.1f} s (not counted); "
          f"load average at the start {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{'step':34} {'run s':>8} {'cells s':>8} {'overhead s':>10}  status")
    for step, dur, own, status in rows:
        print(f"{step:34} {dur:8.1f} {own:8.1f} {dur - own:10.1f}  {status}")
    print(f"wall time of the suite:          {wall:8.1f} s")
    print(f"runbooks' own work (code cells): {own_total:8.1f} s")
    print(f"  inside the runs' durations (kernel starts, papermill):               {in_runs:8.1f} s")
    print(f"  between runs (checks before, scrubbing, rendering, archiving after): {wall - sum(r[1] for r in rows):8.1f} s")
    if len(stages) == len(rows):
        print_stages(rows, stages, wall)
    print(f"overhead (kernels, checks, scrubbing, rendering, archiving, suite): {overhead:.1f} s = "
          f"{100 * overhead / wall:.1f}% of the total (target < 10%)")
    boot = sum(st.get("spare boot cpu", 0.0) for st in stages)
    if boot:  # the kernels launched ahead boot beside the previous step's cells: on a busy machine they take CPU from them
        print(f"the kernels launched ahead used {boot:.1f} s of CPU booting while the previous steps' cells ran; at most that much of "
              f"the cells' time is theirs: counted as overhead, {100 * (overhead + boot) / wall:.1f}% (an upper bound)")
    return 0 if result.exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
