"""Benchmark: what `runbook run` costs over bare papermill, and how fast `runbook runs` answers.

1. Runs notebooks/00-environment-overview.ipynb through `runbook run` and through the `papermill`
   command line (same kernel, same notebook, same parameter), alternating, and prints both medians
   and their ratio. Target: ratio <= 1.3.
2. Builds an archive of N synthetic runs through the real commit path (hash chain, ledger, index)
   and times `runbook runs` queries on it as an operator would run them. Target: < 0.2 s.

    python bench/runner_overhead.py [--rounds 5] [--index-runs 10000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.timing import BIN, timed  # noqa: E402
from runbooklib.archive import Archive  # noqa: E402

NOTEBOOK = ROOT / "notebooks" / "00-environment-overview.ipynb"
PARAMS = ROOT / "params" / "lab.yaml"


def resolvable_params(work: Path) -> Path:
    """params/lab.yaml with its key references pointing at a throwaway key pair (the runner refuses
    references that do not resolve, and this benchmark needs no lab)."""
    import json

    import yaml
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH).decode()
    (work / "id").write_bytes(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.OpenSSH, s.NoEncryption()))
    (work / "id.pub").write_text(public + "\n")
    data = yaml.safe_load(PARAMS.read_text())
    (work / "known_hosts").write_text("".join(f"{h['address']} {public}\n" for h in data["inventory"]["hosts"]))
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()).decode()
    (work / "registry.json").write_text(json.dumps({"type": "service_account", "private_key": pem}))
    data["ssh"].update(key=f"file:{work / 'id'}", known_hosts=str(work / "known_hosts"))
    data["vm"]["deploy_user"]["authorized_key"] = f"file:{work / 'id.pub'}"
    data["registry"]["json_key"] = f"file:{work / 'registry.json'}"
    path = work / "lab.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def runner_vs_papermill(rounds: int, work: Path) -> None:
    params = resolvable_params(work)
    env = dict(os.environ, RUNBOOK_ARCHIVE=str(work / "archive"), RUNBOOK_OPERATOR="bench@local",
               RUNBOOK_LOCK_DIR=str(work / "locks"))
    ours = [str(BIN / "runbook"), "run", str(NOTEBOOK), "--params", str(params)]
    bare = [str(BIN / "papermill"), str(NOTEBOOK), str(work / "bare.ipynb"), "-k", "python3",
            "--cwd", str(NOTEBOOK.parent), "-p", "params_file", str(params), "-p", "run_id", "bench",
            "--progress-bar", "--log-output"]
    timed(ours, env), timed(bare, env)  # warm caches (imports, font cache) for both
    a, b = [], []
    for _ in range(rounds):
        a.append(timed(ours, env))
        b.append(timed(bare, env))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"runbook run      median {ma:.2f} s  ({', '.join(f'{x:.2f}' for x in a)})")
    print(f"bare papermill   median {mb:.2f} s  ({', '.join(f'{x:.2f}' for x in b)})")
    print(f"ratio            {ma / mb:.2f}  (target <= 1.30: {'met' if ma / mb <= 1.3 else 'NOT met'})")


def index_queries(n: int, work: Path) -> None:
    root = work / "big-archive"
    archive = Archive(root)
    t0 = time.perf_counter()
    envs, notebooks = ["lab", "staging", "ru-production"], ["00-environment-overview", "01-vm-preflight", "02-vm-baseline"]
    for i in range(n):
        run_id = f"2026{(i // 28 % 12) + 1:02d}{(i % 28) + 1:02d}T{i % 24:02d}0000Z-{i:06x}"
        env, nb = envs[i % 3], notebooks[i % 3]
        date = f"2026-{(i // 28 % 12) + 1:02d}-{(i % 28) + 1:02d}"
        base = archive.record_base(env, date, run_id, nb)
        manifest = {"run_id": run_id, "notebook": nb, "environment": {"name": env},
                    "status": "failed" if i % 17 == 0 else "succeeded", "mode": "plan",
                    "started_at": f"{date}T{i % 24:02d}:00:00+00:00", "operator": "bench@local"}
        archive.commit(manifest, {"notebook": (base.with_name(base.name + ".ipynb"), b"{}"),
                                  "html": (base.with_name(base.name + ".html"), b"<p></p>")})
    print(f"built {n} records through the commit path in {time.perf_counter() - t0:.1f} s")
    env = dict(os.environ, RUNBOOK_ARCHIVE=str(root))
    queries = [
        ["runs"],
        ["runs", "--env", "ru-production", "--status", "failed"],
        ["runs", "--notebook", "02-vm-baseline", "--since", "2026-06-01", "--until", "2026-07-01"],
    ]
    for q in queries:
        cli = [str(BIN / "runbook"), *q]
        times = [timed(cli, env) for _ in range(5)]
        t_api = []
        for _ in range(5):
            t0 = time.perf_counter()
            archive.runs(**_as_kwargs(q))
            t_api.append(time.perf_counter() - t0)
        print(f"`runbook {' '.join(q)}`: command median {statistics.median(times) * 1000:.0f} ms, "
              f"query alone median {statistics.median(t_api) * 1000:.1f} ms "
              f"(target < 200 ms: {'met' if statistics.median(times) < 0.2 else 'NOT met'})")


def _as_kwargs(q: list[str]) -> dict:
    names = {"--env": "environment", "--status": "status", "--notebook": "notebook", "--since": "since", "--until": "until"}
    return {names[k]: v for k, v in zip(q[1::2], q[2::2])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--index-runs", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runbook-bench-") as tmp:
        work = Path(tmp)
        runner_vs_papermill(args.rounds, work)
        index_queries(args.index_runs, work)


if __name__ == "__main__":
    main()
