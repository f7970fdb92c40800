"""The parts of a parameter file every phase shares: types, the environment, the inventory, SSH.

Each phase adds its own section (``runbooklib/<phase>/settings.py``) and its own cross-field
rules; :mod:`runbooklib.params` composes them into one :class:`~runbooklib.params.Params` model.
Role groups are defined here, once.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, IPvAnyAddress, PlainSerializer, PlainValidator

from .errors import Problem
from .secrets import SecretRef

Role = Literal["etcd", "controlplane", "worker", "database", "edge", "elk", "cache"]
ROLES: tuple[str, ...] = typing.get_args(Role)
# Hosts with any of these roles join the Kubernetes cluster.
K8S_ROLES: tuple[str, ...] = ("etcd", "controlplane", "worker")
# Roles whose hosts can hold personal data (152-FZ Art. 18(5)): they must sit in the data country.
DATA_ROLES: tuple[str, ...] = ("database", "worker", "edge", "elk", "cache")  # sessions are personal data

SecretField = Annotated[SecretRef, PlainValidator(SecretRef.parse), PlainSerializer(str)]
Name = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
UserName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]*$")]
Country = Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2 code")]
Port = Annotated[int, Field(ge=1, le=65535)]


def _address_text(value: Any) -> Any:
    # pydantic reads an integer as an IP address (10.0.0.1 is 167772161); a number here is a typo
    if isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is a number, not an IP address; write the address as text, like 10.77.0.11")
    return value


Address = Annotated[IPvAnyAddress, BeforeValidator(_address_text)]

# What a taint does to pods that do not tolerate it (the three effects Kubernetes knows).
TAINT_EFFECTS: tuple[str, ...] = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# key (an optional DNS prefix, then a name), an optional value, and the effect: dedicated=database:NoSchedule
_TAINT = re.compile(r"^(?P<key>([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)"
                    r"=(?P<value>([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?):(?P<effect>[A-Za-z]+)$")


def parse_taint(text: str) -> tuple[str, str, str]:
    """``key=value:Effect`` as (key, value, effect); ValueError naming the form when it is not one.

    Every distribution's taint is built from this one form: RKE1 writes ``{key, value, effect}``,
    RKE2 writes the text as it is (``node-taint``).
    """
    m = _TAINT.match(text) if isinstance(text, str) else None
    if m is None or m["effect"] not in TAINT_EFFECTS:
        effect = f" ({m['effect']!r} is not an effect)" if m is not None else ""
        raise ValueError(f"{text!r} is not a taint{effect}; write key=value:Effect with Effect one of "
                         f"{', '.join(TAINT_EFFECTS)}, like dedicated=database:NoSchedule")
    return m["key"], m["value"], m["effect"]


def _taint_text(text: str) -> str:
    parse_taint(text)
    return text


Taint = Annotated[str, AfterValidator(_taint_text)]


class Section(BaseModel):
    """A block of a parameter file: unknown keys are errors, values never change after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Approvals(Section):
    """Signed approvals an apply needs (see runbooklib.approvals)."""

    # distinct approvers, other than the operator, whose signatures an apply needs
    required: Annotated[int, Field(ge=1, le=10)] = 1
    # who may approve: an OpenSSH allowed-signers file (one `principal [options] key` a line), relative
    # to the parameter file; `ssh-keygen -Y find-principals` reads the approver's name from it
    allowed_signers: str


class Environment(Section):
    name: Name
    kind: Literal["lab", "staging", "production"]
    data_country: Country
    description: str = ""
    # required approvals before any apply (none when absent; production usually has them)
    approvals: Optional[Approvals] = None


# Kubernetes label syntax: they become node labels (RKE2's node-label "key=value", RKE1's cluster.yml)
LabelKey = Annotated[str, Field(pattern=r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")]
LabelValue = Annotated[str, Field(pattern=r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")]


class Location(Section):
    country: Country
    site: str = ""


class Host(Section):
    name: Name
    address: Address
    ssh_port: Port = 22
    user: UserName = "root"
    roles: Annotated[list[Role], Field(min_length=1)]
    labels: dict[LabelKey, LabelValue] = {}
    # Kubernetes taints of the host's node, each key=value:Effect (only for hosts in the cluster)
    taints: list[Taint] = []
    location: Location

    @property
    def in_cluster(self) -> bool:
        """Whether the host joins the Kubernetes cluster (has an etcd, controlplane or worker role)."""
        return bool(set(self.roles) & set(K8S_ROLES))


class Inventory(Section):
    hosts: Annotated[list[Host], Field(min_length=1)]


class SSH(Section):
    key: SecretField
    known_hosts: str
    connect_timeout: Annotated[float, Field(gt=0, le=300)] = 10.0
    command_timeout: Annotated[float, Field(gt=0)] = 300.0
    parallelism: Annotated[int, Field(ge=1, le=256)] = 16


# -- helpers for the cross-field rules of phase sections ------------------------------------------

def need_role(params, role: str, section: str, minimum: int = 1) -> list[Problem]:
    """A problem unless at least ``minimum`` hosts have ``role``."""
    if len(params.hosts_with(role)) >= minimum:
        return []
    return [Problem(section, f"needs at least {minimum} host with role {role}; no host in inventory.hosts has it "
                             f"(add {role} to a host's roles)")]


def need_host(params, path: str, name: str, role: str | None = None) -> list[Problem]:
    """A problem unless ``name`` is an inventory host (with ``role``, when given)."""
    by_name = {h.name: h for h in params.hosts}
    if name not in by_name:
        return [Problem(path, f"no host named {name} in inventory.hosts; known: {', '.join(by_name)}")]
    if role is not None and role not in by_name[name].roles:
        return [Problem(path, f"host {name} does not have role {role}; add it to the host's roles or name another host")]
    return []
