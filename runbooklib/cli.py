"""The ``runbook`` command: run notebooks headless, read and verify the archive, check parameters."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import RunbookError


def _archive(args):
    from .archive import open_archive

    return open_archive(args.archive)


def cmd_run(args) -> int:
    from .runner import run_notebook

    result = run_notebook(args.notebook, args.params, apply=args.apply, timeout=args.timeout,
                          archive_root=args.archive, stream=sys.stderr, summary_stream=sys.stdout,
                          operator_name=args.operator, why=args.reason, no_input=args.no_input, change=args.change,
                          key=args.key)
    if result.signal:
        return 128 + result.signal  # the shell's convention: 130 SIGINT, 143 SIGTERM, 129 SIGHUP
    return result.exit_code(allow_not_ready=args.allow_not_ready)


def cmd_check(args) -> int:
    from .params import load_params
    from .references import require_references

    p = load_params(args.params)
    require_references(p)  # secrets, keys and the known-hosts file exist and hold the right thing
    sections = [s for s in ("kubernetes", "registry", "database", "storage", "logging", "edge") if getattr(p, s)]
    print(f"{args.params}: valid ({p.environment.kind} environment {p.environment.name}, {len(p.hosts)} hosts, "
          f"sections: {', '.join(sections) or 'none'}; every reference resolves)")
    return 0


def cmd_facts(args) -> int:
    from .params import load_params
    from .ssh import Fleet
    from .vm import facts as vm_facts

    params = load_params(args.params)
    hosts = params.hosts
    if args.hosts:
        wanted = args.hosts.split(",")
        unknown = [n for n in wanted if n not in {h.name for h in hosts}]
        if unknown:
            raise RunbookError(f"--hosts: no host named {', '.join(unknown)} in {args.params}")
        hosts = [h for h in hosts if h.name in wanted]
    with Fleet.from_params(params, progress=None if args.json else "auto") as fleet:
        facts, errors, _ = vm_facts.gather(params, fleet, hosts)
    if args.json:
        print(json.dumps({"facts": facts, "errors": errors}, indent=2, default=str))
    else:
        from .display import Table

        print(repr(Table(vm_facts.fact_rows(facts), title=f"Facts from {len(facts)} of {len(hosts)} hosts")))
        for host, error in errors.items():
            print(f"  {error}")
    return 1 if errors else 0


def cmd_runs(args) -> int:
    rows = _archive(args).runs(environment=args.env, notebook=args.notebook, status=args.status,
                               since=args.since, until=args.until, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no runs match")
        return 0
    cols = ["run_id", "environment", "notebook", "mode", "status", "verdict", "changes", "started_at", "duration_s",
            "operator", "reason"]
    shown = [{c: ("" if r.get(c) is None else str(r[c])) for c in cols} for r in rows]
    for r, row in zip(rows, shown):
        if r.get("interactive"):
            row["mode"] += " (interactive)"
    widths = {c: max(len(c), *(len(row[c]) for row in shown)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols).rstrip())
    for row in shown:
        print("  ".join(row[c].ljust(widths[c]) for c in cols).rstrip())
    return 0


def cmd_show(args) -> int:
    archive = _archive(args)
    manifest = archive.manifest(args.run)
    if not args.with_params and "params" in manifest:
        manifest = dict(manifest, params={k: v for k, v in manifest["params"].items() if k != "content_redacted"})
    if args.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
        return 0
    from .record import describe

    print(describe(manifest, archive.location))
    if args.with_params:
        print("\nparameter file (secrets redacted):\n" + manifest["params"].get("content_redacted", ""))
    return 0


def cmd_approve(args) -> int:
    from . import changes
    from .params import load_params

    archive = _archive(args)
    plan = archive.manifest(args.run)
    print("\n".join(changes.plan_recap(plan)))
    params = load_params(args.params) if args.params else None
    m = changes.approve(archive, args.run, Path(args.key).expanduser(), params, change=args.change or "")
    print(f"approved by {m['approver']}: plan run {m['approves']} (digest {m['plan_digest'][:16]}...), "
          f"recorded as {m['run_id']} (seq {m['seq']})")
    return 0


def cmd_change(args) -> int:
    from . import changes

    rows = changes.timeline(_archive(args), args.id)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no record of change {args.id!r} (runs join a change with --change or $RUNBOOK_CHANGE)")
        return 1
    from .display import Table

    print(repr(Table(rows, ["seq", "at", "record", "run", "runbook", "environment", "who", "result", "what"],
                     title=f"change {args.id}: {len(rows)} record(s)")))
    return 0


def cmd_diff(args) -> int:
    from . import changes

    archive = _archive(args)
    d = changes.diff(archive.manifest(args.a), archive.manifest(args.b))
    if args.json:
        print(json.dumps({"a": d.a["run_id"], "b": d.b["run_id"], "host_map": d.host_map, "run": d.run, "params": d.params,
                          "steps_added": d.steps_added, "steps_removed": d.steps_removed,
                          "changes_added": d.changes_added, "changes_removed": d.changes_removed}, indent=2))
    else:
        print(changes.diff_text(d))
    if args.html:
        print(f"html: {changes.write_html(d, args.html)}")
    return 0


def cmd_verify(args) -> int:
    archive = _archive(args)
    report = archive.verify(head=args.head)
    for warning in report.warnings:
        print(f"note: {warning}")
    if report.ok:
        witness = f", witness {args.head} found" if args.head else ""
        print(f"archive {archive.location}: {report.records} records, chain and files intact{witness}; "
              f"chain head {report.head or 'none (empty)'}")
        return 0
    print(f"archive {archive.location}: {len(report.problems)} problem(s) in {report.records} records; first:")
    for i, problem in enumerate(report.problems):
        print(("  " if i else "> ") + problem)
    return 1


def cmd_reindex(args) -> int:
    archive = _archive(args)
    n = archive.reindex()
    if archive.moved_aside:
        print(f"the damaged index was moved to {archive.moved_aside}; the newest record it remembered is lost, so "
              "compare the chain head with a witness (`runbook verify --head`)")
    print(f"index rebuilt from the ledger: {n} records")
    return 0


def cmd_archive(args) -> int:
    from .archive import Archive, default_root, is_url
    from .archive_s3 import S3Archive

    target = _archive(args)
    if not isinstance(target, S3Archive):
        raise RunbookError(f"`runbook archive {args.archive_command}` needs an object-storage archive: --archive "
                           f"s3://bucket/prefix (or $RUNBOOK_ARCHIVE); {target.location} is a folder")
    if args.archive_command == "init":
        created = target.create_bucket()
        print(f"bucket {target.bucket} {'created with' if created else 'already exists with'} Object Lock; records are kept "
              f"{target.settings.retention_days} day(s) in {target.settings.retention_mode.lower()} mode, in "
              f"{target.settings.country} ({target.settings.source})")
        return 0
    if is_url(str(args.source)):
        raise RunbookError(f"archive push {args.source}: the source is a folder archive (the target is --archive)")
    source = Archive(default_root(args.source))
    if not source.root.is_dir():
        raise RunbookError(f"archive push: {source.root} is not a folder archive")
    target.check_ready()
    report = target.push(source)
    for warning in report.warnings:
        print(f"note: {warning}")
    if report.ok:
        print(f"archive {target.location}: {report.records} records pushed from {source.location}; chain and files intact "
              f"in the bucket, its head {report.head or 'none (empty)'} is the folder's")
        return 0
    print(f"archive {target.location}: {len(report.problems)} problem(s) after the push; first:")
    for i, problem in enumerate(report.problems):
        print(("  " if i else "> ") + problem)
    return 1


def cmd_lab(args) -> int:
    try:
        from runbooklab import Lab
    except ImportError:
        raise RunbookError("the lab is not installed: install the project with its lab extra "
                           "(pip install -e '.[lab]', as `make setup` does)") from None

    lab = Lab(args.lab_dir)
    action = args.lab_command
    if action == "up":
        done = lab.up(profile=args.profile, hosts=args.hosts)
        for line in done:
            print(f"  {line}")
        print(f"lab {'is up' if done else 'was already up as asked; nothing changed'}: "
              f"{len(lab.vms())} VMs on {lab.subnet}")
        print(f"  parameters:  {lab.params_file}")
        print(f"  known hosts: {lab.known_hosts}")
        return 0
    if action == "down":
        done = lab.down()
        for line in done:
            print(f"  {line}")
        print("lab is down: no namespace, link, mount or process of it is left" if done else "no lab was up")
        return 0
    if action == "status":
        rows = lab.status_rows()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        if not rows:
            print(f"no lab at {lab.root}; `runbook lab up` builds one")
            return 0
        cols = ["name", "address", "roles", "state", "link", "ssh", "processes"]
        table = [{c: (", ".join(r[c]) if isinstance(r[c], list) else ("yes" if r[c] is True else "no" if r[c] is False
                  else str(r[c]))) for c in cols} for r in rows]
        widths = {c: max(len(c), *(len(t[c]) for t in table)) for c in cols}
        print("  ".join(c.ljust(widths[c]) for c in cols))
        for t in table:
            print("  ".join(t[c].ljust(widths[c]) for c in cols))
        return 0
    vm = args.vm
    if action == "stop":
        print(f"{vm}: stopped" if lab.stop(vm) else f"{vm}: was already stopped")
    elif action == "start":
        print(f"{vm}: started" if lab.start(vm) else f"{vm}: was already running")
    elif action == "cut":
        lab.cut(vm)
        print(f"{vm}: network link cut (the VM keeps running; `runbook lab heal {vm}` restores it)")
    elif action == "heal":
        lab.heal(vm)
        print(f"{vm}: network link restored")
    elif action == "rekey":
        print(f"{vm}: new host key {lab.rekey(vm)}; the pinned key was NOT updated, so connections now fail "
              "as they would against a man-in-the-middle")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runbook", description=__doc__)
    parser.add_argument("--archive", metavar="DIR|s3://BUCKET/PREFIX",
                        help="archive: a folder, or object storage with Object Lock (settings: $RUNBOOK_ARCHIVE_SETTINGS); "
                             "default $RUNBOOK_ARCHIVE, else the project's outputs/")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="execute a notebook headless and archive the record")
    p.add_argument("notebook", type=Path)
    p.add_argument("--params", required=True, type=Path, help="parameter file (params/<environment>.yaml)")
    p.add_argument("--apply", action="store_true", help="make changes (default: plan only, nothing changes)")
    p.add_argument("--timeout", type=float, metavar="S", help="fail a cell that runs longer than S seconds")
    p.add_argument("--allow-not-ready", action="store_true",
                   help="exit 0 when the runbook ends with a bad verdict (not ready, incomplete): a report, not a gate")
    p.add_argument("--reason", metavar="TEXT", help="why this run is made (a ticket, a change request); default $RUNBOOK_REASON")
    p.add_argument("--operator", metavar="NAME", help="who runs it; default $RUNBOOK_OPERATOR, else user@host")
    p.add_argument("--no-input", action="store_true", help="the archived HTML leaves the code cells out (for reviewers)")
    p.add_argument("--change", metavar="ID", help="the change this run belongs to (a ticket); default $RUNBOOK_CHANGE")
    p.add_argument("--key", metavar="FILE", help="where approvals are required: the operator's SSH key, which names them "
                                                 "(default $RUNBOOK_SIGNING_KEY, else ~/.ssh/id_ed25519)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("approve", help="sign a plan run with your SSH key: the approval an apply in a guarded environment needs")
    p.add_argument("run", help="the plan run's id (or a unique prefix)")
    p.add_argument("--key", default="~/.ssh/id_ed25519",
                   help="your SSH private key, or its .pub with the key in ssh-agent (default ~/.ssh/id_ed25519)")
    p.add_argument("--params", type=Path, help="the environment's parameter file (default: the one the plan used)")
    p.add_argument("--change", metavar="ID", help="the change the approval belongs to (default: the plan's)")
    p.set_defaults(func=cmd_approve)

    p = sub.add_parser("change", help="one change across runs: plans, approvals, applies and retries")
    q = p.add_subparsers(dest="change_command", required=True).add_parser("show", help="the change's records in order")
    q.add_argument("id", help="the change id runs were made with (--change)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_change)

    p = sub.add_parser("diff", help="what differs between two runs: run, parameters, plan steps, changes applied")
    p.add_argument("a", help="the earlier run (id or prefix)")
    p.add_argument("b", help="the later run")
    p.add_argument("--html", type=Path, metavar="FILE", help="also write the difference as an HTML page")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("check", help="validate a parameter file and exit (2 when invalid)")
    p.add_argument("params", type=Path)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("facts", help="gather VM facts over SSH (read-only) and print them")
    p.add_argument("--params", required=True, type=Path)
    p.add_argument("--hosts", help="comma-separated host names (default: every host)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_facts)

    p = sub.add_parser("runs", help="list archived runs, newest first")
    p.add_argument("--env", help="environment name")
    p.add_argument("--notebook", help="notebook name, e.g. 00-environment-overview")
    p.add_argument("--status", choices=["succeeded", "failed", "interrupted", "killed", "approved"],
                   help="how runs ended (approved: the approvals of plans)")
    p.add_argument("--since", help="start date or time (ISO, UTC), inclusive")
    p.add_argument("--until", help="start date or time (ISO, UTC), exclusive")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("show", help="one run: what, where, who, why, how it ended, what it changed (--json: the manifest)")
    p.add_argument("run", help="run id or a unique prefix")
    p.add_argument("--with-params", action="store_true", help="include the (redacted) parameter file")
    p.add_argument("--json", action="store_true", help="the manifest as archived")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("verify", help="recompute the archive's hash chain and file hashes (exit 1 if broken)")
    p.add_argument("--head", metavar="SEQ:SHA256",
                   help="a chain head printed after an earlier run (a witness kept outside the archive)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("lab", help="the built-in lab: VMs as network namespaces on this machine (root)")
    p.add_argument("--lab-dir", metavar="DIR", help="lab folder (default: $RUNBOOK_LAB_DIR, else .lab/)")
    p.set_defaults(func=cmd_lab)
    lab = p.add_subparsers(dest="lab_command", required=True)
    q = lab.add_parser("up", help="build the lab, or bring it back to the profile (idempotent)")
    g = q.add_mutually_exclusive_group()
    g.add_argument("--profile", metavar="NAME|FILE",
                   help="seed: the founding story's 16 hosts (default); small: 4; or a parameter file of your own "
                        "whose hosts are in 10.77.0.0/24")
    g.add_argument("--hosts", type=int, metavar="N", help="N generic hosts instead of a profile")
    lab.add_parser("down", help="remove every VM, namespace, link and process of the lab")
    q = lab.add_parser("status", help="each VM, its address, whether SSH answers, what it runs")
    q.add_argument("--json", action="store_true")
    for name, text in (("stop", "power a VM off (its disk is kept)"), ("start", "power a VM on"),
                       ("cut", "take a VM's network link down"), ("heal", "bring a VM's link back up"),
                       ("rekey", "replace a VM's host key without updating the pin (a man-in-the-middle drill)")):
        q = lab.add_parser(name, help=text)
        q.add_argument("vm")

    p = sub.add_parser("reindex", help="rebuild the query index from the ledger")
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("archive", help="the team's archive in object storage (--archive s3://bucket/prefix)")
    p.set_defaults(func=cmd_archive)
    q = p.add_subparsers(dest="archive_command", required=True)
    q.add_parser("init", help="create the bucket with Object Lock (if it is not there yet)")
    r = q.add_parser("push", help="copy a folder archive into the bucket, chain and all, and verify it there")
    r.add_argument("source", help="the folder archive to copy (e.g. outputs/)")

    from . import report, suite  # commands that live in their own modules

    suite.add_parser(sub)
    report.add_parser(sub)
    return parser


# Commands that read or write the archive first archive the journals of runs that were killed.
_ARCHIVE_COMMANDS = ("run", "runs", "show", "verify", "reindex", "approve", "change", "diff", "suite", "report")


def _recover(args) -> None:
    from .runner import recover_killed_runs

    archive = _archive(args)
    if (archive.root / ".journal").is_dir():
        recover_killed_runs(archive, sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in _ARCHIVE_COMMANDS:
            _recover(args)
        return args.func(args)
    except RunbookError as e:
        print(f"runbook: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("runbook: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
