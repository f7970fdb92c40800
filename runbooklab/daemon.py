"""Shell snippets that start and stop a lab daemon inside a VM, tracked by a pid file in /run.

A pid file, not ``pgrep -f``: the shell that runs the check carries the daemon's command line
itself, so a pattern search would find the checker and never start the daemon. /run is a tmpfs
per VM boot, so a stale pid file cannot outlive the VM. The redirections wrap the whole subshell:
a background job that keeps the SSH session's stdout open would hang the session until it exits.
"""

from __future__ import annotations


def start(name: str, command: str, log: str) -> str:
    pid = f"/run/{name}.pid"
    return (f"if [ -f {pid} ] && kill -0 $(cat {pid}) 2>/dev/null; then echo running; "
            f"else (cd / && exec setsid {command}) </dev/null >>{log} 2>&1 & echo $! > {pid}; echo started; fi")


def stop(name: str) -> str:
    pid = f"/run/{name}.pid"
    return (f"if [ -f {pid} ]; then p=$(cat {pid}); kill $p 2>/dev/null; "
            f"for i in $(seq 50); do kill -0 $p 2>/dev/null || break; sleep 0.1; done; rm -f {pid}; fi; true")


BOOT_DIR = "/etc/runbook-lab/boot.d"


def enable(name: str, command: str, log: str) -> str:
    """Start the daemon now and at every boot of the VM (the lab runs BOOT_DIR's scripts, as an init would)."""
    import base64

    script = "#!/bin/sh\n# started at every boot of this lab VM (written by the runbooklib lab)\n" + start(name, command, log) + "\n"
    data = base64.b64encode(script.encode()).decode()
    return f"mkdir -p {BOOT_DIR} && echo {data} | base64 -d > {BOOT_DIR}/{name}.sh && sh {BOOT_DIR}/{name}.sh"


def disable(name: str) -> str:
    """Stop the daemon and keep it from starting at boot."""
    return f"rm -f {BOOT_DIR}/{name}.sh; " + stop(name)


def run_boot_scripts() -> str:
    return f"for f in {BOOT_DIR}/*.sh; do [ -f \"$f\" ] && sh \"$f\"; done; true"
