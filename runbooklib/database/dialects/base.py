"""What every database flavour must say, and the parts MySQL's flavours share.

The rest of the phase asks for *intentions* (configure this replica with this delay; stop the
applier; apply up to just before this transaction; promote; read-only; create the replication user
without touching any GTID set) and reads *normalised status*. Each flavour module renders its own
statements and reads its own field names; nothing outside ``dialects/`` spells ``MASTER`` or
``SOURCE``.

Secrets never enter a rendered statement: a password is written as a placeholder
(:func:`secret_placeholder`, e.g. ``<<secret database.replication_password>>``) that the client
fills in a file of mode 600 on the host at run time (:mod:`runbooklib.database.client`). A plan
therefore shows every statement exactly, with the password as its placeholder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, TypedDict

from ..gtid import GtidPosition, GtidSet

HEARTBEAT_SCHEMA = "runbooklib"
HEARTBEAT_TABLE = f"{HEARTBEAT_SCHEMA}.heartbeat"
HEARTBEAT_EVENT = f"{HEARTBEAT_SCHEMA}.heartbeat_tick"
_SECRET = re.compile(r"<<secret ([a-z_.]+)>>")


def secret_placeholder(field: str) -> str:
    """The token a statement carries where a secret's quoted value goes (filled only on the host)."""
    return f"<<secret {field}>>"


def secret_fields(sql: str) -> list[str]:
    """The secret fields a rendered statement needs, in order of first use."""
    return list(dict.fromkeys(_SECRET.findall(sql)))


def fill_secrets(sql: str, values: dict[str, str]) -> str:
    """``sql`` with each placeholder replaced by its value as an SQL string literal."""
    def one(m: re.Match) -> str:
        if m.group(1) not in values:
            raise KeyError(f"no value for the secret {m.group(1)}")
        return sql_string(values[m.group(1)])
    return _SECRET.sub(one, sql)


def sql_string(value: str) -> str:
    """A single-quoted SQL string literal (backslash escapes, the servers' default sql_mode)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r").replace("\0", "\\0") + "'"


def sql_account(user: str, host: str) -> str:
    return f"{sql_string(user)}@{sql_string(host)}"


class ReplicaStatus(TypedDict):
    """``SHOW REPLICA STATUS`` / ``SHOW SLAVE STATUS`` in one shape for every flavour."""

    io_running: str  # Yes, No, Connecting
    sql_running: str  # Yes, No
    source_host: str
    source_port: Optional[int]
    source_user: str
    seconds_behind: Optional[int]  # the server's own figure (not trusted alone: see the heartbeat)
    sql_delay: Optional[int]  # the configured delay, seconds
    remaining_delay: Optional[int]  # seconds until the waiting transaction is applied (None: none waiting)
    gtid_mode: str  # MySQL: Auto_Position 1/0; MariaDB: Using_Gtid No/Slave_Pos/Current_Pos
    retrieved: str  # GTIDs received (MySQL Retrieved_Gtid_Set; MariaDB Gtid_IO_Pos)
    executed: str  # GTIDs applied (MySQL Executed_Gtid_Set; MariaDB @@gtid_slave_pos, read apart)
    io_error: str
    sql_error: str
    source_log_file: str
    read_pos: Optional[int]
    exec_log_file: str
    exec_pos: Optional[int]
    sql_state: str
    until: str  # the UNTIL condition in force (None when there is none)


@dataclass(frozen=True)
class Source:
    """Where a replica replicates from, and how late it applies."""

    host: str  # the primary's address
    port: int
    user: str
    delay: int  # seconds
    password: str = secret_placeholder("database.replication_password")


@dataclass(frozen=True)
class StopPoint:
    """Where a replica's applier must stop: just before the bad transaction.

    ``before`` is the bad transaction's GTID (MySQL stops before it: ``SQL_BEFORE_GTIDS``);
    ``last_good`` the position of the transaction just before it (MariaDB's ``master_gtid_pos`` is
    inclusive); ``log_file``/``log_pos`` the bad transaction's start in the primary's binlog, for a
    stop by position instead.
    """

    before: str | None = None
    last_good: str | None = None
    log_file: str | None = None
    log_pos: int | None = None


def _int(value: str | None) -> int | None:
    return int(value) if value not in (None, "", "NULL") and str(value).lstrip("-").isdigit() else None


class Dialect:
    """A database flavour: its commands, its statements, its status. Subclasses fill the class attributes."""

    flavour = ""
    title = ""
    client = "mysql"  # the command-line client
    client_options = ""  # options the client always gets
    admin_tool = "mysqladmin"  # ping: does the server answer
    server = "mysqld"  # the server binary (its own configuration check)
    service = "mysql"  # the systemd unit
    binlog_tool = "mysqlbinlog"
    dump_tool = "mysqldump"
    config_dir = "/etc/mysql/mysql.conf.d"
    replica_word = "REPLICA"  # START REPLICA / START SLAVE
    change_source = "CHANGE REPLICATION SOURCE TO"
    option_prefix = "SOURCE"  # SOURCE_HOST / MASTER_HOST
    status_statement = "SHOW REPLICA STATUS"
    # normalised name -> the server's field name in the status row
    status_fields: dict[str, str] = {}
    end_of_life = ""  # a date, when the flavour is past it
    # the longest password a replica's source accepts (SOURCE_PASSWORD / MASTER_PASSWORD): MySQL's documented 32 characters
    max_source_password = 32
    skip_replica_start = "skip-replica-start"  # the server option: no replica threads started at boot (MySQL 8.0.26 on)

    # -- files and commands ------------------------------------------------------------------
    @property
    def config_file(self) -> str:
        return f"{self.config_dir}/90-runbooklib-replication.cnf"

    package = "mysql-server"  # what to install from the site's mirror

    def validate_config_command(self) -> str:
        """The server's own check of its whole configuration, without starting it (exit 0: valid)."""
        return f"{self.server} --validate-config --user=mysql"

    def initialize_command(self, datadir: str, init_file: str | None = None) -> str:
        """Create the system tables in an empty data directory (root gets its password from ``init_file``)."""
        extra = f" --init-file={init_file}" if init_file else ""
        return f"{self.server} --initialize-insecure --user=mysql --datadir={datadir}{extra}"

    # -- server settings ---------------------------------------------------------------------
    def server_settings(self, *, server_id: int, bind_address: str, port: int, datadir: str, read_only: bool,
                        retention_seconds: int, report_host: str) -> dict[str, str]:
        """The ``[mysqld]`` settings of the drop-in, in the order written."""
        settings = {
            "server_id": str(server_id),
            "report_host": report_host,
            "bind_address": bind_address,
            "port": str(port),
            "datadir": datadir,
            "log_bin": "mysql-bin",
            "relay_log": "relay-bin",  # not named after the host: a renamed VM keeps its relay logs
            "binlog_format": "ROW",
            "gtid_mode": "ON",
            "enforce_gtid_consistency": "ON",
            self.log_replica_updates: "ON",
            **self.retention_settings(retention_seconds),
            "event_scheduler": "ON",  # the heartbeat event on the primary
            "read_only": "ON" if read_only else "OFF",
            "super_read_only": "ON" if read_only else "OFF",
        }
        return settings

    log_replica_updates = "log_replica_updates"

    def retention_settings(self, seconds: int) -> dict[str, str]:
        return {"binlog_expire_logs_seconds": str(seconds)}

    def variables(self) -> tuple[str, ...]:
        """Global variables the facts read (those the drop-in sets, and the GTID state)."""
        return ("server_id", "log_bin", "binlog_format", "gtid_mode", "enforce_gtid_consistency", self.log_replica_updates,
                "binlog_expire_logs_seconds", "read_only", "super_read_only", "event_scheduler", "bind_address", "port",
                "gtid_executed", "version")

    # -- replication -------------------------------------------------------------------------
    def _opt(self, name: str) -> str:
        return f"{self.option_prefix}_{name}"

    def configure_replica(self, source: Source) -> list[str]:
        """Point this server at ``source`` with GTID auto-positioning and the delay, then start it."""
        # CONNECT_RETRY: after the primary restarts, replicas reconnect within 10 s rather than the default 60
        options = [f"{self._opt('HOST')} = {sql_string(source.host)}", f"{self._opt('PORT')} = {source.port}",
                   f"{self._opt('USER')} = {sql_string(source.user)}", f"{self._opt('PASSWORD')} = {source.password}",
                   f"{self._opt('CONNECT_RETRY')} = 10", *self.gtid_options(), f"{self._opt('DELAY')} = {source.delay}"]
        return [self.stop_replica(), f"{self.change_source} " + ", ".join(options), self.start_replica()]

    def gtid_options(self) -> list[str]:
        # caching_sha2_password (the default since 8.0) over a plain connection needs the server's RSA key
        return [f"{self._opt('AUTO_POSITION')} = 1", "GET_SOURCE_PUBLIC_KEY = 1"]

    def start_replica(self) -> str:
        return f"START {self.replica_word}"

    def stop_replica(self) -> str:
        return f"STOP {self.replica_word}"

    def stop_applier(self) -> str:
        """Stop applying (the receiver keeps fetching): the first move of a point-in-time recovery."""
        return f"STOP {self.replica_word} SQL_THREAD"

    def start_applier(self) -> str:
        return f"START {self.replica_word} SQL_THREAD"

    def set_delay(self, seconds: int) -> list[str]:
        """Change the delay with the applier stopped (MySQL needs only the SQL thread stopped)."""
        return [self.stop_applier(), f"{self.change_source} {self._opt('DELAY')} = {seconds}"]

    def apply_until(self, stop: StopPoint) -> list[str]:
        """Start the applier so that it stops just before the bad transaction."""
        if stop.before:
            return [f"START {self.replica_word} SQL_THREAD UNTIL SQL_BEFORE_GTIDS = {sql_string(stop.before)}"]
        if stop.log_file and stop.log_pos:
            return [f"START {self.replica_word} SQL_THREAD UNTIL {self._opt('LOG_FILE')} = {sql_string(stop.log_file)}, "
                    f"{self._opt('LOG_POS')} = {stop.log_pos}"]
        raise ValueError(f"{self.title}: a stop point needs the bad transaction's GTID or its binlog file and position")

    def adopt_own_position(self) -> list[str]:
        """Before a former primary replicates: where it starts from is what it committed itself (MySQL's
        auto-positioning already sends ``gtid_executed``)."""
        return []

    reset_binlog = "RESET MASTER"  # MySQL 8.4: RESET BINARY LOGS AND GTIDS

    def stop_receiver(self) -> str:
        """Stop fetching from the source (the applier goes on with what was received): a failover's first move."""
        return f"STOP {self.replica_word} IO_THREAD"

    def start_receiver(self) -> str:
        return f"START {self.replica_word} IO_THREAD"

    def restart_from(self, position: str) -> list[str]:
        """A former primary whose own extra transactions were counted and found to hold no data: its binlog history
        is dropped and it continues from ``position`` (what the new primary had when it was promoted)."""
        return [self.stop_replica(), self.reset_binlog, f"SET GLOBAL gtid_purged = {sql_string(position)}"]

    def promote(self) -> list[str]:
        """Make a replica a primary: forget its source, accept writes."""
        return [self.stop_replica(), f"RESET {self.replica_word} ALL", *self.read_only(False)]

    def read_only(self, on: bool) -> list[str]:
        if on:  # super_read_only implies read_only, and stops even administrators' writes
            return ["SET GLOBAL super_read_only = ON"]
        return ["SET GLOBAL super_read_only = OFF", "SET GLOBAL read_only = OFF"]

    # -- accounts ----------------------------------------------------------------------------
    def without_binlog(self, statements: list[str]) -> list[str]:
        """Statements that stay on this server: no binlog entry, so no GTID in any set (a local GTID on a
        replica breaks replication after a switchover, and in MariaDB's strict mode at once)."""
        return ["SET SESSION sql_log_bin = 0", *statements, "SET SESSION sql_log_bin = 1"]

    def while_writable(self, statements: list[str], read_only: bool) -> list[str]:
        """Statements an administrator runs on a read-only server (``super_read_only`` stops even them)."""
        if not read_only:
            return statements
        return ["SET GLOBAL super_read_only = OFF", *statements, "SET GLOBAL super_read_only = ON"]

    def create_replication_user(self, user: str, hosts: list[str], read_only: bool = False,
                                password: str = secret_placeholder("database.replication_password")) -> list[str]:
        """The account replicas log in with, for each database host's address, on this server only."""
        out = []
        for host in hosts:
            account = sql_account(user, host)
            out += [f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {password}",
                    f"GRANT REPLICATION SLAVE ON *.* TO {account}"]
        return self.while_writable(self.without_binlog(out), read_only)

    def set_root_password(self, read_only: bool = False, password: str = secret_placeholder("database.root_password")) -> list[str]:
        return self.while_writable(self.without_binlog([f"ALTER USER 'root'@'localhost' IDENTIFIED BY {password}"]), read_only)

    def root_password_query(self) -> str:
        """One row, one column ``has_password`` (1 or 0); the hash itself never leaves the server."""
        return ("SELECT COUNT(*) AS has_password FROM mysql.user WHERE User = 'root' AND Host = 'localhost' "
                "AND authentication_string <> ''")

    def replication_user_query(self, user: str) -> str:
        """The hosts the replication user exists for, with whether it holds REPLICATION SLAVE."""
        return (f"SELECT Host AS host, Repl_slave_priv AS replication FROM mysql.user WHERE User = {sql_string(user)}")

    # -- status ------------------------------------------------------------------------------
    def parse_replica_status(self, row: dict[str, str] | None) -> ReplicaStatus | None:
        """A status row (field -> text, as the client prints it) in the shared shape; None: not a replica."""
        if not row or not row.get(self.status_fields["source_host"]):
            return None
        f = self.status_fields

        def text(key: str) -> str:
            value = row.get(f[key], "") if key in f else ""
            return "" if value == "NULL" else (value or "")

        return ReplicaStatus(
            io_running=text("io_running"), sql_running=text("sql_running"), source_host=text("source_host"),
            source_port=_int(text("source_port")), source_user=text("source_user"),
            seconds_behind=_int(text("seconds_behind")), sql_delay=_int(text("sql_delay")),
            remaining_delay=_int(text("remaining_delay")), gtid_mode=text("gtid_mode"),
            retrieved=text("retrieved").replace("\n", ""), executed=text("executed").replace("\n", ""),
            io_error=text("io_error"), sql_error=text("sql_error"), source_log_file=text("source_log_file"),
            read_pos=_int(text("read_pos")), exec_log_file=text("exec_log_file"), exec_pos=_int(text("exec_pos")),
            sql_state=text("sql_state"), until=text("until"))

    def uses_gtid(self, status: ReplicaStatus) -> bool:
        return status["gtid_mode"] == "1"

    # -- GTIDs -------------------------------------------------------------------------------
    def executed_position(self, variables: dict[str, str]) -> GtidSet:
        """What this server has committed, from its global variables (the primary's high-water mark)."""
        return GtidSet.parse(variables.get("gtid_executed", ""))

    def applied_position(self, variables: dict[str, str], status: ReplicaStatus | None) -> GtidSet:
        """What a replica has applied from its source."""
        return GtidSet.parse(status["executed"] if status else variables.get("gtid_executed", ""))

    def own_transactions(self, variables: dict[str, str]) -> str:
        """The GTIDs this server committed itself, as far as its variables tell (a replica built by 05 has none:
        it commits only what it replicates); "" when none or unknown (MySQL would need ``server_uuid``)."""
        return ""

    def parse_position(self, text: str | None) -> GtidSet | GtidPosition:
        return GtidSet.parse(text)

    def reached(self, have: str, want: str) -> bool:
        return GtidSet.parse(have).contains(GtidSet.parse(want))

    def behind(self, have: str, want: str) -> int:
        return GtidSet.parse(want).minus(GtidSet.parse(have)).count()

    def wait_for_position(self, position: str, timeout: int) -> str:
        """A query that returns 0 once this replica has applied ``position`` (1 after ``timeout`` seconds)."""
        return f"SELECT WAIT_FOR_EXECUTED_GTID_SET({sql_string(position)}, {int(timeout)}) AS waited"

    def position_query(self) -> str:
        """The committed position, one row ``position``."""
        return "SELECT @@GLOBAL.gtid_executed AS position"

    def position_before_query(self, log_file: str, log_pos: int) -> str | None:
        """On the primary: the position just before a binlog offset (MariaDB needs it for an inclusive UNTIL); None: not needed."""
        return None

    # -- heartbeat ---------------------------------------------------------------------------
    def heartbeat_setup(self) -> list[str]:
        """On the primary, replicated: the heartbeat table and an event writing it every second."""
        return [f"CREATE DATABASE IF NOT EXISTS {HEARTBEAT_SCHEMA}",
                f"CREATE TABLE IF NOT EXISTS {HEARTBEAT_TABLE} (server_id INT UNSIGNED NOT NULL PRIMARY KEY, "
                "ts DATETIME(6) NOT NULL) ENGINE=InnoDB",
                f"CREATE EVENT IF NOT EXISTS {HEARTBEAT_EVENT} ON SCHEDULE EVERY 1 SECOND ON COMPLETION PRESERVE ENABLE "
                "COMMENT 'runbooklib: replication lag is read from this row on each replica' "
                f"DO REPLACE INTO {HEARTBEAT_TABLE} (server_id, ts) VALUES (@@server_id, UTC_TIMESTAMP(6))"]

    disable_on_replica = "DISABLE ON REPLICA"

    def heartbeat_local(self, enable: bool) -> list[str]:
        """Turn this server's heartbeat event on (a new primary) or off (an old one), without replicating that."""
        return self.without_binlog([f"ALTER EVENT {HEARTBEAT_EVENT} {'ENABLE' if enable else self.disable_on_replica}"])

    def heartbeat_query(self) -> str:
        """Seconds since the newest heartbeat this server holds (on a replica: how far behind it applies)."""
        return ("SELECT TIMESTAMPDIFF(MICROSECOND, MAX(ts), UTC_TIMESTAMP(6)) / 1000000 AS lag_seconds, "
                f"MAX(ts) AS newest FROM {HEARTBEAT_TABLE}")

    def heartbeat_event_query(self) -> str:
        return ("SELECT STATUS AS status FROM information_schema.EVENTS "
                f"WHERE EVENT_SCHEMA = '{HEARTBEAT_SCHEMA}' AND EVENT_NAME = 'heartbeat_tick'")
