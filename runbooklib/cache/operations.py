"""Redis on the cache VMs: operations named after the state they ensure, planned from the facts.

Each operation returns the steps still needed on one host (none when it is right), so a second
apply plans nothing. The configuration is a drop-in (``/etc/redis/runbooklib.conf``) included as
the last directive of Debian's ``/etc/redis/redis.conf`` (the file Debian's unit starts the server
with), so the package's own file stays as shipped but for that one line, and the drop-in's settings
win. A new drop-in is loaded by ``redis-server`` itself before it is kept (a probe that reads the
whole configuration and listens nowhere: Redis has no config-test flag, but it stops at the first
bad directive); the previous file is kept as ``….runbook-prev``.

The password is in the drop-in (``requirepass``, and ``masterauth`` on every host, so that either
can be the replica after a failover); plans and diffs show a placeholder, the file with the value
is written over SFTP (mode 600) and moved into place by the step.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..phase import steps as phase_steps
from ..phase.steps import Operation, Step, file_diff, operation
from ..ssh import HostResult
from .client import fill_secret, secret_lines
from .facts import DROPIN, MAIN_CONFIG, SERVICE

PREVIOUS = ".runbook-prev"
INCLUDE = f"include {DROPIN}"


@dataclass(frozen=True)
class ShellStep(Step):
    """A command that reads files written for it (``$FILE_<name>``, mode 600, removed after), which may hold the password placeholder."""

    files: tuple[tuple[str, str], ...] = ()


# -- what the servers should look like ---------------------------------------------------------

def role(p, host, primary: str | None = None) -> str | None:
    """``primary`` or ``replica`` (``primary`` overrides the parameters' primary, for a failover)."""
    vms = p.cache.vms
    if primary is None:
        return p.cache.roles().get(host.name)
    if host.name == primary:
        return "primary"
    return "replica" if host.name in (vms.primary, vms.replica) else None


def desired_config(p, host, primary: str | None = None) -> str:
    """The drop-in this host should have, with the password as a placeholder."""
    vms, r = p.cache.vms, role(p, host, primary)
    primary_host = p.host(primary or vms.primary)
    pers = vms.persistence
    lines = [f"# Written by runbooklib (cache phase): {host.name} is the session cache's {r} in {p.environment.name}.",
             "# Edit the parameter file and re-run 08-session-cache, not this file. The previous version is kept as",
             f"# {DROPIN.rsplit('/', 1)[1]}{PREVIOUS}; redis-server loaded this file before it was kept.",
             f"bind {host.address} 127.0.0.1",
             "protected-mode yes",
             f"port {vms.port}"]
    text = "\n".join(lines) + "\n" + secret_lines(None)
    more = []
    if r == "replica":
        more += [f"replicaof {primary_host.address} {vms.port}", "replica-read-only yes"]
    more += [f"maxmemory {vms.maxmemory_mb}mb", f"maxmemory-policy {vms.maxmemory_policy}",
             "save " + (" ".join(pers.save) if pers.rdb else '""'),
             f"appendonly {'yes' if pers.aof else 'no'}", f"appendfsync {pers.appendfsync}"]
    return text + "\n".join(more) + "\n"


def probe_command(config: str) -> str:
    """Load ``config`` after Debian's main file in a redis-server that listens nowhere and exits: its verdict.

    It reads an empty folder (no dataset is loaded, no pid file, no log file), so it costs a few ms.
    """
    return ('d=$(mktemp -d) && printf "include %s\\ninclude %s\\n" ' + shlex.quote(MAIN_CONFIG) + " " + shlex.quote(config)
            + ' > "$d/probe.conf" && out=$(redis-server "$d/probe.conf" --port 0 --unixsocket "" --dir "$d" --dbfilename probe.rdb '
            '--appendonly no --save "" --replicaof no one --daemonize no --supervised no --logfile "" --pidfile "" 2>&1); '
            'rm -rf "$d"; echo "$out" | grep -q "Configuration loaded"')


def validated_write(path: str) -> str:
    """Put ``$FILE_dropin`` in place as ``path`` (redis-owned, 0640), have redis-server load it, keep the previous; put it back if refused."""
    q, prev, old = shlex.quote(path), shlex.quote(path + PREVIOUS), shlex.quote(path + PREVIOUS + ".tmp")
    return (f"rm -f {old}; if [ -f {q} ]; then cp -a {q} {old}; fi && install -m 0640 -o redis -g redis \"$FILE_dropin\" {q} && "
            f"if ! {probe_command(path)}; then if [ -f {old} ]; then mv -f {old} {q}; else rm -f {q}; fi; "
            "echo \"redis-server refused the new configuration (nothing changed): $(echo \"$out\" | grep -vE '^[0-9]+:' | tail -3)\" >&2; "
            f"exit 1; fi; if [ -f {old} ]; then mv -f {old} {prev}; fi")


def wait_ping(seconds: int = 60) -> str:
    """Wait until the server answers PING (logged in): the next step talks to it."""
    return (f"for i in $(seq {seconds * 4}); do [ \"$(rcli PING 2>/dev/null)\" = PONG ] && exit 0; sleep 0.25; done; "
            f"echo '{SERVICE} started but did not answer PING within {seconds} s' >&2; exit 1")


def config_changes(p, host, f: dict) -> bool:
    return f["dropin"] != desired_config(p, host) or any(v != "same" for v in (f["dropin_secrets"] or {"-": "absent"}).values())


# -- operations --------------------------------------------------------------------------------

@operation("server installed", touches="nothing (a missing server is a blocked step)", undo="-")
def server_installed(p, h, f) -> list[Step]:
    if f["server"]["installed"]:
        return []
    return [Step(h.name, "server installed", "install Redis", None,
                 blocked=f"redis-server is not installed on {h.name}; install it from your mirror (apt-get install redis-server)")]


@operation("topology", touches="nothing (a primary that replicates from another server blocks the plan)", undo="-")
def topology_matches(p, h, f) -> list[Step]:
    info = f["replication"]["info"]
    promoted = f"{h.name} is the session cache's primary in"  # what a failover (or 08 with swapped roles) wrote there
    if role(p, h) == "replica" and info.get("role") == "master" and promoted in (f["dropin"] or ""):
        return [Step(h.name, "topology", "nothing planned: the replica is a primary", None,
                     blocked=(f"{h.name} is cache.vms.replica but runs as the primary, by its own drop-in (after "
                              "incident/redis-failover?): swap cache.vms.primary and cache.vms.replica in the parameter file; "
                              "the plan would otherwise make the serving primary a read-only replica of the other host"))]
    if role(p, h) != "primary" or info.get("role") != "slave":
        return []
    return [Step(h.name, "topology", "nothing planned: the primary replicates from another server", None,
                 blocked=(f"{h.name} is cache.vms.primary but replicates from {info.get('master_host')}:{info.get('master_port')} "
                          "(after a failover, swap cache.vms.primary and cache.vms.replica in the parameter file); the plan "
                          "would otherwise turn the new primary back into a replica"))]


@operation("append-only file", touches="the running server's `appendonly` (`CONFIG SET`, which writes the AOF from memory)",
           undo="`CONFIG SET appendonly no` (the drop-in's undo puts the file's setting back)")
def append_only_file(p, h, f) -> list[Step]:
    """Turn AOF on at run time before a restart does: Redis started with ``appendonly yes`` and no AOF yet starts empty.

    (It creates a new, empty AOF and ignores the RDB snapshot: every session would be lost.)
    ``CONFIG SET appendonly yes`` writes the AOF from the data in memory first; the restart then loads it.
    """
    if not p.cache.vms.persistence.aof:
        return []
    if not f["persistence"] and f["dropin"] is not None and "\nappendonly yes\n" not in f["dropin"]:
        # not answering, with data from a configuration without AOF: a start that reads `appendonly yes` starts empty
        return [Step(h.name, "append-only file", "turn on the append-only file", None,
                     blocked=(f"redis-server on {h.name} does not answer, and its configuration turns the append-only file on "
                              "for the first time: started that way it would ignore its snapshot and start empty. Start it "
                              f"with its present configuration first (systemctl start {SERVICE}), then re-run"))]
    if f["persistence"].get("aof_enabled") != "0":
        return []
    wait = ("for i in $(seq 600); do s=$(rcli INFO persistence | tr -d '\r'); echo \"$s\" | grep -q '^aof_rewrite_in_progress:0' && "
            "echo \"$s\" | grep -q '^aof_rewrite_scheduled:0' && { echo \"$s\" | grep -q '^aof_last_bgrewrite_status:ok' && exit 0; "
            "echo 'the AOF rewrite failed (INFO persistence: aof_last_bgrewrite_status)' >&2; exit 1; }; sleep 0.5; done; "
            "echo 'the AOF rewrite did not finish within 300 s' >&2; exit 1")
    return [Step(h.name, "append-only file", "turn on the append-only file at run time (written from memory) before the restart reads "
                                             "appendonly yes: started that way without one, Redis would start empty",
                 f'[ "$(rcli CONFIG SET appendonly yes)" = OK ] && {wait}', "rcli CONFIG SET appendonly no")]


@operation("server configuration",
           touches=f"the drop-in `{DROPIN}` (mode 0640, owner redis; previous kept as `….runbook-prev`; loaded by redis-server before it is kept)",
           undo="put `….runbook-prev` back (or remove the file when there was none), restart the service")
def server_configuration(p, h, f) -> list[Step]:
    if not config_changes(p, h, f):
        return []
    want, current = desired_config(p, h), f["dropin"]
    secrets = f["dropin_secrets"] or {}
    why = "write" if current is None else ("rewrite" if current != want else "set the password in")
    undo = (f"mv -f {DROPIN}{PREVIOUS} {DROPIN} && systemctl restart {SERVICE}" if current is not None
            else f"rm -f {DROPIN} && systemctl restart {SERVICE}")
    note = "" if current != want else f" (the password lines differ: {', '.join(f'{k} {v}' for k, v in secrets.items())})"
    return [ShellStep(h.name, "server configuration", f"{why} {DROPIN} as the {role(p, h)}{note}", validated_write(DROPIN), undo,
                      diff=file_diff(DROPIN, current, want), files=(("dropin", want),))]


@operation("drop-in included", touches=f"the last line of Debian's `{MAIN_CONFIG}` (`{INCLUDE}`; previous kept as `redis.conf.runbook-prev`)",
           undo="put `redis.conf.runbook-prev` back, restart the service")
def dropin_included(p, h, f) -> list[Step]:
    last = f["last_directive"]
    if last == INCLUDE:
        return []
    if last is None:
        return [Step(h.name, "drop-in included", f"include the drop-in from {MAIN_CONFIG}", None,
                     blocked=f"{MAIN_CONFIG} is missing on {h.name}; reinstall redis-server (apt-get install --reinstall redis-server)")]
    q, prev = shlex.quote(MAIN_CONFIG), shlex.quote(MAIN_CONFIG + PREVIOUS)
    command = (f"cp -a {q} {prev} && sed -i '\\#^{INCLUDE}$#d' {q} && printf '\\n# runbooklib: the drop-in wins (the last include)\\n{INCLUDE}\\n' >> {q}"
               f" && if ! {probe_command('/dev/null')}; then cp -a {prev} {q}; echo 'redis-server refused {MAIN_CONFIG} with the include' >&2; exit 1; fi")
    return [Step(h.name, "drop-in included", f"append `{INCLUDE}` to {MAIN_CONFIG} (its last directive is now `{last[:80]}`)", command,
                 f"cp -a {prev} {q} && systemctl restart {SERVICE}", diff=f"--- a{MAIN_CONFIG}\n+++ b{MAIN_CONFIG}\n@@ end @@\n+{INCLUDE}\n")]


@operation("service running", touches=f"the `{SERVICE}` service: enabled at boot, running, restarted for a new configuration",
           undo=f"`systemctl disable --now {SERVICE}`")
def service_running(p, h, f) -> list[Step]:
    svc = f["service"]
    changed = config_changes(p, h, f) or f["last_directive"] != INCLUDE
    out = []
    if svc["enabled"] != "enabled":
        out.append(Step(h.name, "service running", f"enable {SERVICE} at boot (now {svc['enabled']})",
                        f"systemctl enable {SERVICE}", f"systemctl disable {SERVICE}"))
    if svc["active"] != "active":
        out.append(Step(h.name, "service running", f"start {SERVICE} (now {svc['active']})",
                        f"systemctl start {SERVICE} && {wait_ping()}", f"systemctl stop {SERVICE}"))
    elif changed:
        out.append(Step(h.name, "service running", f"restart {SERVICE} for its new configuration",
                        f"systemctl restart {SERVICE} && {wait_ping()}", undo_note="restored by the configuration's undo"))
    elif not f["replication"]["answering"]:
        out.append(Step(h.name, "service running", f"restart {SERVICE}: it runs but does not answer ({f['replication']['error'][:120]})",
                        f"systemctl restart {SERVICE} && {wait_ping()}", undo_note="-"))
    return out


@operation("replication", touches="the replica's primary at run time (`REPLICAOF`; the drop-in says the same at every start)",
           undo="`REPLICAOF NO ONE` on the replica")
def replication(p, h, f) -> list[Step]:
    if role(p, h) != "replica" or service_running(p, h, f):
        return []  # a (re)start reads the drop-in's replicaof
    info, primary = f["replication"]["info"], p.host(p.cache.vms.primary)
    port = p.cache.vms.port
    if info.get("role") == "slave" and (info.get("master_host"), info.get("master_port")) == (str(primary.address), str(port)):
        return []
    now = f"replicates from {info.get('master_host')}:{info.get('master_port')}" if info.get("role") == "slave" else "is a primary"
    return [Step(h.name, "replication", f"replicate from {primary.name} ({primary.address}:{port}); it {now}",
                 f"[ \"$(rcli REPLICAOF {primary.address} {port})\" = OK ]", "rcli REPLICAOF NO ONE")]


OPERATIONS: tuple[Operation, ...] = (server_installed, topology_matches, append_only_file, server_configuration, dropin_included, service_running, replication)


# -- planning and applying ---------------------------------------------------------------------

def plan(p, facts: dict[str, dict], fact_errors: dict[str, dict[str, str]] | None = None) -> list[Step]:
    """Every step still needed on the cache hosts; only the blocked topology step when the primary replicates from another server."""
    steps = phase_steps.plan(OPERATIONS, p, facts, fact_errors)
    wrong = [s for s in steps if s.operation == "topology" and s.command is None]
    return wrong or steps


def executor(client) -> Callable[[Any, Step], HostResult]:
    """Every step through the client (``rcli`` defined); a ShellStep's files with the password put in."""
    def execute(host, step: Step) -> HostResult:
        files = {}
        if isinstance(step, ShellStep):
            files = {name: fill_secret(content, client._password.reveal()) for name, content in step.files}
        return client.shell(host, step.command, files)
    return execute


def apply(p, client, steps: Sequence[Step], on_change=None, primary: str | None = None) -> dict[str, phase_steps.HostApply]:
    """The primary's steps first, then the replica's; nothing on the replica if the primary failed."""
    return phase_steps.apply_first(client.fleet, steps, primary or p.cache.vms.primary, on_change, executor(client),
                                   role="primary", rest="replica")
