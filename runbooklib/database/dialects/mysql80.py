"""MySQL 8.0 (8.0.26 or later): the ``REPLICA``/``SOURCE`` spellings; end of life since April 2026.

``CHANGE REPLICATION SOURCE TO`` (8.0.23), ``START REPLICA`` and ``SHOW REPLICA STATUS`` (8.0.22),
``log_replica_updates`` (8.0.26). The old ``MASTER``/``SLAVE`` spellings still work here but are
deprecated; this dialect never writes them. Replication accounts use ``caching_sha2_password``,
so an unencrypted replica asks for the source's RSA key (``GET_SOURCE_PUBLIC_KEY = 1``).
"""

from __future__ import annotations

from .base import Dialect

STATUS_FIELDS = {
    "io_running": "Replica_IO_Running", "sql_running": "Replica_SQL_Running", "source_host": "Source_Host",
    "source_port": "Source_Port", "source_user": "Source_User", "seconds_behind": "Seconds_Behind_Source",
    "sql_delay": "SQL_Delay", "remaining_delay": "SQL_Remaining_Delay", "gtid_mode": "Auto_Position",
    "retrieved": "Retrieved_Gtid_Set", "executed": "Executed_Gtid_Set", "io_error": "Last_IO_Error",
    "sql_error": "Last_SQL_Error", "source_log_file": "Source_Log_File", "read_pos": "Read_Source_Log_Pos",
    "exec_log_file": "Relay_Source_Log_File", "exec_pos": "Exec_Source_Log_Pos",
    "sql_state": "Replica_SQL_Running_State", "until": "Until_Condition",
}


class MySQL80(Dialect):
    flavour = "mysql-8.0"
    title = "MySQL 8.0"
    status_fields = STATUS_FIELDS
    end_of_life = "2026-04-30"


DIALECT = MySQL80()
