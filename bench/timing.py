"""What the benchmarks share: timing a whole command the way an operator runs it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(cmd: list[str], env: dict, cwd: Path = ROOT) -> float:
    """Seconds one command takes; stops the benchmark, with the command's output, if it fails."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"benchmark command failed: {' '.join(cmd)}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    return elapsed
