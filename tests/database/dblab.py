"""Helpers for the database lab tests: a seed lab's parameters with a short delay and canary passwords, SQL from the test."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import yaml

from runbooklib.database.client import DatabaseClient
from runbooklib.database.dialects import dialect
from runbooklib.params import load_params
from runbooklib.ssh import Fleet

# canary passwords: random per test session, referenced through env: as outside the lab
CANARIES = {"RB_TEST_DB_ROOT": "root-" + secrets.token_hex(12), "RB_TEST_DB_REPL": "repl-" + secrets.token_hex(12)}
os.environ.update(CANARIES)


def write_db_params(lab, name: str = "db.yaml", **database) -> Path:
    """The lab's parameter file (in the lab folder, so its relative references resolve) with database overrides."""
    data = yaml.safe_load(lab.params_file.read_text())
    data["database"].update({"root_password": "env:RB_TEST_DB_ROOT", "replication_password": "env:RB_TEST_DB_REPL"})
    data["database"].update(database)
    path = lab.root / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Sql:
    """SQL on the lab's database VMs from the test, through the product's own client (root over the socket)."""

    def __init__(self, params_file: Path):
        self.params = load_params(params_file)
        self.fleet = Fleet.from_params(self.params, progress=None)
        self.client = DatabaseClient(self.fleet, dialect(self.params.database.flavour),
                                     {f: self.params.secret(f) for f in ("database.root_password", "database.replication_password")})

    def host(self, name: str):
        return self.params.host(name)

    def run(self, host: str, *statements: str) -> None:
        self.client.execute(self.host(host), list(statements)).check()

    def rows(self, host: str, query: str) -> list[dict[str, str]]:
        return self.client.query(self.host(host), query)

    def value(self, host: str, query: str) -> str | None:
        rows = self.rows(host, query)
        return next(iter(rows[0].values())) if rows else None

    def shell(self, host: str, script: str):
        return self.client.shell(self.host(host), script)

    def close(self) -> None:
        self.fleet.close()


def archive_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]
