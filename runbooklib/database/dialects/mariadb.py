"""MariaDB (10.6 or later; Debian 12 ships 10.11): ``CHANGE MASTER TO``, domain-server-sequence GTIDs.

Differences from MySQL that matter here:

- GTIDs are positions per domain, not sets; a replica follows with ``MASTER_USE_GTID = slave_pos``
  and what it applied is ``@@gtid_slave_pos`` (not in ``SHOW SLAVE STATUS``).
- ``gtid_strict_mode`` refuses out-of-order transactions: a statement logged locally on a replica
  (a user created without ``sql_log_bin = 0``) stops replication with error 1950.
- ``CHANGE MASTER`` needs the replica fully stopped, so changing the delay stops both threads.
- ``START SLAVE UNTIL master_gtid_pos`` is inclusive: to stop before the bad transaction, give the
  position of the transaction just before it.
- ``read_only`` does not stop accounts with ``READ_ONLY ADMIN`` (root): replicas are kept safe from
  applications, whose accounts lack it.
- No ``--validate-config`` before 11.x: ``mariadbd --help --verbose`` reads every option file and
  exits non-zero on an unknown variable or a bad value, without starting the server.
"""

from __future__ import annotations

from ..gtid import GtidPosition
from .base import Dialect, ReplicaStatus, StopPoint, secret_placeholder, sql_string

STATUS_FIELDS = {
    "io_running": "Slave_IO_Running", "sql_running": "Slave_SQL_Running", "source_host": "Master_Host",
    "source_port": "Master_Port", "source_user": "Master_User", "seconds_behind": "Seconds_Behind_Master",
    "sql_delay": "SQL_Delay", "remaining_delay": "SQL_Remaining_Delay", "gtid_mode": "Using_Gtid",
    "retrieved": "Gtid_IO_Pos", "io_error": "Last_IO_Error", "sql_error": "Last_SQL_Error",
    "source_log_file": "Master_Log_File", "read_pos": "Read_Master_Log_Pos", "exec_log_file": "Relay_Master_Log_File",
    "exec_pos": "Exec_Master_Log_Pos", "sql_state": "Slave_SQL_Running_State", "until": "Until_Condition",
}


class MariaDB(Dialect):
    flavour = "mariadb"
    title = "MariaDB"
    skip_replica_start = "skip-slave-start"
    max_source_password = 96  # ERROR 1470 "too long for MASTER_PASSWORD (should be no longer than 96)" (10.11, on the lab)
    client = "mariadb"
    # the client prints a failed statement by default: it may carry a password
    client_options = "--skip-print-query-on-error"
    admin_tool = "mariadb-admin"
    server = "mariadbd"
    service = "mariadb"
    binlog_tool = "mariadb-binlog"
    dump_tool = "mariadb-dump"
    config_dir = "/etc/mysql/mariadb.conf.d"
    replica_word = "SLAVE"
    change_source = "CHANGE MASTER TO"
    option_prefix = "MASTER"
    status_statement = "SHOW SLAVE STATUS"
    status_fields = STATUS_FIELDS
    log_replica_updates = "log_slave_updates"
    disable_on_replica = "DISABLE ON SLAVE"
    package = "mariadb-server"

    def validate_config_command(self) -> str:
        return f"{self.server} --help --verbose > /dev/null"

    def initialize_command(self, datadir: str, init_file: str | None = None) -> str:
        # root logs in through the socket (unix_socket), as Debian sets it up; its password follows
        return f"mariadb-install-db --user=mysql --datadir={datadir} --skip-test-db --auth-root-authentication-method=socket"

    def server_settings(self, *, server_id: int, bind_address: str, port: int, datadir: str, read_only: bool,
                        retention_seconds: int, report_host: str) -> dict[str, str]:
        return {
            "server_id": str(server_id),
            "report_host": report_host,
            "bind_address": bind_address,
            "port": str(port),
            "datadir": datadir,
            "log_bin": "mysql-bin",
            "relay_log": "relay-bin",
            "binlog_format": "ROW",
            "log_slave_updates": "ON",
            "gtid_strict_mode": "ON",
            "binlog_expire_logs_seconds": str(retention_seconds),
            "event_scheduler": "ON",
            "read_only": "ON" if read_only else "OFF",
        }

    def variables(self) -> tuple[str, ...]:
        return ("server_id", "log_bin", "binlog_format", "log_slave_updates", "gtid_strict_mode",
                "binlog_expire_logs_seconds", "read_only", "event_scheduler", "bind_address", "port",
                "gtid_binlog_pos", "gtid_slave_pos", "gtid_current_pos", "version")

    def gtid_options(self) -> list[str]:
        return ["MASTER_USE_GTID = slave_pos"]

    def set_delay(self, seconds: int) -> list[str]:
        return [self.stop_replica(), f"CHANGE MASTER TO MASTER_DELAY = {seconds}"]

    def stop_applier(self) -> str:
        return "STOP SLAVE SQL_THREAD"

    def apply_until(self, stop: StopPoint) -> list[str]:
        if stop.last_good:
            return [f"START SLAVE UNTIL master_gtid_pos = {sql_string(stop.last_good)}"]
        if stop.log_file and stop.log_pos:
            return [f"START SLAVE UNTIL MASTER_LOG_FILE = {sql_string(stop.log_file)}, MASTER_LOG_POS = {stop.log_pos}"]
        raise ValueError("MariaDB: UNTIL master_gtid_pos is inclusive, so a stop point needs the position of the last good "
                         "transaction (the one just before the bad one), or the bad one's binlog file and position")

    def read_only(self, on: bool) -> list[str]:
        return [f"SET GLOBAL read_only = {'ON' if on else 'OFF'}"]

    def while_writable(self, statements: list[str], read_only: bool) -> list[str]:
        return statements  # read_only does not bind an administrator here

    def set_root_password(self, read_only: bool = False, password: str = secret_placeholder("database.root_password")) -> list[str]:
        # keep the socket login Debian's maintenance relies on; the password serves TCP and tools
        return self.without_binlog(["ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password "
                                    f"USING PASSWORD({password})"])

    def root_password_query(self) -> str:
        # Debian's root has the placeholder hash 'invalid'; a set password is a native hash '*...'
        return ("SELECT COUNT(*) AS has_password FROM mysql.user WHERE User = 'root' AND Host = 'localhost' "
                "AND authentication_string LIKE '*%'")

    def uses_gtid(self, status: ReplicaStatus) -> bool:
        return status["gtid_mode"].lower() in ("slave_pos", "current_pos")

    def executed_position(self, variables: dict[str, str]) -> GtidPosition:
        return GtidPosition.parse(variables.get("gtid_binlog_pos", ""))

    def applied_position(self, variables: dict[str, str], status: ReplicaStatus | None) -> GtidPosition:
        return GtidPosition.parse(variables.get("gtid_slave_pos" if status else "gtid_binlog_pos", ""))

    def own_transactions(self, variables: dict[str, str]) -> str:
        try:
            pos = GtidPosition.parse(variables.get("gtid_binlog_pos", ""))
        except ValueError:
            return ""
        own = variables.get("server_id", "")
        return ",".join(str(g) for g in pos.last.values() if own.isdigit() and g.server == int(own))

    def parse_position(self, text: str | None) -> GtidPosition:
        return GtidPosition.parse(text)

    def reached(self, have: str, want: str) -> bool:
        return GtidPosition.parse(have).reached(GtidPosition.parse(want))

    def behind(self, have: str, want: str) -> int:
        return GtidPosition.parse(have).behind(GtidPosition.parse(want))

    def wait_for_position(self, position: str, timeout: int) -> str:
        # MASTER_GTID_WAIT returns 0 when the replica's gtid_slave_pos reached the position, -1 on timeout
        return f"SELECT IF(MASTER_GTID_WAIT({sql_string(position)}, {int(timeout)}) = 0, 0, 1) AS waited"

    def position_query(self) -> str:
        return "SELECT @@GLOBAL.gtid_binlog_pos AS position"

    def position_before_query(self, log_file: str, log_pos: int) -> str:
        # BINLOG_GTID_POS: the GTID position of the binlog at that offset, i.e. everything before it, every domain
        return f"SELECT BINLOG_GTID_POS({sql_string(log_file)}, {int(log_pos)}) AS position"

    def restart_from(self, position: str) -> list[str]:
        return [self.stop_replica(), self.reset_binlog, f"SET GLOBAL gtid_slave_pos = {sql_string(position)}"]

    def adopt_own_position(self) -> list[str]:
        # a former primary's gtid_slave_pos is empty: with MASTER_USE_GTID = slave_pos it would ask for everything again
        return ["SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_binlog_pos"]


DIALECT = MariaDB()
