"""Parameter files: one YAML file per environment, validated before anything else happens.

``load_params(path)`` returns a :class:`Params` or raises :class:`~runbooklib.errors.ParamsError`
listing every problem at once, each with the file, the line, the field path
(``inventory.hosts[3].address``) and what is expected. Structure and types are checked by the
pydantic models below; rules that span fields (duplicate names, roles nobody has, an even etcd
count, a cluster DNS address outside the service range, data outside its country) live in
:func:`check_rules`.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import re
import typing
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Optional

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyAddress,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    ValidationError,
)

from . import safeyaml
from .errors import ParamsError, Problem
from .secrets import Secret, SecretRef

Role = Literal["etcd", "controlplane", "worker", "database", "edge", "elk"]
ROLES: tuple[str, ...] = typing.get_args(Role)
# Roles whose hosts can hold personal data (152-FZ Art. 18(5)): they must sit in the data country.
DATA_ROLES = ("database", "worker", "edge", "elk")

SecretField = Annotated[SecretRef, PlainValidator(SecretRef.parse), PlainSerializer(str)]
Name = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
Country = Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2 code")]
Port = Annotated[int, Field(ge=1, le=65535)]


def _address_text(value: Any) -> Any:
    # pydantic reads an integer as an IP address (10.0.0.1 is 167772161); a number here is a typo
    if isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is a number, not an IP address; write the address as text, like 10.77.0.11")
    return value


Address = Annotated[IPvAnyAddress, BeforeValidator(_address_text)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Environment(Section):
    name: Name
    kind: Literal["lab", "staging", "production"]
    data_country: Country
    description: str = ""


class Location(Section):
    country: Country
    site: str = ""


class Host(Section):
    name: Name
    address: Address
    ssh_port: Port = 22
    user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]*$")] = "root"
    roles: Annotated[list[Role], Field(min_length=1)]
    labels: dict[str, str] = {}
    location: Location


class Inventory(Section):
    hosts: Annotated[list[Host], Field(min_length=1)]


class SSH(Section):
    key: SecretField
    known_hosts: str
    connect_timeout: Annotated[float, Field(gt=0, le=300)] = 10.0
    command_timeout: Annotated[float, Field(gt=0)] = 300.0
    parallelism: Annotated[int, Field(ge=1, le=256)] = 16


RoleOrDefault = Literal["default", "etcd", "controlplane", "worker", "database", "edge", "elk"]


class DeployUser(Section):
    name: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]*$")]
    groups: list[Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]*$")]] = []
    # a public key (not a secret): the key line itself, or file:PATH of a .pub file
    authorized_key: str

    def public_key(self, base_dir: Path) -> str:
        if self.authorized_key.startswith("file:"):
            path = Path(self.authorized_key[5:]).expanduser()
            path = path if path.is_absolute() else base_dir / path
            try:
                return path.read_text().strip()
            except OSError as e:
                raise ParamsError(str(path), [Problem("vm.deploy_user.authorized_key", f"cannot read {path}: {e.strerror}")]) from None
        return self.authorized_key.strip()


class VM(Section):
    """Thresholds and settings of the VM phase (preflight and baseline)."""

    min_root_gb: dict[RoleOrDefault, Annotated[float, Field(ge=0)]] = {"default": 40, "worker": 100, "database": 100, "elk": 100}
    min_free_gb: Annotated[float, Field(ge=0)] = 10
    min_cpus: dict[RoleOrDefault, Annotated[int, Field(ge=1)]] = {"default": 2}
    min_memory_gb: dict[RoleOrDefault, Annotated[float, Field(ge=0)]] = {"default": 2, "controlplane": 4}
    ntp_servers: list[str] = []
    # False only where the kernel clock is shared (the lab): chronyd then runs with -x
    time_sync_controls_clock: bool = True
    deploy_user: Optional[DeployUser] = None
    # Docker series RKE1 accepts (kontainer-driver-metadata); ignored with kubernetes.ignore_docker_version
    docker_versions: list[str] = ["20.10", "23.0", "24.0", "25.0", "26.0", "26.1", "27.0", "27.1", "27.2", "27.3"]

    def threshold(self, table: dict, roles: list[str]):
        """The strictest threshold among the host's roles (falling back to ``default``)."""
        values = [table[r] for r in roles if r in table] or [table.get("default", 0)]
        return max(values)


class Kubernetes(Section):
    distribution: Literal["rke1", "rke2"] = "rke2"
    version: Annotated[str, Field(pattern=r"^v1\.\d+\.\d+$")]
    cluster_name: Name = "local"
    cluster_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.42.0.0/16")
    service_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.43.0.0/16")
    cluster_dns: ipaddress.IPv4Address = ipaddress.IPv4Address("10.43.0.10")
    cluster_domain: str = "cluster.local"
    network_plugin: Literal["canal", "flannel", "calico", "cilium", "weave", "none"] = "canal"
    ignore_docker_version: bool = False


class Registry(Section):
    server: str
    secret_name: Name = "registry-pull"
    namespaces: list[Name] = ["default"]
    json_key: SecretField


class Database(Section):
    flavour: Literal["mariadb", "mysql-8.0", "mysql-8.4"] = "mariadb"
    primary: Name
    replica: Optional[Name] = None
    delayed_replica: Optional[Name] = None
    delay_seconds: Annotated[int, Field(ge=0, le=2**31 - 1)] = 2_592_000
    binlog_retention_seconds: Annotated[int, Field(ge=0)] = 2_678_400
    port: Port = 3306
    root_password: SecretField
    replication_password: SecretField


class Gluster(Section):
    volume: Name = "cdn"
    bricks: Annotated[list[Name], Field(min_length=1)]
    brick_path: str = "/bricks/cdn"
    mount_path: str = "/cdn-data"


class Ceph(Section):
    pool_size: Annotated[int, Field(ge=1, le=7)] = 3
    failure_domain: Literal["host", "osd", "rack", "zone"] = "host"
    storage_class: str = "ceph-block"


class Storage(Section):
    gluster: Optional[Gluster] = None
    ceph: Optional[Ceph] = None


class Logging(Section):
    elasticsearch_url: Annotated[str, Field(pattern=r"^https?://")]
    user: str = "elastic"
    password: SecretField
    container_runtime: Literal["containerd", "docker"] = "containerd"
    warm_after_days: Annotated[int, Field(ge=0)] = 3
    delete_after_days: Annotated[int, Field(ge=1)] = 90


class Edge(Section):
    hosts: Annotated[list[Name], Field(min_length=1)]
    cdn_hostname: str
    cdn_path: str = "/cdn/"
    http_port: Port = 80
    https_port: Port = 443
    proxy_protocol: bool = True


class Params(Section):
    """A whole environment: who, where, how to reach it, and one section per migration phase."""

    environment: Environment
    inventory: Inventory
    ssh: SSH
    vm: VM = VM()
    kubernetes: Optional[Kubernetes] = None
    registry: Optional[Registry] = None
    database: Optional[Database] = None
    storage: Optional[Storage] = None
    logging: Optional[Logging] = None
    edge: Optional[Edge] = None

    _source: Path = PrivateAttr(default=Path("params.yaml"))
    _text: str = PrivateAttr(default="")

    # -- where it came from ------------------------------------------------------------------
    @property
    def source(self) -> Path:
        return self._source

    @property
    def source_dir(self) -> Path:
        return self._source.resolve().parent

    @property
    def text(self) -> str:
        return self._text

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self._text.encode()).hexdigest()

    # -- inventory helpers -------------------------------------------------------------------
    @property
    def hosts(self) -> list[Host]:
        return list(self.inventory.hosts)

    def host(self, name: str) -> Host:
        for h in self.inventory.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host named {name!r} in {self._source}")

    def hosts_with(self, role: str) -> list[Host]:
        return [h for h in self.inventory.hosts if role in h.roles]

    def path(self, relative: str) -> Path:
        """A path from the parameter file, resolved against the file's own folder."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.source_dir / p

    # -- secrets -----------------------------------------------------------------------------
    def secret_refs(self) -> Iterator[tuple[str, SecretRef]]:
        """Every secret reference in the file, with its field path."""
        yield from _walk_refs(self, "")

    def secret(self, field: str) -> Secret:
        """Resolve the secret at ``field`` (e.g. ``database.root_password``)."""
        refs = dict(self.secret_refs())
        if field not in refs:
            raise KeyError(f"{field} is not a secret field of {self._source}; known: {', '.join(refs) or 'none'}")
        return Secret(refs[field].resolve(self.source_dir, field), field)


def _walk_refs(obj: Any, prefix: str) -> Iterator[tuple[str, SecretRef]]:
    if isinstance(obj, SecretRef):
        yield prefix, obj
    elif isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            yield from _walk_refs(getattr(obj, name), f"{prefix}.{name}" if prefix else name)
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from _walk_refs(item, f"{prefix}[{i}]")


# --------------------------------------------------------------------------------------------
# Cross-field rules
# --------------------------------------------------------------------------------------------

def check_rules(p: Params) -> list[Problem]:
    """Rules that no single field can check. Each problem names the field to fix."""
    out: list[Problem] = []
    hosts = p.inventory.hosts
    by_name = {h.name: h for h in hosts}

    for key, label in (("name", "name"), ("address", "address")):
        first: dict[Any, int] = {}
        for i, h in enumerate(hosts):
            value = getattr(h, key)
            if value in first:
                out.append(Problem(
                    f"inventory.hosts[{i}].{key}",
                    f"duplicate {label} {value} (also inventory.hosts[{first[value]}]); every host needs its own {label}",
                ))
            else:
                first[value] = i
    for i, h in enumerate(hosts):
        dup = [r for r, n in Counter(h.roles).items() if n > 1]
        if dup:
            out.append(Problem(f"inventory.hosts[{i}].roles", f"role {dup[0]} is listed twice"))
        if p.environment.kind != "lab" and h.address.is_loopback:
            out.append(Problem(f"inventory.hosts[{i}].address",
                               f"loopback address {h.address} in a {p.environment.kind} environment; give the host's real address"))

    # Data localisation: hosts that can hold personal data stay in the data country.
    for i, h in enumerate(hosts):
        holding = [r for r in h.roles if r in DATA_ROLES]
        if holding and h.location.country != p.environment.data_country:
            out.append(Problem(
                f"inventory.hosts[{i}].location.country",
                f"{h.name} has role {holding[0]}, which can hold personal data, but is located in "
                f"{h.location.country}; environment.data_country requires {p.environment.data_country}",
            ))

    # Secrets: literal values are for the lab only.
    if p.environment.kind != "lab":
        for path, ref in p.secret_refs():
            if ref.is_literal:
                out.append(Problem(
                    path,
                    f"a literal secret is not allowed in a {p.environment.kind} parameter file; put the "
                    "value in an environment variable and write env:NAME, or in a file only you can read "
                    "and write file:/path",
                ))

    def need_role(role: str, section: str, minimum: int = 1) -> None:
        have = len(p.hosts_with(role))
        if have < minimum:
            out.append(Problem(section, f"needs at least {minimum} host with role {role}; no host in "
                                        f"inventory.hosts has it (add {role} to a host's roles)"))

    def need_host(path: str, name: str, role: str) -> None:
        if name not in by_name:
            out.append(Problem(path, f"no host named {name} in inventory.hosts; known: {', '.join(by_name)}"))
        elif role not in by_name[name].roles:
            out.append(Problem(path, f"host {name} does not have role {role}; add it to the host's roles or name another host"))

    k = p.kubernetes
    if k is not None:
        need_role("etcd", "kubernetes")
        need_role("controlplane", "kubernetes")
        need_role("worker", "kubernetes")
        etcd = len(p.hosts_with("etcd"))
        if etcd and etcd % 2 == 0:
            out.append(Problem("inventory.hosts", f"{etcd} hosts have role etcd; etcd needs an odd number "
                                                   "(1, 3 or 5) to keep quorum through a failure"))
        if k.cluster_dns not in k.service_cidr:
            out.append(Problem("kubernetes.cluster_dns", f"{k.cluster_dns} is outside kubernetes.service_cidr "
                                                         f"{k.service_cidr}; use an address inside it (usually the .10)"))
        if k.cluster_cidr.overlaps(k.service_cidr):
            out.append(Problem("kubernetes.service_cidr", f"{k.service_cidr} overlaps kubernetes.cluster_cidr "
                                                          f"{k.cluster_cidr}; pods and services need separate ranges"))
        for i, h in enumerate(hosts):
            for field in ("cluster_cidr", "service_cidr"):
                net = getattr(k, field)
                if h.address.version == 4 and h.address in net:
                    out.append(Problem(f"inventory.hosts[{i}].address",
                                       f"{h.address} lies inside kubernetes.{field} {net}; node addresses must not "
                                       "overlap the cluster's internal ranges"))

    db = p.database
    if db is not None:
        named = [("database.primary", db.primary), ("database.replica", db.replica),
                 ("database.delayed_replica", db.delayed_replica)]
        seen: dict[str, str] = {}
        for path, name in named:
            if name is None:
                continue
            need_host(path, name, "database")
            if name in seen:
                out.append(Problem(path, f"{name} is also {seen[name]}; each database role needs its own host"))
            seen.setdefault(name, path)
        if db.delayed_replica and db.delay_seconds == 0:
            out.append(Problem("database.delay_seconds", "a delayed replica needs a delay above 0 (the seed used 2592000, 30 days)"))
        if db.delayed_replica and db.binlog_retention_seconds < db.delay_seconds:
            out.append(Problem("database.binlog_retention_seconds",
                               f"{db.binlog_retention_seconds} s is shorter than database.delay_seconds {db.delay_seconds}; "
                               "the primary must keep binlogs at least as long as the delay"))

    if p.edge is not None:
        for i, name in enumerate(p.edge.hosts):
            need_host(f"edge.hosts[{i}]", name, "edge")
    if p.storage is not None and p.storage.gluster is not None:
        for i, name in enumerate(p.storage.gluster.bricks):
            if name not in by_name:
                out.append(Problem(f"storage.gluster.bricks[{i}]", f"no host named {name} in inventory.hosts"))
    if p.storage is not None and p.storage.ceph is not None:
        if p.storage.ceph.pool_size == 1 and p.environment.kind != "lab":
            out.append(Problem("storage.ceph.pool_size", "a pool of size 1 keeps one copy of every byte; use 3 "
                                                         "outside the lab (size 1 also needs requireSafeReplicaSize: false)"))
    if p.logging is not None and p.logging.delete_after_days <= p.logging.warm_after_days:
        out.append(Problem("logging.delete_after_days", f"{p.logging.delete_after_days} must be later than "
                                                       f"logging.warm_after_days {p.logging.warm_after_days}"))
    return out


# --------------------------------------------------------------------------------------------
# Loading, and errors that point at the line
# --------------------------------------------------------------------------------------------

def load_params(path: str | Path) -> Params:
    """Read, parse and validate a parameter file; raise ParamsError naming every problem."""
    path = Path(path)
    text = safeyaml.read_text(path, str(path))  # a regular UTF-8 file of bounded size, or exit 2
    return parse_params(text, str(path), source=path)


def parse_params(text: str, shown: str = "<params>", source: Path | None = None) -> Params:
    data, root = safeyaml.load(text, shown)  # duplicate keys, depth, huge or infinite numbers: refused
    if not isinstance(data, dict):
        raise ParamsError(shown, [Problem("", "expected a mapping with environment, inventory and ssh at the top")])
    try:
        params = Params.model_validate(data)
    except ValidationError as e:
        problems = [_problem_from_pydantic(err, root) for err in e.errors()]
        raise ParamsError(shown, problems) from None
    params._source = source or Path(shown)
    params._text = text
    problems = [Problem(pr.path, pr.message, _line_of(root, pr.path)) for pr in check_rules(params)]
    problems.sort(key=lambda pr: pr.line or 0)
    if problems:
        raise ParamsError(shown, problems)
    return params


def _path_str(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _clean_loc(loc: tuple) -> tuple:
    # pydantic adds validator names to union and function locations; keep only real keys
    return tuple(p for p in loc if isinstance(p, int) or not (p.startswith("function-") or p in ("IPv4Address", "IPv6Address")))


def _problem_from_pydantic(err: dict, root: yaml.Node | None) -> Problem:
    loc = _clean_loc(err["loc"])
    path = _path_str(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        msg = f"unknown key {loc[-1]!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
        msg += f" Allowed here: {', '.join(allowed)}" if allowed else ""
    elif kind == "missing":
        msg = "required field is missing"
    elif kind == "literal_error":
        msg = f"{err['input']!r} is not allowed; expected {err['ctx']['expected']}"
    elif kind == "string_pattern_mismatch":
        msg = f"{err['input']!r} does not have the expected form ({_pattern_hint(err['ctx']['pattern'])})"
    elif kind == "string_type" and isinstance(err["input"], (int, float, bool)):
        msg = f"expected text, got {err['input']!r} (YAML read it as a {type(err['input']).__name__}); put it in quotes"
    elif kind in ("ip_any_address", "ip_v4_network", "ip_v4_address"):
        msg = f"{err['input']!r} is not a valid IP {'network' if 'network' in kind else 'address'}"
    else:
        msg = err["msg"]
        if "input" in err and not isinstance(err["input"], (dict, list)) and kind != "value_error":
            msg += f" (got {err['input']!r})"
        if kind == "value_error":
            msg = msg.removeprefix("Value error, ")
    return Problem(path, msg, _line_of(root, path if kind != "missing" else _path_str(loc[:-1])))


_PATTERN_HINTS = {
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$": "lower-case letters, digits and dashes, like a DNS label",
    r"^[A-Z]{2}$": "a two-letter country code such as RU",
    r"^v1\.\d+\.\d+$": "a Kubernetes version such as v1.32.5",
    r"^https?://": "a URL starting with http:// or https://",
    r"^[a-z_][a-z0-9_-]*$": "a Unix user name",
}


def _pattern_hint(pattern: str) -> str:
    return _PATTERN_HINTS.get(pattern, f"pattern {pattern}")


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the model found at ``loc`` below Params (for 'did you mean' hints)."""
    cls: Any = Params
    for part in loc:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part)
        if field is None:
            return []
        cls = _model_in(field.annotation)
        if cls is None:
            return []
    return list(cls.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _line_of(root: yaml.Node | None, path: str) -> int | None:
    """1-based line of the YAML node at a field path, or of its nearest existing parent."""
    if root is None:
        return None
    node = root
    line = node.start_mark.line + 1
    for key, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        nxt = None
        if key and isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == key:
                    nxt, line = v, k.start_mark.line + 1
                    break
        elif index and isinstance(node, yaml.SequenceNode):
            i = int(index)
            if i < len(node.value):
                nxt = node.value[i]
                line = nxt.start_mark.line + 1
        if nxt is None:
            break
        node = nxt
    return line
