"""Benchmark: SSH to the whole seed lab (16 VMs) with the library's fleet layer.

Prints medians of (a) opening 16 connections with pinned host keys and running one command on
each, and (b) running the same command again on the open connections. Builds its own lab instance
(prefix rbbnch, subnet 10.80.0.0/24) and removes it afterwards. Needs root.

    python bench/fleet.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runbooklab import Lab  # noqa: E402
from runbooklib.params import load_params  # noqa: E402
from runbooklib.ssh import Fleet  # noqa: E402

COMMAND = "uname -a; df -h /"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runbook-bench-lab-") as tmp:
        lab = Lab(tmp, name="rbbnch", subnet="10.80.0.0/24")
        try:
            t0 = time.perf_counter()
            lab.up(profile="seed")
            print(f"lab up (16 VMs, seed profile): {time.perf_counter() - t0:.2f} s")
            params = load_params(lab.params_file)
            cold, warm = [], []
            for _ in range(args.rounds):
                fleet = Fleet.from_params(params, progress=None)
                t0 = time.perf_counter()
                first = fleet.run(COMMAND)
                cold.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                second = fleet.run(COMMAND)
                warm.append(time.perf_counter() - t0)
                fleet.close()
                if not (first.ok and second.ok):
                    sys.exit(f"a host failed: {first.failed or second.failed}")
            print(f"connect + run on {len(params.hosts)} VMs: median {statistics.median(cold):.2f} s "
                  f"({', '.join(f'{x:.2f}' for x in cold)})")
            print(f"run on open connections:     median {statistics.median(warm):.2f} s "
                  f"({', '.join(f'{x:.2f}' for x in warm)})")
        finally:
            lab.down()


if __name__ == "__main__":
    main()
