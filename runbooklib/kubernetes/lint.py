"""Everything wrong with a cluster definition, before anything is installed: the complete list.

``lint(params, existing)`` judges the parameter file's cluster (and, given the spec read back from
the state dir's rendered file, what changed since the cluster was made); ``lint_cluster_yml(text,
source)`` judges a hand-written RKE1 cluster.yml, where the founding story's slip lives (a service
range set on kube-api only). Parameter validation (``settings.rules``) already refuses some of
these for a parameter file; lint repeats them so that one list covers every source.

Each :class:`Finding` names its rule (stable: tests and runbooks refer to it), where (file and
field), what is wrong and what to do; :data:`RULES` says why each rule exists. Severity: ``error``
means the cluster would not work or could not be changed later; ``warning`` means it works but
someone will regret it. One rule depends on the environment: fewer than three etcd nodes is an
error outside the lab (one lost node stops the cluster) and a warning in it (a small lab is
allowed to be fragile).

    for f in lint(load_params("params/prod.yaml")):
        print(f)   # params/prod.yaml: kubernetes.cluster_dns: error [cluster-dns-outside-service-range]: ...
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal

import yaml

from . import rke1, rke2
from .spec import ClusterFileError, ClusterSpec, spec_from_params

__all__ = ["CHECKS", "RULES", "SUPPORTED_MINORS", "Finding", "LintRule", "lint", "lint_cluster_yml"]

Severity = Literal["error", "warning"]

# Kubernetes minors each distribution ships, with where that comes from:
# - rke1: the last RKE1 line, rke v1.8.x, ships v1.30 to v1.32 (github.com/rancher-archives/rke/releases,
#   v1.8.14: v1.30.14, v1.31.14, v1.32.13; the last two only with SUSE's Extended Life subscription).
#   RKE1 reached end of life on 2025-07-31: no newer minor will come.
# - rke2: v1.31 to v1.36 as of 2026-11 (github.com/rancher/rke2/releases). RKE2 follows upstream, a new
#   minor about every four months: add it here when it ships and drop the ones out of support.
SUPPORTED_MINORS: dict[str, tuple[int, ...]] = {"rke1": (30, 31, 32), "rke2": (31, 32, 33, 34, 35, 36)}
SUPPORTED_MINORS_CHECKED = "2026-11"
CNIS: dict[str, tuple[str, ...]] = {"rke1": rke1.NETWORK_PLUGINS, "rke2": rke2.CNIS}
RKE1_END_OF_LIFE = "2025-07-31"


@dataclass(frozen=True)
class LintRule:
    """A rule: its stable name, why it exists, the usual fix and its severity."""

    name: str
    why: str
    fix: str
    severity: Severity = "error"


@dataclass(frozen=True)
class Finding:
    """One thing wrong: the rule, how bad, where (file: field), what is wrong and what to do."""

    rule: str
    severity: Severity
    where: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.where}: {self.severity} [{self.rule}]: {self.message}; {self.fix}"

    def row(self) -> dict:
        return {"severity": self.severity, "rule": self.rule, "where": self.where, "finding": self.message, "fix": self.fix}


RULES: dict[str, LintRule] = {r.name: r for r in (
    LintRule("service-range-mismatch",
             "RKE1 defaults kube-api's and kube-controller's service_cluster_ip_range each on its own: set on kube-api alone "
             "(the founding story's slip), the controller manager works with 10.43.0.0/16 while Services get addresses elsewhere",
             "set services.kube-controller.service_cluster_ip_range to the same range as services.kube-api"),
    LintRule("cluster-dns-outside-service-range",
             "the cluster DNS is a Service: its address comes from the service range, and one outside it never answers",
             "use an address inside the service range, usually its .10"),
    LintRule("pod-service-overlap",
             "pods and Services routed from one range: traffic for a Service reaches a pod, or nothing",
             "give pods and Services separate ranges (the defaults are 10.42.0.0/16 and 10.43.0.0/16)"),
    LintRule("node-in-cluster-range",
             "a node whose address lies in the pod or service range is routed into the cluster network, not to the node",
             "choose pod and service ranges that hold no node address"),
    LintRule("missing-role",
             "a cluster needs etcd (its data), a control plane (its API) and workers (somewhere to run pods)",
             "give the role to at least one host"),
    LintRule("etcd-even",
             "etcd keeps working while a majority is up: 4 members survive one loss, as 3 do, and 2 survive none",
             "use an odd number of etcd nodes (1, 3 or 5)"),
    LintRule("etcd-quorum",
             "with fewer than three etcd members, losing one node stops the cluster",
             "give three hosts the etcd role"),
    LintRule("flexvolume-flags",
             "Rook 1.8 removed its flexvolume driver (CSI only): the seed's kubelet volume-plugin-dir recipe for Rook 0.9 "
             "does nothing today but mislead",
             "drop the flexvolume kubelet flags (and their extra_binds); Rook's CSI driver needs none", "warning"),
    LintRule("cluster-range-changed",
             "the service range and the pod range are fixed when a cluster is created: changing them breaks every Service "
             "and pod address already given out",
             "put the range back as the cluster has it, or rebuild the cluster to change it"),
    LintRule("version-not-shipped",
             "a Kubernetes version the distribution does not ship cannot be installed (or is out of support)",
             "choose a version the distribution ships"),
    LintRule("rke1-end-of-life",
             f"RKE1 reached end of life on {RKE1_END_OF_LIFE} (final line 1.8): no more fixes, and no Kubernetes after 1.32",
             "plan the move to RKE2 (kubernetes.distribution: rke2): a new cluster, then move the workloads (docs.rke2.io)",
             "warning"),
    LintRule("cni-not-shipped",
             "each distribution ships its own set of network plugins; another one would have to be installed by hand",
             "choose a network plugin the distribution ships (canal is the default of both)"),
    LintRule("rke2-first-server-needs-etcd",
             "RKE2 starts the cluster on the first server, and a control-plane node without etcd cannot be the first",
             "give the first control-plane host in inventory.hosts the etcd role too, or list one with both first"),
    LintRule("nodes-leave-undrained",
             "RKE1's rke up deletes a node that is no longer in cluster.yml at once, without a drain: its pods stop "
             "wherever they were, PodDisruptionBudgets or not",
             "take nodes out with 10-capacity-fold-in, which cordons and drains them first (or put them back in the parameters)"),
    LintRule("cluster-yml-unreadable",
             "a file lint cannot read is a file RKE reads differently from its author",
             "correct the file where named"),
)}


@dataclass
class _Linting:
    """One lint run: the spec, where each of its parts is written in the file (field paths), and the findings so far."""

    spec: ClusterSpec
    file: str
    fields: dict[str, str]  # spec field -> its path in the file
    nodes: tuple[str, ...]  # the file's entry of each spec node, in spec order
    kind: str = "production"  # environment.kind
    ceph: bool = False  # storage.ceph is configured (Rook)
    binds: list = field(default_factory=list)  # cluster.yml's services.kubelet.extra_binds
    existing: ClusterSpec | None = None  # the cluster as made
    findings: list[Finding] = field(default_factory=list)

    def at(self, name: str) -> str:
        path = self.fields.get(name, name)
        return f"{self.file}: {path}" if path else self.file

    def add(self, rule: str, where: str, message: str, fix: str | None = None, severity: Severity | None = None) -> None:
        r = RULES[rule]
        self.findings.append(Finding(rule, severity or r.severity, where, message, fix or r.fix))


_PARAMS_FIELDS = {"distribution": "kubernetes.distribution", "version": "kubernetes.version", "cni": "kubernetes.network_plugin",
                  "cluster_cidr": "kubernetes.cluster_cidr", "service_cidr": "kubernetes.service_cidr",
                  "cluster_dns": "kubernetes.cluster_dns", "kubelet_extra_args": "kubernetes.kubelet_extra_args",
                  "roles": "inventory.hosts"}
_CLUSTER_YML_FIELDS = {"distribution": "", "version": "kubernetes_version", "cni": "network.plugin",
                       "cluster_cidr": "services.kube-controller.cluster_cidr",
                       "service_cidr": "services.kube-api.service_cluster_ip_range",
                       "cluster_dns": "services.kubelet.cluster_dns_server", "kubelet_extra_args": "services.kubelet.extra_args",
                       "roles": "nodes"}


def lint(params, existing: ClusterSpec | None = None) -> list[Finding]:
    """Every finding about the parameter file's cluster; ``existing``: the spec of the cluster as made (or None)."""
    run = _Linting(spec_from_params(params), str(params.source), _PARAMS_FIELDS,
                   tuple(f"inventory.hosts[{i}]" for i, h in enumerate(params.hosts) if h.in_cluster),
                   kind=params.environment.kind, ceph=bool(params.storage and params.storage.ceph), existing=existing)
    for check in CHECKS:
        check(run)
    return run.findings


def lint_cluster_yml(text: str, source: str = "cluster.yml", *, environment_kind: str = "production",
                     existing: ClusterSpec | None = None) -> list[Finding]:
    """Every finding about a (hand-written) RKE1 cluster.yml; strict as for production unless told the environment."""
    try:
        spec = rke1.read_cluster_yml(text, source)
    except ClusterFileError as e:
        rule = RULES["cluster-yml-unreadable"]
        return [Finding(rule.name, rule.severity, f"{source}: {e.field}" if e.field else source, e.message, rule.fix)]
    services = (yaml.safe_load(text) or {}).get("services") or {}  # read_cluster_yml has checked the shape
    run = _Linting(spec, source, _CLUSTER_YML_FIELDS, tuple(f"nodes[{i}]" for i in range(len(spec.nodes))), kind=environment_kind,
                   binds=list((services.get("kubelet") or {}).get("extra_binds") or []), existing=existing)
    _service_ranges_agree(services, run)
    for check in CHECKS:
        check(run)
    return run.findings


# -- the rules, each a function adding its findings; CHECKS is their order ------------------------

def _service_ranges_agree(services: dict, run: _Linting) -> None:
    """cluster.yml only: the spec holds one service range, a hand-written file can hold two."""
    default = rke1.RKE_DEFAULTS["service_range"]  # RKE's default for each of the two, when unset
    api = (services.get("kube-api") or {}).get("service_cluster_ip_range")
    controller = (services.get("kube-controller") or {}).get("service_cluster_ip_range")
    if str(api or default) == str(controller or default):
        return
    said = lambda value, name: f"{value}" if value else f"not set (RKE's default for {name}: {default})"
    run.add("service-range-mismatch", f"{run.file}: services.kube-controller.service_cluster_ip_range",
            f"services.kube-api.service_cluster_ip_range is {said(api, 'kube-api')} but services.kube-controller."
            f"service_cluster_ip_range is {said(controller, 'kube-controller')}",
            f"set both to the same range (services.kube-controller.service_cluster_ip_range: {api or default})")


def _end_of_life(run: _Linting) -> None:
    if run.spec.distribution == "rke1":
        run.add("rke1-end-of-life", run.at("distribution"),
                f"RKE1 reached end of life on {RKE1_END_OF_LIFE}; its last line (1.8) ships Kubernetes up to v1.32")


def _version(run: _Linting) -> None:
    d, version = run.spec.distribution, run.spec.version
    minors = SUPPORTED_MINORS.get(d, ())
    shipped = f"v1.{minors[0]} to v1.{minors[-1]}" if minors else "none"
    m = re.fullmatch(r"v?1\.(\d+)\.\d+", version)
    if m is None:
        run.add("version-not-shipped", run.at("version"), f"no Kubernetes version given ({version!r}); {d} would pick its own default",
                f"set it to a version {d} ships ({shipped} as of {SUPPORTED_MINORS_CHECKED})")
    elif int(m[1]) not in minors:
        run.add("version-not-shipped", run.at("version"),
                f"{version} is not a Kubernetes version {d} ships ({shipped} as of {SUPPORTED_MINORS_CHECKED})",
                f"choose a version {d} ships ({shipped})" + (", or move to rke2" if d == "rke1" else ""))


def _network_plugin(run: _Linting) -> None:
    shipped = CNIS.get(run.spec.distribution, ())
    if run.spec.cni not in shipped:
        run.add("cni-not-shipped", run.at("cni"), f"{run.spec.cni} is not a network plugin {run.spec.distribution} ships "
                                                  f"({', '.join(shipped)})")


def _roles(run: _Linting) -> None:
    for role in ("etcd", "controlplane", "worker"):
        if not run.spec.with_role(role):
            run.add("missing-role", run.at("roles"), f"no node has the {role} role",
                    f"give the {role} role to at least one host" + (" (three for etcd)" if role == "etcd" else ""))


def _etcd(run: _Linting) -> None:
    count = len(run.spec.with_role("etcd"))
    if count and count % 2 == 0:
        run.add("etcd-even", run.at("roles"), f"{count} nodes have the etcd role; an even count adds a node without adding a "
                                              "failure it survives", f"use {count - 1} or {count + 1} etcd nodes")
    if 0 < count < 3:
        lab = run.kind == "lab"
        run.add("etcd-quorum", run.at("roles"),
                f"{count} etcd node{'s' if count > 1 else ''} in a {run.kind} environment: losing one stops the cluster"
                + (" (accepted in a lab)" if lab else ""), severity="warning" if lab else "error")


def _ranges(run: _Linting) -> None:
    spec, service, pods = run.spec, run.fields["service_cidr"], run.fields["cluster_cidr"]
    if spec.cluster_dns not in spec.service_cidr:
        run.add("cluster-dns-outside-service-range", run.at("cluster_dns"),
                f"{spec.cluster_dns} is outside the service range {spec.service_cidr} ({service})",
                f"use an address inside {spec.service_cidr}, usually {spec.service_cidr.network_address + 10}")
    if spec.cluster_cidr.overlaps(spec.service_cidr):
        run.add("pod-service-overlap", run.at("service_cidr"),
                f"the service range {spec.service_cidr} overlaps the pod range {spec.cluster_cidr} ({pods})")
    for node, entry in zip(spec.nodes, run.nodes):
        try:
            address = ipaddress.ip_address(node.address)
        except ValueError:
            continue  # a host name (hand-written cluster.yml): nothing to compare
        for name, net, path in (("pod", spec.cluster_cidr, pods), ("service", spec.service_cidr, service)):
            if address.version == 4 and address in net:
                run.add("node-in-cluster-range", f"{run.file}: {entry}.address",
                        f"{node.name}'s address {address} lies inside the {name} range {net} ({path})")


def _first_server(run: _Linting) -> None:
    controlplane = run.spec.with_role("controlplane")
    if run.spec.distribution == "rke2" and controlplane and not controlplane[0].has("etcd"):
        first = controlplane[0]
        run.add("rke2-first-server-needs-etcd", f"{run.file}: {run.nodes[run.spec.nodes.index(first)]}.roles",
                f"{first.name} is the first control-plane node, so it starts the cluster, but it has no etcd role",
                f"give {first.name} the etcd role too, or list a host with etcd and controlplane before it")


def _flexvolume(run: _Linting) -> None:
    rook = "storage.ceph is set: Rook" if run.ceph else "Rook"
    mentions = lambda text: "flexvolume" in text.lower() or "kubelet-plugins/volume/exec" in text
    for flag, value in run.spec.kubelet_extra_args:
        if flag == "volume-plugin-dir" or mentions(flag) or mentions(value):
            run.add("flexvolume-flags", f"{run.at('kubelet_extra_args')}.{flag}",
                    f"kubelet flag {flag}={value} is the flexvolume recipe of Rook before 1.8; {rook} 1.8+ is CSI only")
    for i, bind in enumerate(run.binds):
        if mentions(str(bind)):
            run.add("flexvolume-flags", f"{run.file}: services.kubelet.extra_binds[{i}]",
                    f"kubelet bind {bind} mounts the flexvolume plugin folder; {rook} 1.8+ is CSI only")


def _changed(run: _Linting) -> None:
    if run.existing is None:
        return
    for name, label in (("service_cidr", "service range"), ("cluster_cidr", "pod range")):
        now, made = getattr(run.spec, name), getattr(run.existing, name)
        if now != made:
            run.add("cluster-range-changed", run.at(name),
                    f"the {label} is {now} here but the cluster was made with {made}; it cannot change after creation",
                    f"put back {made}, or rebuild the cluster (a new cluster, then move the workloads) to use {now}")


def _leaving(run: _Linting) -> None:
    if run.existing is None:
        return
    gone = [n.name for n in run.existing.nodes if n.name not in {m.name for m in run.spec.nodes}]
    if not gone:
        return
    if run.spec.distribution == "rke1":
        run.add("nodes-leave-undrained", run.at("roles"),
                f"{', '.join(gone)} {'is' if len(gone) == 1 else 'are'} in the cluster but not here: rke up would delete "
                f"{'it' if len(gone) == 1 else 'them'} without a drain")
    else:  # the RKE2 bring-up never removes a node: say where that is done
        run.add("nodes-leave-undrained", run.at("roles"),
                f"{', '.join(gone)} {'is' if len(gone) == 1 else 'are'} in the cluster but not here; this bring-up leaves "
                f"{'it' if len(gone) == 1 else 'them'} as {'it is' if len(gone) == 1 else 'they are'}", severity="warning")


CHECKS = (_end_of_life, _version, _network_plugin, _roles, _etcd, _ranges, _first_server, _flexvolume, _changed, _leaving)


def blocking(findings) -> list[str]:
    """The errors among ``findings``, one line each, as a runbook lists what blocks it."""
    return [f"lint {f.rule}: {f.where}: {f.message}" for f in findings if f.severity == "error"]
