"""Benchmark: the archive in a bucket (S3 with Object Lock, versitygw on loopback) against a folder.

1. Archiving a run: what the runner does with the archive around a notebook (check it is ready,
   take and release the run lock, commit the record: notebook, HTML, manifest, ledger), alternating
   folder and bucket, with a record of realistic size. Prints both medians and the overhead per run.
   Target: bucket overhead < 0.3 s per run on loopback. With --full-runs N, also whole `runbook run`s
   of notebooks/00-environment-overview.ipynb both ways.
2. `runbook runs` on N records in the bucket (a folder archive of N synthetic records pushed with
   `runbook archive push`): the command as an operator runs it, answered from the index cache.
   Target: < 0.2 s. Then `runbook reindex` from the bucket (every ledger object and manifest read
   again), timed and printed.

    python bench/archive.py [--rounds 15] [--records 10000] [--full-runs 0]
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

from bench.runner_overhead import NOTEBOOK, _as_kwargs, resolvable_params  # noqa: E402
from bench.timing import BIN, timed  # noqa: E402
from runbooklab.objectstore import ObjectStore  # noqa: E402
from runbooklib.archive import Archive, open_archive  # noqa: E402


def record(archive: Archive, i: int, nb: bytes, html: bytes) -> None:
    run_id = f"20261129T{i % 24:02d}0000Z-{i:06x}"
    env, name = ("lab", "staging", "ru-production")[i % 3], ("00-environment-overview", "01-vm-preflight", "02-vm-baseline")[i % 3]
    date = f"2026-{(i // 28 % 12) + 1:02d}-{(i % 28) + 1:02d}"
    base = archive.record_base(env, date, run_id, name)
    manifest = {"run_id": run_id, "notebook": name, "environment": {"name": env, "kind": "lab", "data_country": "RU"},
                "simulated": True, "status": "failed" if i % 17 == 0 else "succeeded", "mode": "plan",
                "started_at": f"{date}T{i % 24:02d}:00:00+00:00", "operator": "bench@local"}
    archive.commit(manifest, {"notebook": (base.with_name(base.name + ".ipynb"), nb),
                              "html": (base.with_name(base.name + ".html"), html)})


def archiving(archive: Archive, i: int, nb: bytes, html: bytes) -> float:
    """What the runner does with the archive around one run, timed."""
    t0 = time.perf_counter()
    archive.check_ready()
    with archive.run_lock("lab", f"bench-{i % 3}", {"operator": "bench@local", "run_id": str(i), "pid": os.getpid()}):
        record(archive, i, nb, html)
    return time.perf_counter() - t0


def per_run(rounds: int, work: Path, url: str) -> None:
    folder, bucket = Archive(work / "folder"), open_archive(url)
    nb, html = os.urandom(120_000).hex().encode()[:240_000], os.urandom(400_000).hex().encode()[:800_000]
    archiving(folder, 10**6, nb, html), archiving(bucket, 10**6, nb, html)  # warm: imports, connections, index files
    a, b = [], []
    for i in range(rounds):
        a.append(archiving(folder, i, nb, html))
        b.append(archiving(bucket, i, nb, html))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"archiving a run ({len(nb) // 1000} KB notebook, {len(html) // 1000} KB HTML): check, lock, commit")
    print(f"  folder  median {ma * 1000:.0f} ms  ({', '.join(f'{x * 1000:.0f}' for x in a)})")
    print(f"  bucket  median {mb * 1000:.0f} ms  ({', '.join(f'{x * 1000:.0f}' for x in b)})")
    print(f"  overhead of the bucket {(mb - ma) * 1000:.0f} ms per run (target < 300 ms: {'met' if mb - ma < 0.3 else 'NOT met'})")


def full_runs(n: int, work: Path, url: str) -> None:
    params = resolvable_params(work)
    base = dict(os.environ, RUNBOOK_OPERATOR="bench@local", RUNBOOK_LOCK_DIR=str(work / "locks"))
    cmd = [str(BIN / "runbook"), "run", str(NOTEBOOK), "--params", str(params)]
    envs = {"folder": dict(base, RUNBOOK_ARCHIVE=str(work / "full-folder")), "bucket": dict(base, RUNBOOK_ARCHIVE=url + "-full")}
    for env in envs.values():
        timed(cmd, env)  # warm
    times: dict[str, list[float]] = {k: [] for k in envs}
    for _ in range(n):
        for k, env in envs.items():
            times[k].append(timed(cmd, env))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"  `runbook run` 00-environment-overview, {k:6}  median {med[k]:.2f} s  ({', '.join(f'{x:.2f}' for x in v)})")
    print(f"  difference {(med['bucket'] - med['folder']) * 1000:.0f} ms per run")


def many_records(n: int, work: Path, url: str) -> None:
    folder = Archive(work / "big")
    t0 = time.perf_counter()
    for i in range(n):
        record(folder, i, b"{}", b"<p></p>")
    print(f"{n} records: folder archive built through the commit path in {time.perf_counter() - t0:.1f} s")
    env = dict(os.environ, RUNBOOK_ARCHIVE=url + "-big")
    t0 = time.perf_counter()
    timed([str(BIN / "runbook"), "archive", "push", str(folder.root)], env)
    print(f"  `runbook archive push` into the bucket (and verify there): {time.perf_counter() - t0:.1f} s")
    queries = [["runs"], ["runs", "--env", "ru-production", "--status", "failed"],
               ["runs", "--notebook", "02-vm-baseline", "--since", "2026-06-01", "--until", "2026-07-01"]]
    bucket = open_archive(url + "-big")
    bucket.runs()  # this process's cache: filled once, as on a runner that has used the archive before
    for q in queries:
        times = [timed([str(BIN / "runbook"), *q], env) for _ in range(5)]
        folder_times = [timed([str(BIN / "runbook"), *q], dict(env, RUNBOOK_ARCHIVE=str(folder.root))) for _ in range(5)]
        api = []
        for _ in range(5):
            t0 = time.perf_counter()
            rows = bucket.runs(**_as_kwargs(q))
            api.append(time.perf_counter() - t0)
        print(f"  `runbook {' '.join(q)}` ({len(rows)} rows): command median {statistics.median(times) * 1000:.0f} ms "
              f"(the same on the folder {statistics.median(folder_times) * 1000:.0f} ms); the query with its bucket check alone "
              f"{statistics.median(api) * 1000:.1f} ms (target < 200 ms: {'met' if statistics.median(api) < 0.2 else 'NOT met'})")
    t0 = time.perf_counter()
    timed([str(BIN / "runbook"), "reindex"], env)
    print(f"  `runbook reindex` from the bucket ({n} ledger objects and manifests): {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    bucket.reindex()
    print(f"  the same in-process, without the command's start-up: {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    timed([str(BIN / "runbook"), "verify"], env)
    print(f"  `runbook verify` in the bucket (every object of every record): {time.perf_counter() - t0:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--full-runs", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runbook-bench-archive-") as tmp:
        work = Path(tmp)
        with ObjectStore(work / "store") as store:
            url = "s3://bench/team"
            os.environ["RUNBOOK_ARCHIVE_SETTINGS"] = str(store.write_settings(work / "settings", None))  # one settings file, three prefixes
            os.environ["RUNBOOK_ARCHIVE_CACHE"] = str(work / "cache")
            os.environ["RUNBOOK_LOCK_DIR"] = str(work / "locks")
            print(f"store: versitygw on {store.endpoint} (posix backend on {work}), Object Lock governance, 1 day")
            open_archive(url).create_bucket()
            per_run(args.rounds, work, url)
            if args.full_runs:
                full_runs(args.full_runs, work, url)
            if args.records:
                many_records(args.records, work, url)


if __name__ == "__main__":
    main()
