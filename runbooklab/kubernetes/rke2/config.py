"""RKE2's configuration as the stand-in reads it: ``config.yaml``, then ``config.yaml.d/*.yaml``, then flags.

As in RKE2, every key is a command-line flag of ``rke2 server`` or ``rke2 agent`` without its dashes;
a later file overrides an earlier one, and a key ending in ``+`` appends to a list. A key that is not
a flag of the command stops RKE2 (``flag provided but not defined``); so does a malformed label or
taint. Keys of real RKE2 that the lab does not emulate (no kubelet, no containers run) are accepted
with a warning naming them. The defaults are RKE2's.
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import CONFIG_FILE, Fatal

# honoured: key -> kind (str, list, bool, int)
COMMON = {"server": "str", "token": "str", "token-file": "str", "node-name": "str", "node-ip": "str", "node-label": "list",
          "node-taint": "list", "node-external-ip": "str", "debug": "bool", "lb-server-port": "int", "kubelet-arg": "list"}
SERVER = {**COMMON, "tls-san": "list", "cni": "list", "cluster-cidr": "str", "service-cidr": "str", "cluster-dns": "str",
          "cluster-domain": "str", "etcd-snapshot-schedule-cron": "str", "etcd-snapshot-retention": "int",
          "etcd-snapshot-dir": "str", "etcd-disable-snapshots": "bool", "system-default-registry": "str",
          "disable-etcd": "bool", "disable-apiserver": "bool", "disable-controller-manager": "bool", "disable-scheduler": "bool",
          "write-kubeconfig": "str", "write-kubeconfig-mode": "str", "agent-token": "str", "advertise-address": "str",
          "kube-apiserver-arg": "list", "kube-controller-manager-arg": "list", "kube-scheduler-arg": "list", "etcd-arg": "list",
          "cluster-reset": "bool", "cluster-reset-restore-path": "str"}
AGENT = dict(COMMON)
# flags of real RKE2 that the lab accepts and does not emulate: no kubelet, container runtime, CNI or kube-proxy runs
NOT_EMULATED_COMMON = {"profile", "selinux", "kube-proxy-arg", "protect-kernel-defaults", "private-registry", "resolv-conf",
                       "container-runtime-endpoint", "snapshotter", "default-runtime", "pause-image", "runtime-image",
                       "kubelet-path", "cloud-provider-name", "cloud-provider-config", "image-credential-provider-bin-dir",
                       "image-credential-provider-config", "node-internal-dns", "node-external-dns", "enable-pprof",
                       "airgap-extra-registry", "disable-default-registry-endpoint", "with-node-id"}
NOT_EMULATED_SERVER = NOT_EMULATED_COMMON | {
    "disable", "disable-cloud-controller", "disable-kube-proxy", "ingress-controller", "enable-servicelb", "embedded-registry",
    "secrets-encryption", "secrets-encryption-provider", "audit-policy-file", "pod-security-admission-config-file",
    "etcd-expose-metrics", "etcd-snapshot-compress", "etcd-snapshot-name", "etcd-s3", "etcd-s3-endpoint", "etcd-s3-bucket",
    "etcd-s3-region", "etcd-s3-folder", "etcd-s3-access-key", "etcd-s3-secret-key", "etcd-s3-endpoint-ca",
    "etcd-s3-skip-ssl-verify", "etcd-s3-insecure", "etcd-s3-timeout", "service-node-port-range", "egress-selector-mode",
    "write-kubeconfig-group", "kube-cloud-controller-manager-arg", "supervisor-metrics", "tls-san-security",
    "control-plane-resource-requests", "control-plane-resource-limits", "control-plane-probe-configuration",
    "kube-apiserver-extra-mount", "kube-scheduler-extra-mount", "kube-controller-manager-extra-mount", "etcd-extra-mount",
    "kube-apiserver-extra-env", "kube-scheduler-extra-env", "kube-controller-manager-extra-env", "etcd-extra-env",
    "kube-apiserver-image", "kube-controller-manager-image", "kube-proxy-image", "kube-scheduler-image", "etcd-image",
    "helm-job-image", "agent-token-file", "bind-address"}
# real flags the stand-in refuses: it could only pretend to do them
REFUSED = {"data-dir": "the lab's rke2 keeps its data in /var/lib/rancher/rke2 only"}
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
TOKEN_FILE_WAIT = 240.0  # seconds RKE2 waits for a token-file that does not exist yet
CNIS = ("canal", "calico", "cilium", "flannel", "multus", "none")
DEFAULTS = {"cluster-cidr": "10.42.0.0/16", "service-cidr": "10.43.0.0/16", "cluster-dns": "10.43.0.10", "cluster-domain": "cluster.local",
            "cni": ["canal"], "etcd-snapshot-schedule-cron": "0 */12 * * *", "etcd-snapshot-retention": 5, "write-kubeconfig-mode": "0600"}


@dataclass
class Config:
    """What ``rke2 server`` or ``rke2 agent`` was given, merged, checked, with RKE2's defaults."""

    command: str  # server | agent
    values: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def get(self, key: str, default=None):
        if key in self.values:
            return self.values[key]
        return DEFAULTS.get(key, default) if self.command == "server" else default

    def flag(self, key: str) -> bool:
        return bool(self.values.get(key, False))

    def token(self, log=None, stopping=None) -> str | None:
        """``token``, else the contents of ``token-file`` (whitespace stripped); None if neither.

        A token file that does not exist yet is waited for as RKE2 waits (k3s's ``util.ReadFile``):
        ``Waiting for <file> to be available`` every 2 s, then after 4 minutes ``Timeout while trying to
        read the file`` (the service then restarts into the same wait). None if ``stopping`` is set meanwhile.
        """
        if self.values.get("token"):
            return str(self.values["token"]).strip()
        path = self.values.get("token-file")
        if not path:
            return None
        deadline = time.monotonic() + TOKEN_FILE_WAIT
        while True:
            try:
                text = Path(path).read_text().strip()
                break
            except FileNotFoundError:
                if stopping is None or time.monotonic() > deadline:
                    raise Fatal(f"Error: Timeout while trying to read the file (token-file {path} does not exist)") from None
                if log is not None:
                    log.info(f"Waiting for {path} to be available")
                if stopping.wait(2):
                    return None
            except OSError as e:
                raise Fatal(f"cannot read token-file {path}: {e.strerror or e}") from None
        if not text:
            raise Fatal(f"token-file {path} is empty")
        return text

    def labels(self) -> dict[str, str]:
        out = {}
        for item in self.get("node-label") or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise Fatal(f"invalid node-label {item!r}: write key=value")
            out[key] = value
        return out

    def taints(self) -> list[dict]:
        return [parse_taint(t) for t in self.get("node-taint") or []]

    def pairs(self, key: str) -> dict[str, str]:
        """A ``*-arg`` list (``flag=value`` items) as flags for a component."""
        out = {}
        for item in self.get(key) or []:
            name, sep, value = item.lstrip("-").partition("=")
            if not sep or not name:
                raise Fatal(f"invalid {key} {item!r}: write flag=value")
            out[name] = value
        return out

    def redacted_args(self) -> list[str]:
        """The node's arguments as RKE2 records them on its Node (rke2.io/node-args), the token hidden."""
        args = [self.command]
        for key, value in self.values.items():
            for v in (value if isinstance(value, list) else [value]):
                args += [f"--{key}", "********" if key in ("token", "agent-token") else str(v).lower() if isinstance(v, bool) else str(v)]
        return args


def parse_taint(text: str) -> dict:
    """``key=value:Effect`` or ``key:Effect``, as the kubelet's ``--register-with-taints`` takes them."""
    key_value, sep, effect = str(text).rpartition(":")
    key, _, value = key_value.partition("=")
    if not sep or not key or effect not in EFFECTS:
        raise Fatal(f"invalid node-taint {text!r}: write key=value:Effect with Effect one of {', '.join(EFFECTS)}")
    taint = {"key": key, "effect": effect}
    if value:
        taint["value"] = value
    return taint


def _files(path: Path) -> list[Path]:
    drop_in = path.parent / f"{path.name}.d"
    extra = sorted(p for p in drop_in.glob("*") if p.suffix in (".yaml", ".yml")) if drop_in.is_dir() else []
    return ([path] if path.exists() else []) + extra


def _coerce(key: str, kind: str, value, where: str):
    if kind == "list":
        if value is None:
            return []
        items = value if isinstance(value, list) else str(value).split(",")
        return [str(v).strip() for v in items if str(v).strip()]
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise Fatal(f"invalid value {value!r} for {key} in {where}: use true or false")
    if kind == "int":
        try:
            return int(value)
        except (TypeError, ValueError):
            raise Fatal(f"invalid value {value!r} for {key} in {where}: use a number") from None
    if isinstance(value, (list, dict)):
        raise Fatal(f"invalid value for {key} in {where}: one value expected, not a {type(value).__name__}")
    return str(value)


def _merge(cfg: Config, key: str, value, where: str) -> None:
    append = key.endswith("+")
    key = key.rstrip("+")
    known = SERVER if cfg.command == "server" else AGENT
    ignored = NOT_EMULATED_SERVER if cfg.command == "server" else NOT_EMULATED_COMMON
    if key in REFUSED:
        raise Fatal(f"{key} (in {where}): {REFUSED[key]}")
    if key in ignored:
        cfg.warnings.append(f"{key} (in {where}) is accepted but not emulated: no kubelet, container runtime or CNI runs in the lab")
        return
    if key not in known:
        raise Fatal(f"Incorrect Usage. flag provided but not defined: -{key} (in {where}; rke2 {cfg.command} has no such flag)")
    value = _coerce(key, known[key], value, where)
    if append and known[key] == "list":
        cfg.values[key] = list(cfg.values.get(key, [])) + value
    else:
        cfg.values[key] = value


def load(command: str, path: str = CONFIG_FILE, flags: list[tuple[str, object]] = ()) -> Config:
    """The configuration of ``rke2 <command>``: the file, its drop-ins, then command-line flags."""
    cfg = Config(command)
    for p in _files(Path(path)):
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise Fatal(f"failed to parse {p}: {getattr(e, 'problem', None) or e}") from None
        except OSError as e:
            raise Fatal(f"cannot read {p}: {e.strerror or e}") from None
        if data is None:
            continue
        if not isinstance(data, dict):
            raise Fatal(f"{p}: expected a mapping of flag names to values")
        cfg.sources.append(str(p))
        for key, value in data.items():
            _merge(cfg, str(key), value, str(p))
    for key, value in flags:
        known = SERVER if command == "server" else AGENT
        _merge(cfg, key + ("+" if known.get(key.rstrip("+")) == "list" and key in cfg.values else ""), value, "the command line")
    check(cfg)
    return cfg


def check(cfg: Config) -> None:
    """What RKE2 refuses before it starts anything."""
    cfg.labels()
    cfg.taints()
    for key in ("kubelet-arg", "kube-apiserver-arg", "kube-controller-manager-arg", "kube-scheduler-arg", "etcd-arg"):
        cfg.pairs(key)
    if cfg.values.get("kubelet-arg"):
        cfg.warnings.append("kubelet-arg is checked but not emulated: no kubelet runs in the lab (KWOK manages the node)")
    for key in ("node-ip", "node-external-ip", "advertise-address"):
        if cfg.values.get(key):
            try:
                ipaddress.ip_address(cfg.values[key])
            except ValueError:
                raise Fatal(f"invalid {key} {cfg.values[key]!r}: an IP address is expected") from None
    server = cfg.values.get("server")
    if server and not re.fullmatch(r"https://[^/\s:]+(:\d+)?/?", server):
        raise Fatal(f"invalid server {server!r}: write https://<address>:9345")
    if cfg.command == "agent" and not server:
        raise Fatal("--server is required: an agent joins a server (server: https://<server>:9345 in config.yaml)")
    if server and not (cfg.values.get("token") or cfg.values.get("token-file")):
        raise Fatal("--token is required when --server is given (token: or token-file: in config.yaml)")
    if cfg.command != "server":
        return
    for key in ("cluster-cidr", "service-cidr"):
        try:
            ipaddress.ip_network(cfg.get(key))
        except ValueError:
            raise Fatal(f"invalid {key} {cfg.get(key)!r}: a network such as 10.43.0.0/16 is expected") from None
    try:
        dns = ipaddress.ip_address(cfg.get("cluster-dns"))
    except ValueError:
        raise Fatal(f"invalid cluster-dns {cfg.get('cluster-dns')!r}: an IP address is expected") from None
    if dns not in ipaddress.ip_network(cfg.get("service-cidr")):
        raise Fatal(f"cluster-dns {dns} is not in service-cidr {cfg.get('service-cidr')}")
    for cni in cfg.get("cni"):
        if cni not in CNIS:
            raise Fatal(f"invalid cni {cni!r}: RKE2 ships {', '.join(CNIS)}")
    if cfg.flag("disable-etcd") and not server:
        raise Fatal("disable-etcd needs server: a server without etcd joins a cluster that has etcd")
    if cfg.values.get("cluster-reset-restore-path") and not cfg.flag("cluster-reset"):
        raise Fatal("invalid flag use; --cluster-reset required with --cluster-reset-restore-path")
    if cfg.flag("disable-apiserver") and not server:
        raise Fatal("disable-apiserver needs server: a server without the API server joins a cluster that has one")
    from .snapshots import parse_cron

    parse_cron(str(cfg.get("etcd-snapshot-schedule-cron")))
    if cfg.get("etcd-snapshot-retention") < 1:
        raise Fatal("etcd-snapshot-retention must be at least 1")
    try:
        int(str(cfg.get("write-kubeconfig-mode")), 8)
    except ValueError:
        raise Fatal(f"invalid write-kubeconfig-mode {cfg.get('write-kubeconfig-mode')!r}: an octal mode such as 0600 is expected") from None
