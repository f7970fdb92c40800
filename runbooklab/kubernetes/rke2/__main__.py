"""``rke2`` of the lab (LAB SIMULATION): ``server`` (also ``--cluster-reset``), ``agent``, ``etcd-snapshot save|ls``, ``--version``.

Run by the tarball's ``bin/rke2`` launcher (``python -m runbooklab.kubernetes.rke2``). Flags after the
command are config keys (``rke2 server --node-label a=b``) and go over ``config.yaml``'s, as in RKE2.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from . import CONFIG_FILE, SNAPSHOT_DIR, Fatal, Log, version_text

USAGE = """usage: rke2 [--version] <command> [--config FILE] [--<flag>[=value] ...]

commands (the runbooklib lab's stand-in for RKE2: LAB SIMULATION):
   server          Run management server (--cluster-reset [--cluster-reset-restore-path=SNAPSHOT]: etcd reset to one member)
   agent           Run node agent
   etcd-snapshot   save [--name NAME] | ls: etcd snapshots on this server
"""


def parse_flags(args: list[str]) -> tuple[str, list[tuple[str, object]], list[str]]:
    """``--config`` and the other ``--flag[=value]`` arguments; what is left (positional words)."""
    path, flags, rest = CONFIG_FILE, [], []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-"):
            rest.append(arg)
            i += 1
            continue
        name, sep, value = arg.lstrip("-").partition("=")
        if not sep:
            if i + 1 < len(args) and not args[i + 1].startswith("-"):
                value, i = args[i + 1], i + 1
            else:
                value = True
        if name in ("config", "c"):
            path = str(value)
        else:
            flags.append((name, value))
        i += 1
    return path, flags, rest


def etcd_snapshot(args: list[str], path: str) -> int:
    from . import etcd, node
    from .config import load

    flags = parse_flags(args)[1]
    name = next((str(v) for k, v in flags if k == "name"), "on-demand")
    cfg = load("server", path)
    directory = cfg.get("etcd-snapshot-dir") or SNAPSHOT_DIR
    if args[:1] in (["ls"], ["list"], ["l"]):
        print(f"{'Name':<48} {'Location':<80} {'Size':>10} Created")
        for p in etcd.snapshots(directory):
            st = p.stat()
            print(f"{p.name:<48} {'file://' + str(p):<80} {st.st_size:>10} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(st.st_mtime))}")
        return 0
    if args[:1] != ["save"]:
        print("usage: rke2 etcd-snapshot save [--name NAME] | ls", file=sys.stderr)
        return 1
    snapshot = Path(directory) / f"{name}-{node.from_config(cfg).name}-{int(time.time())}"
    Log().info(f"Saving etcd snapshot to {snapshot}")  # RKE2's log line (k3s pkg/etcd/snapshot.go)
    r = etcd.snapshot_save(str(snapshot))
    if r.returncode != 0:
        raise Fatal(f"etcd snapshot failed: {(r.stderr or r.stdout).strip()[-400:]}")
    print(f"Snapshot {snapshot.name} saved.")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 1
    if argv[0] in ("--version", "-v", "version"):
        print(version_text())
        return 0
    command, args = argv[0], argv[1:]
    log = Log()
    try:
        path, flags, rest = parse_flags(args)
        if command == "etcd-snapshot":
            return etcd_snapshot(args, path)
        if command not in ("server", "agent") or rest:
            print(f"Incorrect Usage: {' '.join(argv)}\n\n{USAGE}", file=sys.stderr)
            return 1
        from .children import set_process_name
        from .config import load

        set_process_name("rke2")
        stopping = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopping.set())
        cfg = load(command, path, flags)
        if command == "server":
            from .server import Server

            return Server(cfg, log, stopping).run()
        from .agent import Agent

        return Agent(cfg, log, stopping).run()
    except Fatal as e:
        log.fatal(str(e))
        return 1
    except Exception as e:  # a bug or an unexpected answer: its traceback, then RKE2's fatal line
        import traceback

        traceback.print_exc()
        log.fatal(f"{type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
