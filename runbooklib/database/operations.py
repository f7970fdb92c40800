"""The database topology: operations named after the state they ensure, planned from the facts.

Each operation returns the steps still needed on one host (none when it is right), so a second
apply plans nothing. Statements are rendered by the flavour's dialect; a step that runs SQL is an
:class:`SqlStep` whose statements the plan shows exactly (passwords as placeholders), executed by
the administrator's client (:mod:`runbooklib.database.client`). A server that does not answer yet
gets its statements planned anyway: every one of them is idempotent (``IF NOT EXISTS``, ``STOP``
before ``CHANGE``), and the next run's facts show them done.

The apply runs the primary first, then the replicas (in parallel): a replica is pointed at a
primary that already has its accounts. A primary whose apply failed stops the replicas' part.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..phase import steps as phase_steps
from ..phase.steps import Operation, Step, file_diff, operation, write_file
from ..ssh import HostResult
from .dialects import Dialect, Source, dialect
from .facts import RECOVERY_DROPIN

PREVIOUS = ".runbook-prev"


@dataclass(frozen=True)
class SqlStep(Step):
    """A step made of SQL statements, run in one session by the administrator's client."""

    statements: tuple[str, ...] = ()


@dataclass(frozen=True)
class ShellStep(Step):
    """A shell command that reads files written for it (``$FILE_<name>``, mode 600, removed after): ``files`` is
    ``((name, content), ...)`` where content may hold secret placeholders."""

    files: tuple[tuple[str, str], ...] = ()


def sql_step(host, op: str, change: str, statements: Sequence[str], undo: str | None = None, undo_note: str = "") -> SqlStep:
    return SqlStep(host.name, op, change, "; ".join(statements), undo, undo_note, statements=tuple(statements))


# -- what the servers should look like ---------------------------------------------------------

def flavour(p) -> Dialect:
    return dialect(p.database.flavour)


def role(p, host) -> str | None:
    return p.database.roles().get(host.name)


def server_id(host) -> int:
    """A server id that is unique and never changes with the host's role: its IPv4 address as a number.

    Roles move (a switchover makes the replica the primary); a server id that followed the role would
    change under the GTIDs and binlogs that carry it.
    """
    number = int(ipaddress.ip_address(host.address)) % 2**32
    return number or 1


def desired_config(p, host) -> str:
    """The drop-in this host's server should have, exactly as written."""
    d, db, r = flavour(p), p.database, role(p, host)
    settings = d.server_settings(server_id=server_id(host), bind_address=str(host.address), port=db.port,
                                 datadir=db.datadir, read_only=r != "primary",
                                 retention_seconds=db.binlog_retention_seconds, report_host=host.name)
    head = (f"# Written by runbooklib (database phase): {host.name} is the {r} of {p.environment.name}.\n"
            "# Edit the parameter file and re-run 05-database, not this file. The previous version is kept as\n"
            f"# {d.config_file.rsplit('/', 1)[1]}{PREVIOUS}; the server checked this file before it was restarted.\n")
    return head + "[mysqld]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())


def replica_source(p, host) -> Source:
    db = p.database
    primary = p.host(db.primary)
    return Source(str(primary.address), db.port, db.replication_user,
                  db.delay_seconds if role(p, host) == "delayed replica" else 0)


def account_hosts(p) -> list[str]:
    """Where replication connects from: every database host's address (after a switchover, any may replicate)."""
    return [str(p.host(name).address) for name in p.database.roles()]


def validated_write(d: Dialect, path: str, content: str) -> str:
    """Write the drop-in, let the server check its whole configuration, keep the previous file; put it back if refused."""
    q, prev, tmp = shlex.quote(path), shlex.quote(path + PREVIOUS), shlex.quote(path + PREVIOUS + ".tmp")
    return (f"rm -f {tmp}; if [ -f {q} ]; then cp -a {q} {tmp}; fi && {write_file(path, content)} && "
            f"if ! out=$({{ {d.validate_config_command()}; }} 2>&1); then "
            f"if [ -f {tmp} ]; then mv -f {tmp} {q}; else rm -f {q}; fi; "
            f"echo \"{d.server} refused the new configuration (nothing changed): "
            "$(echo \"$out\" | grep -iE 'error|unknown' | tail -3)\" >&2; exit 1; fi; "
            f"if [ -f {tmp} ]; then mv -f {tmp} {prev}; fi")


def service_command(d: Dialect, action: str, wait_seconds: int = 120) -> str:
    """``systemctl <action>``, then wait until the server answers: the next step talks to it.

    systemd's ``Type=notify`` already waits for the server to say it is ready, but not every
    packaging is notify-aware (and a unit file may say otherwise); ``ping`` answers as soon as the
    server accepts connections, even before it accepts the login.
    """
    tries = wait_seconds * 2
    return (f"systemctl {action} {d.service} && for i in $(seq {tries}); do {d.admin_tool} --connect-timeout=2 ping >/dev/null 2>&1 "
            f"&& exit 0; sleep 0.5; done; echo '{d.service} started but the server did not answer within {wait_seconds} s' >&2; exit 1")


def config_changes(p, host, f: dict) -> bool:
    return f["config"] != desired_config(p, host)


# -- operations --------------------------------------------------------------------------------

@operation("server installed", touches="nothing (a missing server is a blocked step)", undo="-")
def server_installed(p, h, f) -> list[Step]:
    if f["server"]["installed"]:
        return []
    d = flavour(p)
    return [Step(h.name, "server installed", f"install {d.title}", None,
                 blocked=f"{d.server} is not installed on {h.name}; install {d.package} from your mirror (apt-get install {d.package})")]


@operation("topology", touches="nothing (a primary that replicates from another server blocks the plan)", undo="-")
def topology_matches(p, h, f) -> list[Step]:
    if role(p, h) != "primary" or not f["replica"]:
        return []
    source = f["replica"]["source_host"]
    name = next((x.name for x in p.hosts if str(x.address) == source), source)
    return [Step(h.name, "topology", f"{h.name} is database.primary", None,
                 blocked=(f"{h.name} replicates from {name}: it is not a primary (after a switchover?). Set database.primary "
                          f"to the server that takes writes ({name}?) and the replicas to match, then re-run; nothing was "
                          "planned, so that no replica is pointed at the wrong server"))]


@operation("server configuration",
           touches=f"the drop-in `90-runbooklib-replication.cnf` in the server's configuration folder (previous kept as `…{PREVIOUS}`; "
                   "checked by the server before any restart)",
           undo=f"put `…{PREVIOUS}` back (or remove the file when there was none), restart the service")
def server_configuration(p, h, f) -> list[Step]:
    want = desired_config(p, h)
    current = f["config"]
    if current == want:
        return []
    d = flavour(p)
    path = d.config_file
    change = (f"{'write' if current is None else 'update'} {path}: server_id {server_id(h)}, ROW binlogs with GTIDs, "
              f"binlogs kept {p.database.binlog_retention_seconds} s, {'read-only' if role(p, h) != 'primary' else 'writable'}")
    if current is None:
        return [Step(h.name, "server configuration", change, validated_write(d, path, want), f"rm -f {path}",
                     diff=file_diff(path, None, want))]
    return [Step(h.name, "server configuration", change, validated_write(d, path, want),
                 f"cp {path}{PREVIOUS} {path}", "then restart the service", diff=file_diff(path, current, want))]


@operation("data directory", touches="the data directory (the system tables)",
           undo="stop the service and empty the data directory (nothing else is there yet)")
def data_directory(p, h, f) -> list[Step]:
    if f["datadir_initialised"]:
        return []
    d, datadir = flavour(p), p.database.datadir
    files: tuple[tuple[str, str], ...] = ()
    init_file = None
    if d.flavour != "mariadb":  # MySQL's root gets its password at initialisation (it has no socket login)
        files = (("init.sql", "ALTER USER 'root'@'localhost' IDENTIFIED BY <<secret database.root_password>>;\n"),)
        init_file = '"$FILE_init"'
    return [ShellStep(h.name, "data directory", f"initialise {datadir} (system tables)", d.initialize_command(datadir, init_file),
                      None, f"stop {d.service}, then empty {datadir}", files=files)]


@operation("service running", touches="the database service: enabled at boot, running, restarted for a new configuration",
           undo="`systemctl disable --now <service>`")
def service_running(p, h, f) -> list[Step]:
    d = flavour(p)
    svc = f["service"]
    steps = []
    if svc["enabled"] != "enabled":
        steps.append(Step(h.name, "service running", f"enable {d.service} at boot", f"systemctl enable {d.service}",
                          f"systemctl disable {d.service}"))
    if svc["active"] != "active":
        steps.append(Step(h.name, "service running", f"start {d.service}", service_command(d, "start"),
                          f"systemctl stop {d.service}"))
    elif config_changes(p, h, f):
        steps.append(Step(h.name, "service running", f"restart {d.service} to load the new configuration",
                          service_command(d, "restart"), None, "restart it again once the previous drop-in is back"))
    return steps


def _restarting(p, h, f) -> bool:
    return f["service"]["active"] != "active" or config_changes(p, h, f)


@operation("read only", touches="`read_only` of the running server (the drop-in sets it at every start)",
           undo="the opposite `SET GLOBAL read_only`")
def read_only_flag(p, h, f) -> list[Step]:
    if _restarting(p, h, f) or not f["sql"]["answering"]:
        return []  # the start loads the drop-in, which sets it
    want = role(p, h) != "primary"
    if (f["sql"]["variables"].get("read_only") == "ON") == want:
        return []
    d = flavour(p)
    return [sql_step(h, "read only", f"{'read-only' if want else 'writable'} now ({role(p, h)})", d.read_only(want),
                     "; ".join(d.read_only(not want)))]


@operation("root password", touches="the `root@localhost` account (not replicated: sql_log_bin = 0)",
           undo="set the old password by hand (`ALTER USER`): it is not kept")
def root_password(p, h, f) -> list[Step]:
    if f["root_password_set"]:
        return []
    d = flavour(p)
    return [sql_step(h, "root password", "give root@localhost the password in database.root_password (socket login kept)",
                     d.set_root_password(read_only=role(p, h) != "primary"), None, "ALTER USER with the old password by hand")]


@operation("replication user", touches="the replication accounts, one per database host's address (not replicated: sql_log_bin = 0)",
           undo="`DROP USER` each account, with sql_log_bin = 0")
def replication_user(p, h, f) -> list[Step]:
    users = f["replication_users"]
    wanted = account_hosts(p)
    missing = [a for a in wanted if not (users or {}).get(a)]
    if not missing:
        return []
    d, user = flavour(p), p.database.replication_user
    drop = d.without_binlog([f"DROP USER IF EXISTS '{user}'@'{a}'" for a in missing])
    return [sql_step(h, "replication user", f"replication account {user}@ {', '.join(missing)} with REPLICATION SLAVE",
                     d.create_replication_user(user, missing, read_only=role(p, h) != "primary"), "; ".join(drop))]


@operation("heartbeat", touches="schema `runbooklib` (table `heartbeat`, event `heartbeat_tick` writing it every second), replicated",
           undo="`DROP DATABASE runbooklib` on the primary (replicated)")
def heartbeat(p, h, f) -> list[Step]:
    d, event = flavour(p), f["heartbeat"]["event"]
    if role(p, h) != "primary":
        if event == "ENABLED":  # a former primary: its event would write here, outside replication
            return [sql_step(h, "heartbeat", "disable the heartbeat event here (a replica receives the primary's)",
                             d.heartbeat_local(False), "; ".join(d.heartbeat_local(True)))]
        return []
    if event == "ENABLED":
        return []
    statements = d.heartbeat_setup() + (d.heartbeat_local(True) if event else [])
    return [sql_step(h, "heartbeat", "heartbeat table and event (a row written every second, replicated: lag is read from it)",
                     statements, "DROP DATABASE IF EXISTS runbooklib")]


@operation("replication", touches="the replica's source, delay and threads",
           undo="`STOP SLAVE; RESET SLAVE ALL` (MySQL 8: `STOP REPLICA; RESET REPLICA ALL`)")
def replication(p, h, f) -> list[Step]:
    r = role(p, h)
    if r not in ("replica", "delayed replica"):
        return []
    if f["recovery_marker"] is None and f.get("recovery_dropin") is not None:  # the recovery is over: threads at boot again
        return [Step(h.name, "replication", f"remove {RECOVERY_DROPIN} (the recovery is over: the replica starts at boot again)",
                     f"rm -f {RECOVERY_DROPIN}", f"write it back ({flavour(p).skip_replica_start} under [mysqld])")] + _replication(p, h, f)
    return _replication(p, h, f)


def _replication(p, h, f) -> list[Step]:
    if f["recovery_marker"] is not None:
        return [Step(h.name, "replication", "replication as the parameters say", None,
                     blocked=(f"a point-in-time recovery is in progress on {h.name} ({' '.join(f['recovery_marker'].split())[:200]}); "
                              "finish it with incident/db-point-in-time-recovery, or remove "
                              "/etc/mysql/runbooklib-recovery-in-progress once it is over"))]
    d, want, st = flavour(p), replica_source(p, h), f["replica"]
    undo = "; ".join([d.stop_replica(), f"RESET {d.replica_word} ALL"])
    primary = p.database.primary
    delay = f"{want.delay} s delay" if want.delay else "no delay"
    own = d.own_transactions(f["sql"]["variables"]) if st is None and f["sql"]["answering"] else ""
    if own:
        return [Step(h.name, "replication", "replication as the parameters say", None,
                     blocked=(f"{h.name} replicates from nothing and its binlog holds transactions it committed itself ({own}): it was "
                              f"a primary. Pointing it at {primary} could replicate onto rows {primary} never had. If a failover "
                              "replaced it, run incident/db-switchover with database.switchover.failover: true: it fences this "
                              "server, counts what it holds and rejoins it; otherwise rebuild it from the primary"))]
    if st is None:
        return [sql_step(h, "replication", f"replicate from {primary} ({want.host}:{want.port}) with GTIDs, {delay}",
                         d.configure_replica(want), undo)]
    if (st["source_host"], st["source_port"], st["source_user"]) != (want.host, want.port, want.user) or not d.uses_gtid(st):
        return [sql_step(h, "replication", f"re-point from {st['source_host']}:{st['source_port']} to {primary} "
                                           f"({want.host}:{want.port}) with GTIDs, {delay}", d.configure_replica(want), undo)]
    if st["sql_delay"] != want.delay:
        return [sql_step(h, "replication", f"delay {st['sql_delay']} s -> {want.delay} s",
                         d.set_delay(want.delay) + [d.start_replica()],
                         "; ".join(d.set_delay(st["sql_delay"] or 0) + [d.start_replica()]))]
    if st["io_running"] == "No" or st["sql_running"] != "Yes":
        why = "; ".join(e for e in (st["io_error"], st["sql_error"]) if e)
        return [sql_step(h, "replication", f"start the replica threads (IO {st['io_running']}, SQL {st['sql_running']}"
                                           + (f": {why[:200]}" if why else "") + ")", [d.start_replica()], d.stop_replica())]
    return []


OPERATIONS: tuple[Operation, ...] = (
    server_installed, topology_matches, server_configuration, data_directory, service_running, read_only_flag,
    root_password, replication_user, heartbeat, replication,
)


# -- planning and applying ---------------------------------------------------------------------

def plan(p, facts: dict[str, dict], fact_errors: dict[str, dict[str, str]] | None = None) -> list[Step]:
    """Every step still needed on the database hosts, in operation order.

    When the servers are not in the topology the parameters describe (the primary replicates from
    another server), only that is planned, blocked: every other step would be planned for the wrong roles.
    """
    steps = phase_steps.plan(OPERATIONS, p, facts, fact_errors)
    wrong = [s for s in steps if s.operation == "topology" and s.command is None]
    return wrong or steps


def sql_rows(steps: Sequence[Step]) -> list[dict]:
    """The statements of a plan, one row per statement, for people to read before they confirm."""
    return [{"host": s.host, "operation": s.operation, "statement": stmt}
            for s in steps if isinstance(s, SqlStep) for stmt in s.statements]


def executor(client) -> Callable[[Any, Step], HostResult]:
    """How a step is carried out: SQL through the administrator's client, commands over SSH (with their files)."""
    def execute(host, step: Step) -> HostResult:
        if isinstance(step, SqlStep):
            return client.execute(host, step.statements)
        if isinstance(step, ShellStep):
            from .dialects import fill_secrets, secret_fields

            files = {}
            for name, content in step.files:
                needed = secret_fields(content)
                files[name] = fill_secrets(content, {k: client._secrets[k].reveal() for k in needed})
            return client.shell(host, step.command, files)
        return client.fleet.run_on(host, step.command)
    return execute


def apply(p, client, steps: Sequence[Step], on_change=None) -> dict[str, phase_steps.HostApply]:
    """The primary's steps first, then the replicas' in parallel; nothing on the replicas if the primary failed."""
    return phase_steps.apply_first(client.fleet, steps, p.database.primary, on_change, executor(client),
                                   role="primary", rest="replicas")


def verdict(topology_status: str, load_status: str | None, problems: Sequence[str]) -> str:
    """05-database's verdict: ``applied`` when the topology or the load changed anything, else the topology's."""
    if problems:
        return "incomplete"
    if "applied" in (topology_status, load_status):
        return "applied"
    return phase_steps.apply_verdict(topology_status, problems)
