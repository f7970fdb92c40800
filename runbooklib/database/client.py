"""SQL on the database hosts, over SSH, as the server's administrator through its local socket.

Why over SSH and not a network connection from the operator's machine: the database port is open
to the other database hosts only (``bind_address`` and the replication accounts), while SSH with
pinned host keys is already how every runbook reaches a host. On the host the command-line client
(``mariadb`` or ``mysql``) connects through the server's socket as ``root``.

Passwords never travel in a command line (where ``ps`` shows them to every user of the host) or
in output: before a command, an option file (``[client]`` user and password) and, for statements
that carry a secret, the SQL itself are written over SFTP into ``~/.runbooklib-db/`` (mode 700,
the files 600); the command reads them and removes them when it ends, whatever its exit code. The
secrets come from :class:`~runbooklib.secrets.Secret` objects that the run resolved (and so
registered with its redactor); they are revealed only into those files.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping

from .. import privatefiles
from ..errors import SecretError
from ..secrets import Secret
from ..ssh import HostResult
from .dialects import Dialect, fill_secrets, secret_fields

SECRET_DIR = ".runbooklib-db"  # under the SSH user's home


def secret_folder(sftp) -> str:
    """The SSH user's private folder for files that carry secrets or data (created, and kept, mode 700); its path."""
    return privatefiles.private_folder(sftp, SECRET_DIR)


def option_file(user: str, password: str | None) -> str:
    """A client option file: ``[client]`` with the user and, quoted, the password."""
    lines = ["[client]", f"user={user}"]
    if password is not None:
        if "\n" in password or "\r" in password:
            raise SecretError("database.root_password holds a line break; a client option file cannot carry it. Choose a "
                              "password of one line")
        lines.append('password="' + password.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "\n".join(lines) + "\n"


def check_source_password(password: str, dialect: Dialect, source) -> None:
    """A replica logs in to its source with the replication password, which ``CHANGE MASTER``/``CHANGE REPLICATION SOURCE``
    takes only up to a length (the flavour's): longer is bad input, said before anything runs."""
    if len(password) > dialect.max_source_password:
        raise SecretError(f"{source}: database.replication_password is {len(password)} characters long; {dialect.title} takes at most "
                          f"{dialect.max_source_password} as a replica's source password. Choose a shorter one; nothing was run")


def parse_batch(text: str) -> list[dict[str, str]]:
    """The client's ``--batch`` output (a header line, then tab-separated rows with \\n, \\t, \\\\ escaped) as rows."""
    lines = [line for line in text.split("\n") if line != ""]
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, (_unescape(v) for v in line.split("\t")))) for line in lines[1:]]


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            out.append({"n": "\n", "t": "\t", "0": "\0", "\\": "\\"}.get(value[i + 1], value[i + 1]))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


class DatabaseClient(privatefiles.ShellClient):
    """Statements, queries and shell commands with the administrator's client, on one or many hosts.

    ``secrets`` maps secret fields (``database.root_password``, ``database.replication_password``)
    to resolved :class:`Secret` s; a statement's placeholders are filled from them on the host only.
    """

    def __init__(self, fleet, dialect: Dialect, secrets: Mapping[str, Secret], admin_user: str = "root"):
        self.fleet = fleet
        self.dialect = dialect
        self._secrets = dict(secrets)
        self.admin_user = admin_user

    @classmethod
    def for_run(cls, run, dialect: Dialect) -> "DatabaseClient":
        """The client of a notebook run: its fleet, the database secrets resolved (and so scrubbed from its record).

        A replication password the server cannot take as a replica's source password is refused here, before anything
        remote (else 05 sets the root password, creates the replication user, and then fails on every replica)."""
        secrets = {f: run.secret(f) for f in ("database.root_password", "database.replication_password")}
        check_source_password(secrets["database.replication_password"].reveal(), dialect, run.params.source)
        return cls(run.fleet(), dialect, secrets)

    def host(self, name: str):
        return next(h for h in self.fleet.hosts if h.name == name)

    # -- files -------------------------------------------------------------------------------
    def _admin_files(self) -> dict[str, str]:
        root = self._secrets.get("database.root_password")
        return {"admin.cnf": option_file(self.admin_user, root.reveal() if root else None)}

    # -- running -----------------------------------------------------------------------------
    def sql_command(self, option_path: str) -> str:
        return f"{self.dialect.client} --defaults-extra-file={shlex.quote(option_path)} --batch {self.dialect.client_options}".rstrip()

    def shell(self, host, script: str, files: Mapping[str, str] | None = None, timeout: float | None = None) -> HostResult:
        """Run ``script`` with ``$SQL`` (the client, logged in) and ``$FILE_<name>`` set; every file removed after.

        Errors come back in the result, naming the host (as :meth:`runbooklib.ssh.Fleet.run_on`).
        """
        return privatefiles.run_with_files(self.fleet, host, SECRET_DIR, {**self._admin_files(), **(files or {})}, script,
                                           lambda paths: [f"SQL={shlex.quote(self.sql_command(paths['admin.cnf']))}"], timeout)

    def execute(self, host, statements: str | Iterable[str], timeout: float | None = None) -> HostResult:
        """Run statements (in one session, stopping at the first error), secrets filled on the host."""
        sql = statements if isinstance(statements, str) else "".join(s.rstrip(";") + ";\n" for s in statements)
        needed = secret_fields(sql)
        missing = [f for f in needed if f not in self._secrets]
        if missing:
            raise SecretError(f"{', '.join(missing)}: not resolved for this client; the runbook resolves them with run.secret")
        filled = fill_secrets(sql, {f: self._secrets[f].reveal() for f in needed})
        return self.shell(host, '$SQL < "$FILE_statements"', {"statements.sql": filled}, timeout)

    def query(self, host, sql: str, timeout: float | None = None) -> list[dict[str, str]]:
        """One statement's rows (column -> text; NULL as ``NULL``); HostError naming the host on failure."""
        return parse_batch(self.execute(host, [sql], timeout).check().stdout)

