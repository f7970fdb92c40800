"""The ``runbook`` command: run notebooks headless, read and verify the archive, check parameters."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import RunbookError


def _archive(args):
    from .archive import Archive, default_root

    return Archive(default_root(args.archive))


def cmd_run(args) -> int:
    from .runner import run_notebook

    result = run_notebook(args.notebook, args.params, apply=args.apply, timeout=args.timeout,
                          archive_root=args.archive, stream=sys.stderr)
    return 0 if result.ok else 1


def cmd_check(args) -> int:
    from .params import load_params

    p = load_params(args.params)
    sections = [s for s in ("kubernetes", "registry", "database", "storage", "logging", "edge") if getattr(p, s)]
    print(f"{args.params}: valid ({p.environment.kind} environment {p.environment.name}, {len(p.hosts)} hosts, "
          f"sections: {', '.join(sections) or 'none'})")
    return 0


def cmd_runs(args) -> int:
    rows = _archive(args).runs(environment=args.env, notebook=args.notebook, status=args.status,
                               since=args.since, until=args.until, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no runs match")
        return 0
    cols = ["run_id", "environment", "notebook", "mode", "status", "started_at", "duration_s", "operator"]
    widths = {c: max(len(c), *(len(str(r[c] if r[c] is not None else "")) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c] if r[c] is not None else "").ljust(widths[c]) for c in cols))
    return 0


def cmd_show(args) -> int:
    manifest = _archive(args).manifest(args.run)
    if not args.with_params:
        manifest = dict(manifest, params={k: v for k, v in manifest["params"].items() if k != "content_redacted"})
    print(json.dumps(manifest, indent=2, sort_keys=True))
    return 0


def cmd_verify(args) -> int:
    archive = _archive(args)
    report = archive.verify()
    if report.ok:
        print(f"archive {archive.root}: {report.records} records, chain and files intact")
        return 0
    print(f"archive {archive.root}: {len(report.problems)} problem(s) in {report.records} records; first:")
    for i, problem in enumerate(report.problems):
        print(("  " if i else "> ") + problem)
    return 1


def cmd_reindex(args) -> int:
    n = _archive(args).reindex()
    print(f"index rebuilt from the ledger: {n} records")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runbook", description=__doc__)
    parser.add_argument("--archive", metavar="DIR",
                        help="archive root (default: $RUNBOOK_ARCHIVE, else the project's outputs/)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="execute a notebook headless and archive the record")
    p.add_argument("notebook", type=Path)
    p.add_argument("--params", required=True, type=Path, help="parameter file (params/<environment>.yaml)")
    p.add_argument("--apply", action="store_true", help="make changes (default: plan only, nothing changes)")
    p.add_argument("--timeout", type=float, metavar="S", help="fail a cell that runs longer than S seconds")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a parameter file and exit (2 when invalid)")
    p.add_argument("params", type=Path)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("runs", help="list archived runs, newest first")
    p.add_argument("--env", help="environment name")
    p.add_argument("--notebook", help="notebook name, e.g. 00-environment-overview")
    p.add_argument("--status", choices=["succeeded", "failed", "interrupted"])
    p.add_argument("--since", help="start date or time (ISO, UTC), inclusive")
    p.add_argument("--until", help="start date or time (ISO, UTC), exclusive")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("show", help="print one run's manifest")
    p.add_argument("run", help="run id or a unique prefix")
    p.add_argument("--with-params", action="store_true", help="include the (redacted) parameter file")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("verify", help="recompute the archive's hash chain and file hashes (exit 1 if broken)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("reindex", help="rebuild the query index from the ledger")
    p.set_defaults(func=cmd_reindex)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RunbookError as e:
        print(f"runbook: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("runbook: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
