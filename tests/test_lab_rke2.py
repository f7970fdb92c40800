"""RKE2 in the lab: the air-gapped install a runbook does, over SSH, with the lab's RKE2 artifact.

The install is driven as on production Debian VMs (``runbooklib.ssh.Fleet`` from the lab's parameter
file): copy the artifact folder, ``INSTALL_RKE2_ARTIFACT_PATH=... sh install.sh``, write
``/etc/rancher/rke2/config.yaml``, enable ``rke2-server`` on the first server, read its token, write
it to ``/etc/rancher/rke2/join-token`` on the others, enable the other servers one by one, then the
agent, fetch ``/etc/rancher/rke2/rke2.yaml``. The cluster is real (etcd, the API server, the
controllers, started by the lab's rke2 stand-in); the nodes are managed by KWOK (LAB SIMULATION).
The small lab's four VMs are three servers (cp1 first, db1, edge1) and one agent (w1).
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from conftest import require_lab, running_lab, wait_for
from runbooklab.kubernetes import parts
from runbooklab.kubernetes.rke2 import artifact, join

KUBECTL = str(parts.host_path("kubernetes", "kubectl"))
require_lab(KUBECTL, str(parts.host_path("kubernetes", "kube-apiserver")), str(parts.host_path("etcd", "etcd")),
            str(parts.host_path("kwok", "kwok")))
VERSION = parts.default_version("kubernetes")
ART = "/root/rke2-artifacts"
FIRST, JOINING, AGENT = "cp1", ("db1", "edge1"), "w1"
SERVERS = (FIRST, *JOINING)
TOKEN_FILE = "/etc/rancher/rke2/join-token"
NODE_TOKEN = "/var/lib/rancher/rke2/server/node-token"
SERVICE_LOG = "/var/log/lab-systemd/{unit}.service.log"  # the lab's service manager keeps each unit's output here
ETCDCTL = ("ETCDCTL_ENDPOINTS=https://127.0.0.1:2379 ETCDCTL_CACERT=/var/lib/rancher/rke2/server/tls/etcd/server-ca.crt "
           "ETCDCTL_CERT=/var/lib/rancher/rke2/server/tls/etcd/server-client.crt "
           f"ETCDCTL_KEY=/var/lib/rancher/rke2/server/tls/etcd/server-client.key {parts.vm_path('etcd', 'etcdctl')}")


@dataclass
class Site:
    """The lab as a runbook sees it: its parameters, an SSH fleet, and what the install observed."""

    lab: object
    params: object
    fleet: object
    seen: dict = field(default_factory=dict)

    def host(self, name: str):
        return next(h for h in self.params.hosts if h.name == name)

    def address(self, name: str) -> str:
        return str(self.host(name).address)

    def sh(self, name: str, command: str, check: bool = True):
        r = self.fleet.run_on(self.host(name), command)
        if check:
            assert r.ok, f"{name}: {command}: {r.exit_code} {r.stderr[-1500:]} {r.error}"
        return r

    def write(self, name: str, path: str, data: str, mode: int = 0o600) -> None:
        """Over SFTP, as the runbook writes configs and the token (a temporary file renamed into place)."""
        self.sh(name, f"mkdir -p {os.path.dirname(path)}")
        sftp = self.fleet.connection(self.host(name)).sftp()
        with sftp.open(path + ".tmp", "wb") as f:
            f.write(data.encode())
        sftp.chmod(path + ".tmp", mode)
        sftp.posix_rename(path + ".tmp", path)

    def copy_artifacts(self, name: str, folder: Path, remote: str = ART) -> None:
        self.sh(name, f"mkdir -p {remote} && chmod 700 {remote}")
        for f in (artifact.TARBALL, artifact.SUMS, artifact.INSTALLER):
            self.fleet.put(self.host(name), folder / f, f"{remote}/{f}", 0o600)

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([KUBECTL, *args], capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, KUBECONFIG=str(self.seen["kubeconfig"])))
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def node_states(self) -> dict[str, str]:
        done = self.kubectl("get", "nodes", "--no-headers", check=False)
        return {line.split()[0]: line.split()[1] for line in done.stdout.splitlines() if line.strip()} if done.returncode == 0 else {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("rke2lab"), "rbrk2", "10.86.0.0/24", profile="small") as lab:
        yield lab


@pytest.fixture(scope="module")
def site(lab):
    from runbooklib.params import load_params
    from runbooklib.ssh import Fleet

    params = load_params(lab.params_file)
    fleet = Fleet.from_params(params, progress=None)
    try:
        yield Site(lab, params, fleet)
    finally:
        fleet.close()


def config(site: Site, name: str) -> str:
    """/etc/rancher/rke2/config.yaml of a node, with RKE2's keys, from the lab's parameters."""
    k = site.params.kubernetes
    data: dict = {} if name == FIRST else {"server": f"https://{site.address(FIRST)}:9345", "token-file": TOKEN_FILE}
    data |= {"node-name": name, "node-ip": site.address(name)}
    if name == AGENT:
        return yaml.safe_dump(data | {"node-label": ["tier=web"], "node-taint": ["dedicated=web:PreferNoSchedule"]}, sort_keys=False)
    data |= {"node-label": ["runbook.example/server=true"], "node-taint": ["CriticalAddonsOnly=true:NoExecute"],
             "tls-san": [site.address(s) for s in SERVERS] + ["k8s.lab.internal"], "cni": k.network_plugin,
             "cluster-cidr": str(k.cluster_cidr), "service-cidr": str(k.service_cidr), "cluster-dns": str(k.cluster_dns),
             "cluster-domain": k.cluster_domain, "etcd-snapshot-schedule-cron": f"0 */{k.etcd_snapshot_interval_hours} * * *",
             "etcd-snapshot-retention": k.etcd_snapshot_retention}
    return yaml.safe_dump(data, sort_keys=False)


def install(site: Site, names) -> None:
    """Copy the artifacts and run install.sh on each node (servers as servers, the agent as an agent)."""
    folder = site.lab.root / artifact.FOLDER

    def one(host):
        site.copy_artifacts(host.name, folder)
        kind = " INSTALL_RKE2_TYPE=agent" if host.name == AGENT else ""
        return site.fleet.run_on(host, f"INSTALL_RKE2_ARTIFACT_PATH={ART}{kind} sh {ART}/install.sh")

    results = site.fleet.each(one, hosts=[site.host(n) for n in names], desc="install")
    for name, r in results.items():
        assert r.ok, f"{name}: install.sh: {r.stdout[-500:]} {r.stderr[-1000:]}"
        assert "LAB SIMULATION" in r.stdout and "unpacking tarball file to /usr/local" in r.stdout


def ready(site: Site, names) -> bool:
    states = site.node_states()
    return all(states.get(n) == "Ready" for n in names)


def enable(site: Site, name: str) -> None:
    unit = "rke2-agent" if name == AGENT else "rke2-server"
    site.sh(name, f"systemctl enable --now {unit}")


def bring_up(site: Site) -> None:
    """The whole install in RKE2's order, as the runbook does it; what it saw goes to ``site.seen``."""
    t0 = time.monotonic()
    install(site, (*SERVERS, AGENT))
    for name in (*SERVERS, AGENT):
        site.write(name, "/etc/rancher/rke2/config.yaml", config(site, name))
    enable(site, FIRST)
    wait_for(lambda: site.sh(FIRST, f"test -s {NODE_TOKEN} && test -s /etc/rancher/rke2/rke2.yaml", check=False).ok, 120,
             f"{FIRST}'s node-token and rke2.yaml")
    site.seen["first_server_s"] = time.monotonic() - t0
    token = site.sh(FIRST, f"cat {NODE_TOKEN}").stdout.strip()
    site.seen["token"] = token
    fetch_kubeconfig(site)
    wait_for(lambda: ready(site, [FIRST]), 60, f"{FIRST} Ready")
    # a wrong token (this cluster's CA hash, another secret) first: the joining server is refused
    site.write(JOINING[0], TOKEN_FILE, token.rsplit(":", 1)[0] + ":not-this-clusters-secret\n")
    site.sh(JOINING[0], "systemctl enable --now rke2-server", check=False)  # the service starts, then rke2 stops: refused
    log = SERVICE_LOG.format(unit="rke2-server")
    site.seen["refused_log"] = wait_for(lambda: site.sh(JOINING[0], f"grep -h 'level=fatal.*401 Unauthorized' {log}", check=False).stdout, 30,
                                        "the refusal in the joining server's log")

    def not_active() -> str | None:
        state = site.sh(JOINING[0], "systemctl is-active rke2-server", check=False).stdout.strip()
        return state if state not in ("active", "") else None

    site.seen["refused_state"] = wait_for(not_active, 20, "the refused server's unit not active", every=0.2)
    site.seen["members_when_refused"] = len(json.loads(site.sh(FIRST, f"{ETCDCTL} member list -w json").stdout)["members"])
    site.seen["nodes_when_refused"] = sorted(site.node_states())
    # the right token; the servers one by one, each waited for, then the agent
    for name in (*JOINING, AGENT):
        site.write(name, TOKEN_FILE, token + "\n")
    site.sh(JOINING[0], "systemctl restart rke2-server")
    wait_for(lambda: ready(site, [JOINING[0]]), 120, f"{JOINING[0]} Ready")
    for name in JOINING[1:]:
        enable(site, name)
        wait_for(lambda: ready(site, [name]), 120, f"{name} Ready")
    site.seen["servers_s"] = time.monotonic() - t0
    enable(site, AGENT)
    wait_for(lambda: ready(site, [AGENT]), 90, f"{AGENT} Ready")
    site.seen["all_s"] = time.monotonic() - t0


def fetch_kubeconfig(site: Site) -> None:
    """rke2.yaml from the first server, its server rewritten from 127.0.0.1 to the first server's address."""
    sftp = site.fleet.connection(site.host(FIRST)).sftp()
    site.seen["kubeconfig_mode"] = sftp.stat("/etc/rancher/rke2/rke2.yaml").st_mode & 0o777
    with sftp.open("/etc/rancher/rke2/rke2.yaml", "rb") as f:
        data = yaml.safe_load(f.read())
    site.seen["kubeconfig_server"] = data["clusters"][0]["cluster"]["server"]
    data["clusters"][0]["cluster"]["server"] = f"https://{site.address(FIRST)}:6443"
    path = site.lab.root / "rke2.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    path.chmod(0o600)
    site.seen["kubeconfig"] = path


@pytest.fixture(scope="module")
def cluster(site):
    bring_up(site)
    return site


def test_install_refuses_a_tampered_tarball(site):
    """Checked against the checksum file before anything is unpacked; a clear message and a non-zero exit."""
    bad = site.lab.root / "tampered"
    bad.mkdir(exist_ok=True)
    good = site.lab.root / artifact.FOLDER
    for name in (artifact.SUMS, artifact.INSTALLER):
        (bad / name).write_bytes((good / name).read_bytes())
    data = bytearray((good / artifact.TARBALL).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / artifact.TARBALL).write_bytes(bytes(data))
    site.copy_artifacts(AGENT, bad, "/root/rke2-tampered")
    r = site.sh(AGENT, "INSTALL_RKE2_ARTIFACT_PATH=/root/rke2-tampered INSTALL_RKE2_TAR_PREFIX=/opt/rke2-tampered "
                       "INSTALL_RKE2_TYPE=agent sh /root/rke2-tampered/install.sh", check=False)
    assert r.exit_code == 1
    assert "[ERROR]  download sha256 does not match" in r.stderr and "nothing was installed" in r.stderr
    assert "LAB SIMULATION" in r.stdout
    assert site.sh(AGENT, "test -e /opt/rke2-tampered/bin/rke2", check=False).exit_code == 1
    missing = site.sh(AGENT, "sh /root/rke2-tampered/install.sh", check=False)  # no artifact path: it downloads nothing
    assert missing.exit_code == 1 and "INSTALL_RKE2_ARTIFACT_PATH is not set" in missing.stderr


def test_every_node_ready_with_rke2s_roles_labels_and_taints(cluster):
    print(f"\nfirst server up in {cluster.seen['first_server_s']:.0f} s, three servers in {cluster.seen['servers_s']:.0f} s, "
          f"all four nodes Ready in {cluster.seen['all_s']:.0f} s")
    wide = cluster.kubectl("get", "nodes", "-o", "wide").stdout
    rows = {line.split()[0]: line.split() for line in wide.splitlines()[1:]}
    assert sorted(rows) == sorted((*SERVERS, AGENT)) and {r[1] for r in rows.values()} == {"Ready"}
    assert all(rows[s][2] == "control-plane,etcd,master" for s in SERVERS) and rows[AGENT][2] == "<none>"
    assert rows[AGENT][5] == cluster.address(AGENT)  # INTERNAL-IP: node-ip
    nodes = {n["metadata"]["name"]: n for n in json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]}
    agent = nodes[AGENT]
    assert agent["metadata"]["labels"]["tier"] == "web" and "node-role.kubernetes.io/worker" not in agent["metadata"]["labels"]
    assert agent["spec"]["taints"] == [{"key": "dedicated", "value": "web", "effect": "PreferNoSchedule"}]
    assert {"key": "CriticalAddonsOnly", "value": "true", "effect": "NoExecute"} in nodes[FIRST]["spec"]["taints"]
    for n in nodes.values():  # simulated, and saying so
        assert n["metadata"]["labels"]["runbook.lab/simulated"] == "true"
        assert "no kubelet" in n["metadata"]["annotations"]["runbook.lab/simulation"]
        assert cluster.seen["token"].split("::")[1] not in json.dumps(n)
    # the kubeconfig as RKE2 writes it: for the local API, readable by root only
    assert cluster.seen["kubeconfig_server"] == "https://127.0.0.1:6443" and cluster.seen["kubeconfig_mode"] == 0o600
    assert cluster.seen["token"].startswith("K10") and "::server:" in cluster.seen["token"]


def test_the_api_is_the_real_release_and_rke2_says_it_is_the_labs(cluster):
    from kubernetes import client, config

    api = config.new_client_from_config(str(cluster.seen["kubeconfig"]))
    assert client.VersionApi(api).get_code().git_version == VERSION
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["clientVersion"]["gitVersion"] == versions["serverVersion"]["gitVersion"] == VERSION
    said = cluster.sh(FIRST, "rke2 --version").stdout
    assert said.startswith(f"rke2 version {VERSION}+rke2r1 (lab simulation") and "kube-apiserver" in said
    assert "LAB SIMULATION" in cluster.sh(FIRST, "systemctl status rke2-server", check=False).stdout
    # the certificate of every API server carries the tls-san names
    der = ssl.get_server_certificate((cluster.address(JOINING[1]), 6443))
    from cryptography import x509

    names = x509.load_pem_x509_certificate(der.encode()).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "k8s.lab.internal" in names.get_values_for_type(x509.DNSName)
    assert cluster.sh(AGENT, "/var/lib/rancher/rke2/bin/kubectl --kubeconfig /var/lib/rancher/rke2/agent/kubelet.kubeconfig "
                             f"get node {AGENT} -o name").stdout.strip() == f"node/{AGENT}"


def test_etcd_is_healthy_with_three_members_through_rke2s_certificates(cluster):
    health = json.loads(cluster.sh(JOINING[1], f"{ETCDCTL} endpoint health --cluster -w json").stdout)
    assert len(health) == 3 and all(e["health"] for e in health)
    members = json.loads(cluster.sh(JOINING[0], f"{ETCDCTL} member list -w json").stdout)["members"]
    assert sorted(u for m in members for u in m["peerURLs"]) == sorted(f"https://{cluster.address(s)}:2380" for s in SERVERS)
    assert not any(m.get("isLearner") for m in members)
    assert {m["name"].rsplit("-", 1)[0] for m in members} == set(SERVERS)  # RKE2's member names: <node>-<8 hex>
    # an on-demand snapshot, where RKE2 keeps them (the scheduled ones go there too)
    assert cluster.sh(FIRST, "rke2 etcd-snapshot save --name drill").stdout.startswith(f"Snapshot drill-{FIRST}-")
    assert f"file:///var/lib/rancher/rke2/server/db/snapshots/drill-{FIRST}-" in cluster.sh(FIRST, "rke2 etcd-snapshot ls").stdout


def test_the_dns_add_on_answers_at_the_cluster_dns_address(cluster):
    svc = json.loads(cluster.kubectl("-n", "kube-system", "get", "service", "rke2-coredns-rke2-coredns", "-o", "json").stdout)
    assert svc["spec"]["clusterIP"] == str(cluster.params.kubernetes.cluster_dns)
    wait_for(lambda: json.loads(cluster.kubectl("-n", "kube-system", "get", "deployment", "rke2-coredns-rke2-coredns", "-o", "json")
                                .stdout)["status"].get("availableReplicas") == 2, 60, "the DNS add-on available")


def test_a_wrong_token_is_refused(cluster):
    """Seen during the install: the joining server's unit failed with a clear line, and nothing joined."""
    assert "401 Unauthorized: the server refused the token" in cluster.seen["refused_log"]
    assert cluster.seen["refused_state"] in ("activating", "failed", "inactive")
    assert cluster.seen["members_when_refused"] == 1 and cluster.seen["nodes_when_refused"] == [FIRST]
    assert "Refused /v1-rke2/server-bootstrap" in cluster.sh(FIRST, f"cat {SERVICE_LOG.format(unit='rke2-server')}").stdout
    # asked directly: a token naming another CA is refused before any secret is sent, a wrong secret with 401
    url = f"https://{cluster.address(FIRST)}:9345"
    with pytest.raises(join.Refused, match="CA hash"):
        join.Client(url, join.parse_token("K10" + "0" * 64 + "::server:x")).cacerts()
    right = join.parse_token(cluster.seen["token"])
    with pytest.raises(join.Refused, match="401"):
        join.Client(url, join.Token(right.ca_hash, "server", "wrong")).get("/v1-rke2/server-bootstrap")
    assert "server-ca.key" in join.Client(url, right).json("/v1-rke2/server-bootstrap")


def test_running_the_whole_install_again_changes_nothing(cluster):
    pids = {n: cluster.sh(n, "pgrep -x rke2").stdout.split() for n in (*SERVERS, AGENT)}
    ca = yaml.safe_load(cluster.seen["kubeconfig"].read_text())["clusters"][0]["cluster"]["certificate-authority-data"]
    install(cluster, (*SERVERS, AGENT))
    for name in (*SERVERS, AGENT):
        cluster.write(name, "/etc/rancher/rke2/config.yaml", config(cluster, name))
        if name != FIRST:
            cluster.write(name, TOKEN_FILE, cluster.seen["token"] + "\n")
        enable(cluster, name)
    assert cluster.sh(FIRST, f"cat {NODE_TOKEN}").stdout.strip() == cluster.seen["token"]
    assert {n: cluster.sh(n, "pgrep -x rke2").stdout.split() for n in pids} == pids  # nothing restarted
    fetch_kubeconfig(cluster)
    assert yaml.safe_load(cluster.seen["kubeconfig"].read_text())["clusters"][0]["cluster"]["certificate-authority-data"] == ca
    assert ready(cluster, (*SERVERS, AGENT)) and len(cluster.node_states()) == 4
    assert len(json.loads(cluster.sh(FIRST, f"{ETCDCTL} member list -w json").stdout)["members"]) == 3


def pods_on(cluster, node: str, selector: str) -> dict[str, str]:
    """uid -> its Ready condition, of the pods the label ``selector`` picks on ``node``."""
    done = cluster.kubectl("get", "pods", "-l", selector, "--field-selector", f"spec.nodeName={node}", "-o", "json", check=False)
    items = json.loads(done.stdout)["items"] if done.returncode == 0 else []
    return {p["metadata"]["uid"]: {c["type"]: c["status"] for c in p["status"].get("conditions") or []}.get("Ready", "")
            for p in items if not p["metadata"].get("deletionTimestamp")}


def test_the_agents_node_goes_not_ready_when_its_vm_stops_and_its_pods_ready_again_when_it_is_back(cluster, tmp_path):
    """As with a kubelet: the node goes NotReady, the node lifecycle controller marks its pods not ready, and once the
    node is back the same pods are ready again (a Deployment on it available again: a runbook's check waits for that)."""
    made = json.loads(cluster.kubectl("create", "deployment", "on-the-agent", "--image=registry.lab.internal/pause:3.10",
                                      "--dry-run=client", "-o", "json").stdout)
    made["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": AGENT}
    (tmp_path / "on-the-agent.json").write_text(json.dumps(made))
    cluster.kubectl("apply", "-f", str(tmp_path / "on-the-agent.json"))
    try:
        cluster.kubectl("rollout", "status", "deployment/on-the-agent", "--timeout=60s")
        (uid, state), = pods_on(cluster, AGENT, "app=on-the-agent").items()
        assert state == "True"
        cluster.lab.stop(AGENT)  # its KWOK stops with it: nothing renews the node's lease
        try:
            started = time.monotonic()
            wait_for(lambda: cluster.node_states().get(AGENT) == "NotReady", 120, f"{AGENT} NotReady", every=2)
            print(f"\n{AGENT} NotReady {time.monotonic() - started:.0f} s after its VM stopped")
            assert all(cluster.node_states()[s] == "Ready" for s in SERVERS)
            wait_for(lambda: pods_on(cluster, AGENT, "app=on-the-agent") == {uid: "False"}, 60, "the pod on the stopped agent not ready", every=1)
        finally:
            cluster.lab.start(AGENT)
        wait_for(lambda: cluster.node_states().get(AGENT) == "Ready", 90, f"{AGENT} Ready again after lab start", every=1)
        wait_for(lambda: pods_on(cluster, AGENT, "app=on-the-agent") == {uid: "True"}, 60, "the same pod on the agent ready again", every=1)
        wait_for(lambda: cluster.kubectl("get", "deployment", "on-the-agent", "-o", "jsonpath={.status.availableReplicas}").stdout == "1",
                 30, "the Deployment available again", every=1)
    finally:
        cluster.kubectl("delete", "deployment", "on-the-agent", "--wait=false", check=False)
