"""MySQL 8.4 LTS: the ``MASTER``/``SLAVE`` statements are gone; GTIDs may carry tags.

Everything is spelled ``REPLICA``/``SOURCE`` (``CHANGE MASTER TO`` is a syntax error in 8.4). Status
fields are 8.0's. A GTID may be ``uuid:tag:N`` (8.3+), which :mod:`runbooklib.database.gtid` reads.
``binlog_format`` is deprecated (ROW is the default and the only sensible value); it is still
written, so that a reader of the drop-in sees the format the phase relies on.
"""

from __future__ import annotations

from .mysql80 import STATUS_FIELDS, MySQL80


class MySQL84(MySQL80):
    flavour = "mysql-8.4"
    title = "MySQL 8.4"
    status_fields = STATUS_FIELDS
    end_of_life = ""
    reset_binlog = "RESET BINARY LOGS AND GTIDS"


DIALECT = MySQL84()
