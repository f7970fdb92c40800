"""MySQL 5.7: ``CHANGE MASTER TO``, ``START SLAVE``, ``SHOW SLAVE STATUS``; end of life since October 2023.

Binlog retention is whole days only (``expire_logs_days``, rounded up), replicas log what they apply
with ``log_slave_updates``, and events are disabled on replicas with ``DISABLE ON SLAVE``. Its
default authentication (``mysql_native_password``) needs no RSA key exchange for replication.
"""

from __future__ import annotations

import math

from .base import Dialect

STATUS_FIELDS = {
    "io_running": "Slave_IO_Running", "sql_running": "Slave_SQL_Running", "source_host": "Master_Host",
    "source_port": "Master_Port", "source_user": "Master_User", "seconds_behind": "Seconds_Behind_Master",
    "sql_delay": "SQL_Delay", "remaining_delay": "SQL_Remaining_Delay", "gtid_mode": "Auto_Position",
    "retrieved": "Retrieved_Gtid_Set", "executed": "Executed_Gtid_Set", "io_error": "Last_IO_Error",
    "sql_error": "Last_SQL_Error", "source_log_file": "Master_Log_File", "read_pos": "Read_Master_Log_Pos",
    "exec_log_file": "Relay_Master_Log_File", "exec_pos": "Exec_Master_Log_Pos",
    "sql_state": "Slave_SQL_Running_State", "until": "Until_Condition",
}


class MySQL57(Dialect):
    flavour = "mysql-5.7"
    title = "MySQL 5.7"
    skip_replica_start = "skip-slave-start"
    replica_word = "SLAVE"
    change_source = "CHANGE MASTER TO"
    option_prefix = "MASTER"
    status_statement = "SHOW SLAVE STATUS"
    status_fields = STATUS_FIELDS
    log_replica_updates = "log_slave_updates"
    disable_on_replica = "DISABLE ON SLAVE"
    end_of_life = "2023-10-31"

    def validate_config_command(self) -> str:
        # 5.7 has no --validate-config (8.0.16 added it); --help --verbose reads every option file and
        # fails on an unknown option or a bad value, without starting the server
        return f"{self.server} --help --verbose --user=mysql > /dev/null"

    def retention_settings(self, seconds: int) -> dict[str, str]:
        return {"expire_logs_days": str(max(1, math.ceil(seconds / 86400)))}

    def variables(self) -> tuple[str, ...]:
        return tuple("expire_logs_days" if v == "binlog_expire_logs_seconds" else v for v in super().variables())

    def gtid_options(self) -> list[str]:
        return ["MASTER_AUTO_POSITION = 1"]


DIALECT = MySQL57()
