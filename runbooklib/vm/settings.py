"""The ``vm`` section: thresholds of the preflight and what the baseline ensures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field

from ..errors import ParamsError, Problem
from ..schema import Section, UserName
from ..secrets import read_secret_file

RoleOrDefault = Literal["default", "etcd", "controlplane", "worker", "database", "edge", "elk"]


class DeployUser(Section):
    name: UserName
    groups: list[UserName] = []
    # a public key (not a secret): the key line itself, or file:PATH of a .pub file
    authorized_key: str

    def public_key(self, base_dir: Path) -> str:
        if self.authorized_key.startswith("file:"):
            path = Path(self.authorized_key[5:]).expanduser()
            path = path if path.is_absolute() else base_dir / path
            try:
                return read_secret_file(path).strip()  # a regular file of bounded size: a FIFO must not hang a plan
            except OSError as e:
                raise ParamsError(str(path), [Problem("vm.deploy_user.authorized_key", f"cannot read {path}: {e.strerror}")]) from None
            except ValueError as e:
                raise ParamsError(str(path), [Problem("vm.deploy_user.authorized_key", f"{path} {e}")]) from None
        return self.authorized_key.strip()


# a host name or an IP address: the value becomes a line of chrony's configuration, so no spaces or newlines
NtpServer = Annotated[str, Field(pattern=r"^([A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)$")]


class VM(Section):
    """Thresholds and settings of the VM phase (preflight and baseline)."""

    min_root_gb: dict[RoleOrDefault, Annotated[float, Field(ge=0)]] = {"default": 40, "worker": 100, "database": 100, "elk": 100}
    min_free_gb: Annotated[float, Field(ge=0)] = 10
    min_cpus: dict[RoleOrDefault, Annotated[int, Field(ge=1)]] = {"default": 2}
    min_memory_gb: dict[RoleOrDefault, Annotated[float, Field(ge=0)]] = {"default": 2, "controlplane": 4}
    ntp_servers: list[NtpServer] = []
    # False where the kernel clock is shared with other systems (containers, the lab): chronyd runs with -x
    time_sync_controls_clock: bool = True
    deploy_user: Optional[DeployUser] = None
    # Docker series RKE1 accepts (kontainer-driver-metadata); ignored with kubernetes.ignore_docker_version
    docker_versions: list[str] = ["20.10", "23.0", "24.0", "25.0", "26.0", "26.1", "27.0", "27.1", "27.2", "27.3"]

    def threshold(self, table: dict, roles: list[str]):
        """The strictest threshold among the host's roles (falling back to ``default``)."""
        values = [table[r] for r in roles if r in table] or [table.get("default", 0)]
        return max(values)
