"""``runbook report``: the archive as a static HTML site (see :mod:`runbooklib.report.site`)."""

from __future__ import annotations

from pathlib import Path


def cmd_report(args) -> int:
    from ..archive import Archive, default_root
    from .site import build

    archive = Archive(default_root(args.archive))
    out = Path(args.out) if args.out else archive.root.resolve().parent / (archive.root.resolve().name + "-site")
    summary = build(archive, out)
    print(summary.text())
    return 0 if summary.chain_ok else 1


def add_parser(sub) -> None:
    """``runbook report`` (registered by :func:`runbooklib.cli.build_parser`)."""
    p = sub.add_parser("report", help="write the archive as a static HTML site: runs, suites, hosts and their changes")
    p.add_argument("--out", metavar="DIR", help="where the site goes (default: beside the archive, <archive>-site/)")
    p.set_defaults(func=cmd_report)
