"""``rke`` for the lab: a stand-in for Rancher's RKE1 binary (LAB SIMULATION) that starts real Kubernetes.

It reads ``cluster.yml`` as RKE does and rejects what RKE rejects, reaches every node over SSH with
the user, key and port the file gives, checks RKE's prerequisites on each node (a Docker engine of
a supported version that the SSH user may use; the lab's Docker is a stand-in) and fails like RKE
when one is missing. Then it does what RKE does with containers, with the real binaries the lab
built from their Go modules, run as systemd units: etcd 3.6 on the etcd nodes, kube-apiserver,
kube-controller-manager and kube-scheduler on the control-plane nodes, nginx-proxy on the others,
registers every node with its roles, labels and taints (KWOK inside each VM manages it: no kubelet
runs), and writes ``kube_config_cluster.yml`` and ``cluster.rkestate`` beside ``cluster.yml``. A
later ``rke up`` adds and removes nodes as the file now says; ``--update-only`` touches workers only.
The Kubernetes version is cluster.yml's ``kubernetes_version`` (without RKE's ``-rancher`` suffix);
a version the lab has not built fails as an image RKE cannot pull, with the command that builds it.
A new version on an existing cluster is an upgrade: the control-plane nodes restart with the new
release one at a time (RKE's ``max_unavailable_controlplane: 1``), each waited for, and every Node
reports the new release. No kubelet runs and nothing runs in pods, so the stand-in neither restarts
kubelets nor drains workers (LAB SIMULATION: ``upgrade_strategy`` is accepted, its drain not performed).

    rke up [--config cluster.yml] [--update-only]
    rke remove [--config cluster.yml] [--force]
    rke etcd snapshot-save --name NAME [--config cluster.yml]      # /opt/rke/etcd-snapshots/NAME.zip on every etcd node
    rke etcd snapshot-restore --name NAME [--config cluster.yml]   # NAME without .zip, as RKE takes it
    rke --version
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import yaml

from runbooklib.schema import K8S_ROLES, SSH, Host
from runbooklib.ssh import Fleet

from . import cluster as lab_cluster
from . import etcd as lab_etcd
from . import parts
from .pki import Pki
from .rketools import K8S_DIR

VERSION = "v1.8.0-lab-simulation"  # the rke it stands in for: 1.8, the last RKE1 release line
TOP_LEVEL_KEYS = {
    "nodes", "services", "network", "authentication", "authorization", "ignore_docker_version", "kubernetes_version",
    "private_registries", "ingress", "cluster_name", "ssh_key_path", "ssh_cert_path", "ssh_agent_auth", "bastion_host",
    "upgrade_strategy", "addons", "addons_include", "system_images", "prefix_path", "win_prefix_path", "monitoring",
    "dns", "restore", "rotate_encryption_key", "enable_cri_dockerd", "cloud_provider", "addon_job_timeout",
    "docker_socket",
}
NODE_KEYS = {"address", "port", "internal_address", "role", "hostname_override", "user", "docker_socket",
             "ssh_agent_auth", "ssh_key", "ssh_key_path", "ssh_cert", "ssh_cert_path", "labels", "taints", "node_name"}
ROLES = K8S_ROLES  # the roles RKE knows: the cluster roles of the inventory
PLUGINS = ("canal", "flannel", "calico", "weave", "aci", "none")
DOCKER_SUPPORTED = ("1.13.", "17.03.", "17.06.", "17.09.", "18.06.", "18.09.", "19.03.", "20.10.", "23.0.", "24.0.",
                    "25.0.", "26.0.", "26.1.", "27.")
SNAPSHOT_DIR = "/opt/rke/etcd-snapshots"


class RkeFatal(Exception):
    pass


class Log:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def _line(self, level: str, msg: str) -> None:
        print(f"{level}[{int(time.monotonic() - self.t0):04d}] {msg}", file=sys.stderr, flush=True)

    def info(self, msg: str) -> None:
        self._line("INFO", msg)

    def warn(self, msg: str) -> None:
        self._line("WARN", msg)


# -- cluster.yml --------------------------------------------------------------------------------

def load_cluster(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RkeFatal(f"Failed to resolve cluster file: Can not find cluster configuration file: open {path}: "
                       "no such file or directory") from None
    except yaml.YAMLError as e:
        raise RkeFatal(f"Failed to parse the cluster file: {e}") from None
    if not isinstance(data, dict):
        raise RkeFatal("Failed to parse the cluster file: expected a mapping")
    validate_cluster(data)
    return data


def validate_cluster(c: dict) -> None:
    """RKE's own validation (cluster/validation.go), plus unknown keys, with RKE's wording."""
    unknown = sorted(set(c) - TOP_LEVEL_KEYS)
    if unknown:
        raise RkeFatal(f"Failed to parse the cluster file: unknown key(s) {', '.join(unknown)} in cluster.yml")
    nodes = c.get("nodes") or []
    if not nodes:
        raise RkeFatal("Failed to validate cluster: Cluster must have at least one etcd plane host: please specify one "
                       "or more etcd in cluster config")
    seen = set()
    for i, n in enumerate(nodes):
        bad = sorted(set(n) - NODE_KEYS)
        if bad:
            raise RkeFatal(f"Failed to parse the cluster file: unknown key(s) {', '.join(bad)} for host ({i})")
        if not n.get("address"):
            raise RkeFatal(f"Failed to validate cluster: Address for host ({i}) is not provided")
        try:
            ipaddress.ip_address(str(n["address"]))
        except ValueError:
            raise RkeFatal(f"Failed to validate cluster: Address [{n['address']}] for host ({i}) is not a valid IP "
                           "address (the lab stand-in needs addresses, not names)") from None
        if not n.get("user"):
            raise RkeFatal(f"Failed to validate cluster: User for host ({i}) is not provided")
        if not n.get("role"):
            raise RkeFatal(f"Failed to validate cluster: Role for host ({i}) is not provided")
        for role in n["role"]:
            if role not in ROLES:
                raise RkeFatal(f"Failed to validate cluster: Role [{role}] for host ({i}) is not recognized")
        key = (str(n["address"]), str(n.get("port", "22")))
        if key in seen:
            raise RkeFatal(f"Failed to validate cluster: Cluster can't have duplicate node: {n['address']}")
        seen.add(key)
    for role, word in (("etcd", "etcd"), ("controlplane", "control"), ("worker", "worker")):
        if not any(role in n["role"] for n in nodes):
            raise RkeFatal(f"Failed to validate cluster: Cluster must have at least one {role if role != 'controlplane' else 'control'} "
                           f"plane host: please specify one or more {word} in cluster config")
    plugin = (c.get("network") or {}).get("plugin", "canal")
    if plugin not in PLUGINS:
        raise RkeFatal(f"Failed to validate cluster: Network plugin [{plugin}] is not supported")
    auth = (c.get("authentication") or {}).get("strategy", "x509")
    if "x509" not in str(auth):
        raise RkeFatal(f"Failed to validate cluster: Authentication strategy [{auth}] is not supported")
    services = c.get("services") or {}
    api = (services.get("kube-api") or {}).get("service_cluster_ip_range")
    ctrl = (services.get("kube-controller") or {}).get("service_cluster_ip_range")
    if api and ctrl and api != ctrl:
        raise RkeFatal("Failed to validate cluster: Kube-api and kube-controller service_cluster_ip_range must be the same")


def node_specs(c: dict) -> list[lab_cluster.NodeSpec]:
    out = []
    for n in c["nodes"]:
        name = n.get("hostname_override") or str(n["address"])
        taints = [{"key": t["key"], "value": t.get("value", ""), "effect": t.get("effect", "NoSchedule")}
                  for t in n.get("taints") or []]
        out.append(lab_cluster.NodeSpec(name, str(n["address"]), list(n["role"]), n.get("user", "root"),
                                        int(n.get("port", 22)), {str(k): str(v) for k, v in (n.get("labels") or {}).items()},
                                        taints))
    return out


def k8s_version(c: dict) -> str:
    v = str(c.get("kubernetes_version") or parts.default_version("kubernetes"))
    return v.split("-rancher")[0] if v.startswith("v") else "v" + v.split("-rancher")[0]


def cluster_spec(c: dict, nodes: list[lab_cluster.NodeSpec]) -> lab_cluster.ClusterSpec:
    """Versions (each checked to be built: else RKE's image pull failure) and ranges from cluster.yml."""
    services = c.get("services") or {}
    version = k8s_version(c)
    try:
        versions = {name: parts.require(name, version if name == "kubernetes" else None) for name in ("kubernetes", "etcd", "kwok")}
    except parts.PartMissing as e:
        raise RkeFatal(f"Failed to pull the images of Kubernetes {version}: {e}") from None
    extra = {name: {str(k): str(v) for k, v in ((services.get(name) or {}).get("extra_args") or {}).items()}
             for name in ("etcd", "kube-api", "kube-controller", "scheduler")}
    return lab_cluster.ClusterSpec(
        name=str(c.get("cluster_name") or "local"), kubernetes=versions["kubernetes"], etcd=versions["etcd"],
        kwok=versions["kwok"],
        service_range=str((services.get("kube-api") or {}).get("service_cluster_ip_range") or "10.43.0.0/16"),
        cluster_cidr=str((services.get("kube-controller") or {}).get("cluster_cidr") or "10.42.0.0/16"),
        nodes=nodes, extra_args=extra)


def make_fleet(c: dict, config_dir: Path, nodes: list[lab_cluster.NodeSpec]) -> Fleet:
    """SSH to the nodes exactly as cluster.yml says (user, port, key), host keys pinned by the lab."""
    key = None
    for n in c["nodes"]:
        key = key or n.get("ssh_key_path")
    key = key or c.get("ssh_key_path") or "~/.ssh/id_rsa"
    key_path = Path(os.path.expanduser(str(key)))
    key_path = key_path if key_path.is_absolute() else config_dir / key_path
    known = os.environ.get("RKE_LAB_KNOWN_HOSTS") or str(lab_known_hosts(config_dir))
    hosts = [Host(name=_host_name(n.name), address=n.address, ssh_port=n.port, user=n.user, roles=["worker"],
                  location={"country": "RU"}) for n in nodes]
    ssh = SSH(key=f"file:{key_path}", known_hosts=known, connect_timeout=5, command_timeout=60)
    return Fleet(hosts, ssh, config_dir, progress=None)


def lab_known_hosts(config_dir: Path) -> Path:
    """The lab's pinned host keys: the lab folder holding cluster.yml (or a parent of it), else $RUNBOOK_LAB_DIR's."""
    for d in (config_dir, *config_dir.parents):
        if (d / "ssh" / "known_hosts").exists() and (d / "lab.json").exists():
            return d / "ssh" / "known_hosts"
    return Path(os.environ.get("RUNBOOK_LAB_DIR") or Path(__file__).resolve().parents[2] / ".lab") / "ssh" / "known_hosts"


def _host_name(name: str) -> str:
    return name.replace(".", "-").lower()


# -- state --------------------------------------------------------------------------------------

def load_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def pki_from_state(state: dict, root: Path) -> Pki:
    pki = Pki(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, b64 in state.get("certificatesBundle", {}).items():
        (root / name).write_bytes(base64.b64decode(b64))
        if name.endswith("-key.pem"):
            (root / name).chmod(0o600)
    return pki


def save_state(path: Path, c: dict, nodes: list[lab_cluster.NodeSpec], pki: Pki) -> None:
    bundle = {p.name: base64.b64encode(p.read_bytes()).decode() for p in sorted(pki.root.glob("*.pem"))}
    state = {"simulation": "runbooklib lab rke stand-in: this is not Rancher's cluster.rkestate",
             "desiredState": {"rkeConfig": c}, "currentState": {
                 "rkeConfig": c, "nodes": [n.__dict__ for n in nodes]}, "certificatesBundle": bundle}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.chmod(0o600)
    os.replace(tmp, path)


# -- commands -----------------------------------------------------------------------------------

def check_prerequisites(fleet: Fleet, c: dict, nodes: list[lab_cluster.NodeSpec], log: Log) -> None:
    hosts = {h.name: h for h in fleet.hosts}
    results = fleet.run("docker version --format '{{.Server.Version}}'", hosts=list(hosts.values()), desc="docker")
    for n in nodes:
        r = results[_host_name(n.name)]
        log.info(f"[dialer] Setup tunnel for host [{n.address}]")
        if r.exit_code is None:
            raise RkeFatal(f"Failed to set up SSH tunneling for host [{n.address}]: {r.error}")
        if not r.ok:
            raise RkeFatal(f"Failed to set up SSH tunneling for host [{n.address}]: Can't retrieve Docker Info: "
                           f"{(r.stderr.strip() or 'Cannot connect to the Docker daemon').splitlines()[-1]}")
        version = r.stdout.strip()
        if not c.get("ignore_docker_version") and not version.startswith(DOCKER_SUPPORTED):
            raise RkeFatal(f"Unsupported Docker version found [{version}] on host [{n.address}], supported versions are "
                           f"[{' '.join(v + 'x' for v in DOCKER_SUPPORTED)}]")


def _each(fleet: Fleet, hosts: dict, nodes: list[lab_cluster.NodeSpec], fn) -> dict[str, object]:
    """``fn(node, host)`` on many nodes at once; the first failure is raised once all are done."""
    by_host = {hosts[n.name].name: n for n in nodes}

    def one(h):
        try:
            return fn(by_host[h.name], h)
        except Exception as e:  # noqa: BLE001 - reported below, with the node's name
            return e

    results = fleet.each(one, hosts=[hosts[n.name] for n in nodes], desc="nodes")
    for name, value in results.items():
        if isinstance(value, Exception):
            raise RkeFatal(f"[{by_host[name].name}] {type(value).__name__}: {value}")
    return results


def cmd_up(args, log: Log) -> None:
    config = Path(args.config).resolve()
    c = load_cluster(config)
    nodes = node_specs(c)
    spec = cluster_spec(c, nodes)
    state_path = config.with_name("cluster.rkestate")
    kube_path = config.with_name("kube_config_cluster.yml")
    state = load_state(state_path)
    log.info(f"Running RKE version: {VERSION}")
    log.info("Initiating Kubernetes cluster" if state is None else "Updating Kubernetes cluster")
    log.info(f"Kubernetes {spec.kubernetes}, etcd {spec.etcd} (real, built by runbooklab/kbin); nodes managed by "
             f"KWOK {spec.kwok} (LAB SIMULATION: no kubelet)")
    if args.update_only and state is None:
        raise RkeFatal("--update-only needs an existing cluster: cluster.rkestate not found beside cluster.yml")
    etcd_nodes = spec.with_role("etcd")
    cp_nodes = spec.with_role("controlplane")
    with tempfile.TemporaryDirectory(prefix="rke-lab-pki-") as tmp:
        fleet = make_fleet(c, config.parent, nodes)
        hosts = {n.name: h for n, h in zip(nodes, fleet.hosts)}
        try:
            check_prerequisites(fleet, c, nodes, log)
            if state is None:
                holding = lab_etcd.holds_data(fleet, hosts, spec)
                if holding:
                    raise RkeFatal(f"etcd already holds a cluster on {', '.join(holding)} but cluster.rkestate is missing: "
                                   "the state file is required for every later run. Restore it from your backup; do not "
                                   "run rke up without it")
                pki = Pki(Path(tmp))
                log.info("[certificates] Generating CA kubernetes certificates")
            else:
                pki = pki_from_state(state, Path(tmp))
                before = sorted(n["name"] for n in state["currentState"]["nodes"] if "etcd" in n["roles"])
                if before != sorted(n.name for n in etcd_nodes):
                    raise RkeFatal(f"etcd membership would change from [{', '.join(before)}] to "
                                   f"[{', '.join(n.name for n in etcd_nodes)}]: the lab stand-in does not add or remove "
                                   "etcd members; keep the etcd nodes as they are, or rke remove and rke up again")
                if args.update_only:
                    previous = {n["name"]: n for n in state["currentState"]["nodes"]}
                    changed = [n.name for n in nodes if "worker" not in n.roles and previous.get(n.name, {}).get("roles") != n.roles]
                    if changed:
                        log.warn(f"--update-only: ignoring changes to non-worker nodes {', '.join(changed)}")
            lab_cluster.issue_certificates(pki, spec)
            save_state(state_path, c, nodes, pki)
            log.info(f"Successfully Deployed state file at [{state_path}]")
            touched = [n for n in nodes if not args.update_only or "worker" in n.roles]
            plans = _each(fleet, hosts, touched, lambda n, h: lab_cluster.prepare_node(fleet, h, pki, spec, n))
            log.info("[certificates] Deployed certificates and configuration to the nodes")
            servers = [f"https://{n.address}:{lab_cluster.API_PORT}" for n in cp_nodes]
            api = lab_cluster.ApiClient(servers, pki)

            def own_api(n):  # RKE's healthcheck of a node's kube-apiserver, before its controller manager starts
                return lambda: lab_cluster.wait_ready(lab_cluster.ApiClient([f"https://{n.address}:{lab_cluster.API_PORT}"], pki))
            if not args.update_only:
                log.info("[etcd] Building up etcd plane..")
                _each(fleet, hosts, etcd_nodes, lambda n, h: lab_cluster.start_units(fleet, h, n, plans[h.name], "etcd"))
                lab_etcd.wait_healthy(fleet, hosts, spec)
                log.info("[etcd] Successfully started etcd plane.. Checking etcd cluster health")
                log.info("[controlplane] Building up Controller Plane..")
                if state is None:
                    _each(fleet, hosts, cp_nodes, lambda n, h: lab_cluster.start_units(fleet, h, n, plans[h.name], "controlplane", own_api(n)))
                else:  # an update (an upgrade among them): one control-plane node at a time, as max_unavailable_controlplane 1
                    before = k8s_version(state["currentState"]["rkeConfig"])
                    if before != spec.kubernetes:
                        log.info(f"[controlplane] Upgrading the control plane from {before} to {spec.kubernetes}, one node at a time")
                    for n in cp_nodes:
                        for done in _each(fleet, hosts, [n], lambda n, h: lab_cluster.start_units(fleet, h, n, plans[h.name],
                                                                                                   "controlplane", own_api(n))).values():
                            if done:
                                log.info(f"[controlplane] {n.name}: {', '.join(done)}")
                        lab_cluster.wait_ready(lab_cluster.ApiClient([f"https://{n.address}:{lab_cluster.API_PORT}"], pki))
            lab_cluster.wait_ready(api)
            lab_cluster.ensure_namespaces(api)
            lab_cluster.ensure_kwok_role(api)
            log.info("[controlplane] Successfully started Controller Plane..")
            log.info("[worker] Building up Worker Plane..")
            wanted = {n.name for n in nodes}
            code, existing = api.request("GET", "/api/v1/nodes")
            for old in existing.get("items", []):
                name = old["metadata"]["name"]
                if name not in wanted:
                    addr = next((a["address"] for a in old.get("status", {}).get("addresses", [])
                                 if a.get("type") == "InternalIP"), None)
                    log.info(f"[remove/{name}] Removing node from cluster")
                    lab_cluster.remove_node(api, name)
                    _stop_on_removed(fleet, addr, log)
            for n in touched:
                if lab_cluster.register_node(api, n, spec):
                    log.info(f"[worker] Added node [{n.name}] ({', '.join(n.roles)})")
            _each(fleet, hosts, touched, lambda n, h: lab_cluster.start_units(fleet, h, n, plans[h.name], "worker"))
            kubelet = (c.get("services") or {}).get("kubelet") or {}
            for added in lab_cluster.ensure_addons(api, spec, str(kubelet.get("cluster_dns_server") or "10.43.0.10"),
                                                   str(kubelet.get("cluster_domain") or "cluster.local")):
                log.info(f"[addons] Created {added} (CoreDNS add-on; its pods run nothing: lab simulation)")
            kube_path.write_text(f"# kubeconfig of the lab cluster {spec.name}: Kubernetes {spec.kubernetes} (real), nodes "
                                 "simulated by KWOK (written by the runbooklib lab's rke stand-in)\n"
                                 + lab_cluster.kubeconfig(pki, spec.name, servers[0]))
            kube_path.chmod(0o600)
            log.info(f"Wrote kubeconfig file [{kube_path}]")
            log.info("Finished building Kubernetes cluster successfully")
        finally:
            fleet.close()


def _stop_on_removed(fleet: Fleet, address: str | None, log: Log) -> None:
    """A removed node: stop what the cluster ran there, if the node still answers (it may be gone)."""
    if not address:
        return
    host = Host(name="removed-node", address=address, roles=["worker"], location={"country": "RU"},
                user=fleet.hosts[0].user, ssh_port=fleet.hosts[0].ssh_port)
    r = fleet.run_on(host, lab_cluster.stop_command())
    if not r.ok:
        log.warn(f"[remove] could not clean up {address}: {r.error}")


def cmd_remove(args, log: Log) -> None:
    config = Path(args.config).resolve()
    c = load_cluster(config)
    nodes = node_specs(c)
    if not args.force:
        raise RkeFatal("rke remove deletes the cluster and its etcd data on every node; re-run with --force to confirm")
    fleet = make_fleet(c, config.parent, nodes)
    try:
        for h in fleet.hosts:
            fleet.run_on(h, lab_cluster.stop_command(wipe=True)).check()
            log.info(f"[remove] Cleaned host [{h.address}]")
    finally:
        fleet.close()
    for name in ("kube_config_cluster.yml", "cluster.rkestate"):
        config.with_name(name).unlink(missing_ok=True)
    log.info("Cluster removed successfully")


def rketools(action: str, name: str) -> str:
    """rke-tools' etcd-backup step inside a VM (:mod:`.rketools`), with the lab's Python and this project."""
    project = Path(__file__).resolve().parents[2]
    return (f"PYTHONPATH={shlex.quote(str(project))} {shlex.quote(sys.executable)} -m runbooklab.kubernetes.rketools {action} "
            f"--name {shlex.quote(name)}")


def cmd_etcd(args, log: Log) -> None:
    """``snapshot-save`` and ``snapshot-restore`` as RKE 1.x does them with rke-tools (rancher/rke cmd/etcd.go, cluster/etcd.go).

    save: the local state file goes to every etcd node as ``/etc/kubernetes/N.rkestate``; each node takes its
    own snapshot and zips both into ``/opt/rke/etcd-snapshots/N.zip`` (0600). restore: the state file is read
    back out of the snapshot; the first etcd node holding ``N.zip`` is the source, unzipped and copied to the
    other etcd nodes (checksums compared); the cluster is stopped, every member rebuilt from it with etcdutl,
    and everything started again (RKE removes and rebuilds the cluster: ``rke remove``, then ``rke up``).
    """
    config = Path(args.config).resolve()
    c = load_cluster(config)
    nodes = node_specs(c)
    spec = cluster_spec(c, nodes)
    members = spec.with_role("etcd")
    fleet = make_fleet(c, config.parent, nodes)
    hosts = {n.name: h for n, h in zip(nodes, fleet.hosts)}
    name = args.name
    try:
        if args.etcd_command == "snapshot-save":
            _snapshot_save(fleet, hosts, spec, members, config, name, log)
        else:
            if name.endswith(".zip"):
                log.warn(f"The snapshot name [{name}] ends with the file extension (.zip) which is not needed, the snapshot name "
                         "should be provided without the extension")
            _snapshot_restore(fleet, hosts, spec, nodes, members, config, name, log)
    finally:
        fleet.close()


def _snapshot_save(fleet, hosts, spec, members, config: Path, name: str, log: Log) -> None:
    state_path = config.with_name("cluster.rkestate")
    log.info("Starting saving snapshot on etcd hosts")
    state = f"{K8S_DIR}/{name}.rkestate"
    if state_path.exists():
        for n in members:
            log.info(f"[state] Deploying state file to [{state}] on host [{n.address}]")
            fleet.put(hosts[n.name], state_path, state, 0o400)
    else:
        log.warn(f"Could not read cluster state file from [{state_path}], file does not exist. Snapshot will be created without "
                 "cluster state file")
    failures = []
    for n in members:
        log.info(f"[etcd] Running snapshot save once on host [{n.address}]")
        try:
            lab_etcd.snapshot_save(fleet, hosts[n.name], spec, n, f"{SNAPSHOT_DIR}/{name}")
            fleet.run_on(hosts[n.name], rketools("compress", name)).check()
        except Exception as e:  # noqa: BLE001 - RKE goes on with the other hosts, as here
            failures.append(f"failed to take one-time snapshot on host [{n.address}]: {e}")
            log.warn(failures[-1])
    if len(failures) == len(members):
        raise RkeFatal(f"[etcd] Failed to take snapshot on all etcd hosts: {failures[0]}")
    log.info(f"[etcd] Finished saving snapshot [{name}] on all etcd hosts")
    log.info(f"Finished saving/uploading snapshot [{name}] on all etcd hosts")


def _snapshot_restore(fleet, hosts, spec, nodes, members, config: Path, name: str, log: Log) -> None:
    zipped, plain = f"{SNAPSHOT_DIR}/{name}.zip", f"{SNAPSHOT_DIR}/{name}"
    log.info(f"Checking if state file is included in snapshot file for [{name}]")
    source = next((n for n in members if fleet.run_on(hosts[n.name], f"test -f {shlex.quote(zipped)}").ok), None)
    if source is None:
        raise RkeFatal(f"failed to start backup server on all etcd nodes: snapshot [{name}] not found in {SNAPSHOT_DIR} on any "
                       "etcd host")
    r = fleet.run_on(hosts[source.name], rketools("statefile", name))
    if r.ok:
        log.info(f"State file is successfully extracted from snapshot [{name}]")
        _keep_snapshot_state(config.with_name("cluster.rkestate"), r.stdout, log)
    else:
        log.info(f"Could not extract state file from snapshot [{name}] on any host, falling back to local state file")
    log.info(f"Restoring etcd snapshot {name}")
    fleet.run_on(hosts[source.name], rketools("decompress", name)).check()
    with tempfile.TemporaryDirectory() as tmp:  # the others download it from the source, as from RKE's backup server
        local = Path(tmp) / name
        fleet.connection(hosts[source.name]).get(plain, str(local))
        for n in members:
            if n is not source:
                fleet.run_on(hosts[n.name], f"mkdir -p {SNAPSHOT_DIR}").check()
                fleet.put(hosts[n.name], local, plain, 0o600)
    sums = {n.name: fleet.run_on(hosts[n.name], f"sha256sum {shlex.quote(plain)}").check().stdout.split()[0] for n in members}
    if len(set(sums.values())) != 1:
        raise RkeFatal(f"etcd snapshots are not consistent: {sums}")
    log.info("Cleaning old kubernetes cluster")
    running = _each(fleet, hosts, nodes, lambda n, h: _stop_units(fleet, h))
    for n in members:
        fleet.run_on(hosts[n.name], lab_etcd.restore_command(spec, n, plain)).check()
        log.info(f"[etcd] Restored snapshot [{name}] on host [{n.address}]")
    for n in members:
        fleet.run_on(hosts[n.name], "systemctl start rke-etcd").check()
    lab_etcd.wait_healthy(fleet, hosts, spec)
    log.info("[etcd] Successfully started etcd plane.. Checking etcd cluster health")
    for plane in ("controlplane", "worker"):
        units = lab_cluster.PLANES[plane]
        _each(fleet, hosts, nodes, lambda n, h, units=units: [fleet.run_on(h, f"systemctl start {u}").check()
                                                              for u in units if u in running[h.name]])
    for n in members:
        fleet.run_on(hosts[n.name], f"rm -f {shlex.quote(plain)}")  # the unzipped copy; N.zip stays
    log.info(f"Finished restoring snapshot [{name}] on all etcd hosts")


def _stop_units(fleet, host) -> list[str]:
    """Stop every unit rke started on the node (RKE removes the containers); the ones that ran, to start again."""
    r = fleet.run_on(host, "; ".join(f"systemctl is-active -q {u} && echo {u}" for u in lab_cluster.UNITS) + "; true").check()
    running = r.stdout.split()
    for u in lab_cluster.UNITS:
        if u in running:
            fleet.run_on(host, f"systemctl stop {u}").check()
    return running


def _keep_snapshot_state(path: Path, text: str, log: Log) -> None:
    """The snapshot's state file is the one a restore uses (RKE); the lab's differs from the local one only if certificates did."""
    try:
        theirs = json.loads(text)
    except ValueError:
        log.warn("the state file in the snapshot is not readable; using the local state file")
        return
    ours = load_state(path)
    if ours is None or ours.get("certificatesBundle") != theirs.get("certificatesBundle"):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(theirs, indent=2))
        tmp.chmod(0o600)
        os.replace(tmp, path)
        log.info(f"Successfully Deployed state file at [{path}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rke", description="rke stand-in for the runbooklib lab (LAB SIMULATION)")
    parser.add_argument("--version", action="store_true")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("up")
    p.add_argument("--config", default="cluster.yml")
    p.add_argument("--update-only", action="store_true")
    p = sub.add_parser("remove")
    p.add_argument("--config", default="cluster.yml")
    p.add_argument("--force", action="store_true")
    p = sub.add_parser("etcd")
    etcd = p.add_subparsers(dest="etcd_command", required=True)
    for name in ("snapshot-save", "snapshot-restore"):
        q = etcd.add_parser(name)
        q.add_argument("--config", default="cluster.yml")
        q.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    if args.version:
        print(f"rke version {VERSION} (runbooklib lab stand-in, not Rancher's rke; it starts Kubernetes "
              f"{parts.default_version('kubernetes')} and etcd {parts.default_version('etcd')} built from their modules)")
        return 0
    if not args.command:
        parser.print_help()
        return 1
    log = Log()
    log.warn("This is the runbooklib LAB SIMULATION of rke: real Kubernetes and etcd on lab VMs, nodes simulated by KWOK")
    try:
        {"up": cmd_up, "remove": cmd_remove, "etcd": cmd_etcd}[args.command](args, log)
        return 0
    except RkeFatal as e:
        print(f"FATA[{int(time.monotonic() - log.t0):04d}] {e}", file=sys.stderr)
        return 1
    except Exception as e:  # SSH, etcd, API errors: RKE's FATA line with the cause
        print(f"FATA[{int(time.monotonic() - log.t0):04d}] {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
