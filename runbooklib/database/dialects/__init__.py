"""One module per database flavour; :func:`dialect` finds the one the parameters name.

``mysql57`` (``CHANGE MASTER``, ``SLAVE``), ``mysql80`` (``CHANGE REPLICATION SOURCE``,
``REPLICA``), ``mysql84`` (the old spellings removed, tagged GTIDs) and ``mariadb`` (``CHANGE
MASTER`` with ``MASTER_USE_GTID``, domain-server-sequence GTIDs). :class:`~.base.Dialect` lists what
each must answer.
"""

from __future__ import annotations

from . import mariadb, mysql57, mysql80, mysql84
from .base import (
    HEARTBEAT_EVENT,
    HEARTBEAT_SCHEMA,
    HEARTBEAT_TABLE,
    Dialect,
    ReplicaStatus,
    Source,
    StopPoint,
    fill_secrets,
    secret_fields,
    secret_placeholder,
    sql_string,
)

DIALECTS: dict[str, Dialect] = {d.flavour: d for d in (mysql57.DIALECT, mysql80.DIALECT, mysql84.DIALECT, mariadb.DIALECT)}

__all__ = ["DIALECTS", "HEARTBEAT_EVENT", "HEARTBEAT_SCHEMA", "HEARTBEAT_TABLE", "Dialect", "ReplicaStatus", "Source",
           "StopPoint", "dialect", "fill_secrets", "secret_fields", "secret_placeholder", "sql_string"]


def dialect(flavour: str) -> Dialect:
    """The dialect of ``database.flavour``."""
    try:
        return DIALECTS[flavour]
    except KeyError:
        raise KeyError(f"no dialect for flavour {flavour!r}; known: {', '.join(DIALECTS)}") from None
