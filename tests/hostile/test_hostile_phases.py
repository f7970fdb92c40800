"""The fault and canary matrices for the runbooks that need a lab brought to a phase first (a cluster, the CDN volume ...).

Runbooks 00-05 run on a fresh small lab (``test_hostile_faults.py``, ``test_hostile_secrets.py``); the later ones
need what earlier phases built. Building that per row would cost minutes each, so a *stage* is one lab brought to
the right phases once with ``runbook suite --apply --only ...`` (the product's own way), and its rows run on it in
sequence. The promise allows the sharing because every row starts from the stage's converged state and ends there:

- before a row, every VM is started, every link healed and every host key re-pinned (``lab up``), so a row that
  failed cannot hand its fault to the next; a stage whose rows move roles (a database switchover or failover, a
  recovery's frozen replica) also has a ``put_back``, which restores them with the product's own runbooks (the
  switchover run back, the failover's rejoin, 05 once the recovery marker is removed); a row that moves a pair on a
  shared stage (the Redis failover) puts it back itself (``back``);
- a row that needs work pending when its fault strikes (a VM stopped *during* an apply, a cut mid-command, a
  signal mid-phase) first undoes a little of the stage's state on the hosts (``perturb``: a service disabled, a
  mount removed, a configuration file edited), the drift an operator meets in real life;
- each row's promise is checked by the same functions as the fresh-lab rows (``FAULTS``: fails naming the host,
  record lists what was applied, re-run converges with nothing applied twice, no login through a changed host
  key, a signal's interrupted record with the lock released and ``runbook verify`` passing), and each row is
  its own test case, reported as such in the summary table;
- the canary rows (plan and apply, succeeding and failing) check the terminal, the archive, the report site
  and what the run wrote on the VMs (``check_no_canary``); a secret kept on a host by design (Redis's password
  in its configuration, the pull key in RKE2's ``registries.yaml`` and in etcd, which stores the Secret) is
  allowed there only, and the row checks it is there (so the canary really was used). A secret that is no reference
  (RKE2's join token, which 10 carries from the first server to a joining node) is read on the stage and looked for
  the same way (``read``).

Pytest runs the rows of one stage together (the stage is a module-scoped parameter). The default suite runs a
representative subset; the rest is ``slow`` (``RUNBOOK_SLOW=1``).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, require_lab, runbook, running_lab
from hostile.test_hostile_faults import COMMAND_TIMEOUT, CONNECT_TIMEOUT, FAULTS
from hostile.test_hostile_secrets import canary_params, check_no_canary, vm_files

require_lab()

HERE = Path(__file__).resolve().parent
CACHE_PASSWORD = "RB_HOSTILE_CACHE_PASSWORD"


def block_profile(directory: Path) -> str:
    """The seed's RKE1 site cut to a control plane and the three storage nodes (as tests/storage does: Rook 1.18 needs v1.32)."""
    data = yaml.safe_load((ROOT / "params" / "lab.yaml").read_text())
    data["environment"]["name"] = "lab-block"
    data["inventory"]["hosts"] = [h for h in data["inventory"]["hosts"] if h["name"] in ("cp1", "w1", "w2", "w3")]
    for section in ("database", "edge", "logging"):
        data.pop(section, None)
    data["storage"].pop("gluster", None)
    path = directory / "block-lab.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def logging_profile(directory: Path) -> str:
    """The seed's RKE1 site cut to what 12 and 13 need: one control-plane node (the Kubernetes API), one worker (a
    Fluentd pod besides the control plane's) and elk1 (the lab's OpenSearch node), as tests/logs does with one worker less."""
    data = yaml.safe_load((ROOT / "params" / "lab.yaml").read_text())
    data["environment"]["name"] = "lab-logging"
    data["inventory"]["hosts"] = [h for h in data["inventory"]["hosts"] if h["name"] in ("cp1", "w1", "elk1")]
    for section in ("database", "edge", "storage", "cache", "registry"):
        data.pop(section, None)
    data["logging"]["samples"] = str(ROOT / "params" / "samples" / "app-logs.jsonl")
    path = directory / "logging-lab.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def foldin_profile(directory: Path) -> str:
    """The small lab's RKE2 site cut to its cluster, one control-plane node and one worker (10 and 11 need no more: w1 is the node
    that joins again and the node still at the previous release); the registry section stays for its secret reference."""
    data = yaml.safe_load((ROOT / "params" / "lab-small.yaml").read_text())
    data["environment"]["name"] = "lab-foldin"
    data["inventory"]["hosts"] = [h for h in data["inventory"]["hosts"] if h["name"] in ("cp1", "w1")]
    for section in ("database", "edge"):
        data.pop(section, None)
    path = directory / "foldin-lab.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path.as_posix()


@dataclass(frozen=True)
class Stage:
    name: str  # the lab's name (moved aside by RUNBOOK_TEST_LAB_TAG)
    subnet: str
    profile: str | Callable[[Path], str]  # a profile, or what writes one in a folder
    only: tuple[str, ...]  # `runbook suite --apply --only ...`: the phases the stage is brought to
    # what a row may leave that the generic restore (VMs, links, keys) does not put back: roles moved by an incident
    # runbook (a switchover, a failover), a replica frozen by a recovery; run before each row, after the generic restore
    put_back: Callable | None = None

    def after(self, lab) -> None:
        if "edge" in self.only:  # what 09 serves from the CDN volume (as tests/edge does)
            sh(lab, "w1", "echo 'cdn probe written by the hostile suite' > /cdn-data/probe.txt && chmod 644 /cdn-data/probe.txt")
        if "database" in self.only:  # the mistake the recovery rows rewind (as tests/database does with shop.orders)
            database_mistake(lab)


STAGES = {
    # the small lab with its RKE2 cluster and registry access: 03, 04, 14, the etcd snapshot
    "cluster": Stage("rbhcl", "10.109.0.0/24", "small", ("vm", "kubernetes", "registry")),
    # the CDN volume, the edge and the session cache on six VMs: 06, 08, 09, the edge-failure drill
    "services": Stage("rbhsv", "10.110.0.0/24", str(HERE / "lab-services.yaml"), ("vm", "storage", "cache", "edge")),
    # an RKE1 cluster at v1.32.2 with Rook's objects (no Ceph daemon runs in the lab): 07
    "block": Stage("rbhbl", "10.111.0.0/24", block_profile, ("vm", "kubernetes", "storage")),
    # logging (12, 13)
    # an RKE1 cluster (cp1, w1) with Fluentd's DaemonSet, and elk1's real OpenSearch node with the typed template: 12, 13
    "logging": Stage("rbhlg", "10.112.0.0/24", logging_profile, ("vm", "kubernetes", "logging")),
    # database incidents
    # three MariaDB VMs (primary, real-time replica, replica delayed 30 days) built by 05: the switchover, its
    # failover path and the point-in-time recovery; after each row the roles go back (database_put_back)
    "database": Stage("rbhdb", "10.113.0.0/24", lambda d: database_profile(d), ("vm", "database"), put_back=lambda lab: database_put_back(lab)),
    # the failover path on a lab of its own, its delayed replica 5 s behind: a failover's rejoin drops the old primary's
    # binlog back to the promotion, so switching back to it (the put-back) leaves a replica 30 days behind unable to
    # follow (error 1236: the GTID it asks for is no longer in that binlog); 5 s behind, it is past the promotion
    "database-failover": Stage("rbhdf", "10.116.0.0/24", lambda d: database_profile(d, delay_seconds=5), ("vm", "database"),
                               put_back=lambda lab: database_put_back(lab)),
    # fold-in and upgrade (10, 11)
    # an RKE2 cluster (cp1, w1) at the lab's default release: w1 leaves by hand and joins again (10); w1 is put back at the previous
    # release by hand and upgraded (11). Every row's re-run (and a canary row's converging run) leaves w1 a Node at the stage's
    # release, so the stage needs no restore step of its own: the row's perturb takes it back a step, the row brings it forward.
    "foldin": Stage("rbhfi", "10.114.0.0/24", foldin_profile, ("vm", "kubernetes")),
}

# drift that gives a converged stage something to apply on a host, so that a fault can strike mid-apply
AGENT_GONE = "systemctl disable --now rke2-agent && rm -f /etc/rancher/rke2/join-token"  # 03: the join token and the service
REGISTRIES_GONE = "rm -f /etc/rancher/rke2/registries.yaml"  # 04: the node file and the node's restart
UNMOUNTED = r"umount /cdn-data; sed -i '\#/cdn-data#d' /etc/fstab"  # 06: the fstab line and the mount
REDIS_EDITED = "echo '# edited by hand' >> /etc/redis/runbooklib.conf"  # 08: the drop-in (checked, then a restart)
NGINX_EDITED = "echo '# edited by hand' >> /etc/nginx/conf.d/runbooklib-edge.conf"  # 09: the configuration (nginx -t, reload)
# 07: an object deleted by hand in the cluster (run on the runbook's machine, in the lab's folder, with the cluster's kubeconfig)
CLASS_GONE = ("local", "bin/kubectl --kubeconfig kubernetes/kube_config_cluster.yml delete storageclass ceph-block")

K8S, REG, RES, SNAP = ("notebooks/03-kubernetes-cluster.ipynb", "notebooks/04-registry-access.ipynb", "notebooks/14-data-residency.ipynb",
                       "notebooks/incident/etcd-snapshot-restore.ipynb")
CDN, CACHE, EDGE, DRILL = ("notebooks/06-cdn-storage.ipynb", "notebooks/08-session-cache.ipynb", "notebooks/09-edge-load-balancing.ipynb",
                           "notebooks/incident/edge-node-failure.ipynb")
BLOCK, FAILOVER = "notebooks/07-block-storage.ipynb", "notebooks/incident/redis-failover.ipynb"
# 12: the shipper's drop-in edited by hand and its DaemonSet deleted (the drop-in first, then the DaemonSet: two objects to apply)
KUBECTL = "bin/kubectl --kubeconfig kubernetes/kube_config_cluster.yml -n logging"
SHIPPER_EDITED = ("local", f"{KUBECTL} patch configmap fluentd-conf-d --type merge -p '{{\"data\":{{\"runbooklib-json.conf\":\"# edited by hand\\n\"}}}}'"
                           f" && {KUBECTL} delete daemonset fluentd --ignore-not-found --wait=false")
# 13: the typed index template deleted on the engine by hand (on elk1, where OpenSearch listens on the VM's address)
TEMPLATE_GONE = ("elk1", "curl -sSf -X DELETE \"http://$(ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1):9200/_index_template/logs-typed\"")
LOGGING, RETENTION = "notebooks/12-logging.ipynb", "notebooks/13-log-retention.ipynb"
DRILL_PARAMS = (("edge.failure", {"node": "edge1", "mode": "drill"}),)
# database incidents
SWITCH, PITR = "notebooks/incident/db-switchover.ipynb", "notebooks/incident/db-point-in-time-recovery.ipynb"
PLANNED = (("database.switchover", {}),)
FAILOVER_PARAMS = (("database.switchover", {"failover": True}),)
RECOVERY = (("database.recovery", {"find": "DELETE FROM hostile.orders", "since": "2026-01-01T00:00:00", "outcome": "export",
                                   "export_tables": ["hostile.orders"], "verify": [{"table": "hostile.orders", "rows": 200}]}),)
DB1_LOST = ("db1", "systemctl stop mariadb")  # the primary's server gone (the failover is refused while it answers)
DB_SECRETS = (("database.root_password", "RB_HOSTILE_DB_ROOT"), ("database.replication_password", "RB_HOSTILE_DB_REPL"))
DB_OWN = DB_SECRETS
# MariaDB keeps a replica's source password in its master.info (it reconnects with it): on the replicas a run re-points
DB_KEPT = (("database.replication_password", ("/var/lib/mysql/master.info",)),)
DB_VMS = ("db1", "db2", "db3")
# redis failover apply
REDIS_FAILOVER = (("cache.failover", {}),)
# the failover rewrites both drop-ins, keeping each previous one beside it (`cp -a`: mode 0640, owner redis) for its undo
REDIS_FAILOVER_KEPT = (("cache.password", ("/etc/redis/runbooklib.conf", "/etc/redis/runbooklib.conf.runbook-prev")),)
# 10: w1 left the cluster by hand (RKE2's uninstaller, as 10's own leave runs it, and its Node deleted): a node to join again.
# Repeatable: a plan row leaves it so, and the next row takes it again.
RKE2_KUBECTL = "bin/kubectl --kubeconfig kubernetes/rke2.yaml"
W1_LEFT = (("w1", "test ! -x /usr/local/bin/rke2-uninstall.sh || /usr/local/bin/rke2-uninstall.sh"),
           ("local", f"{RKE2_KUBECTL} delete node w1 --ignore-not-found"))
# 11: w1 put back at the previous release (v1.35.4, the folder the lab writes per release) by hand with RKE2's installer, and
# Ready at it: a node still at the old version, within the skew policy (the upgrade test's v1.35.4 -> v1.36.3). The files go over
# the lab's own SSH key and pinned host keys, as an operator would copy them.
OLD_RELEASE = "v1.35.4"
W1_SSH = ("ssh -i ssh/id_ed25519 -o UserKnownHostsFile=ssh/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes "
          "root@$(awk '/name: w1$/ {getline; print $2}' params.yaml)")
W1_OLD = (("local", f"tar -C rke2-artifacts/{OLD_RELEASE} -cf - rke2.linux-amd64.tar.gz sha256sum-amd64.txt install.sh | {W1_SSH} "
                    "'rm -rf /root/rke2-old && mkdir -p /root/rke2-old && tar -C /root/rke2-old -xf - && "
                    "INSTALL_RKE2_ARTIFACT_PATH=/root/rke2-old INSTALL_RKE2_TYPE=agent sh /root/rke2-old/install.sh >/dev/null && "
                    "systemctl restart rke2-agent' && for i in $(seq 90); do "
                    f"{RKE2_KUBECTL} get node w1 -o jsonpath='{{.status.nodeInfo.kubeletVersion}} "
                    "{.status.conditions[?(@.type==\"Ready\")].status}' "
                    f"| grep -q '^{OLD_RELEASE}.* True$' && exit 0; sleep 2; done; exit 1"),)
FOLDIN, UPGRADE = "notebooks/10-capacity-fold-in.ipynb", "notebooks/11-upgrade.ipynb"


@dataclass(frozen=True)
class Row:
    stage: str  # a key of STAGES
    runbook: str
    fault: str  # a key of FAULTS
    host: str
    perturb: tuple[tuple[str, str], ...] = ()  # (vm, shell command) run before the fault
    params: tuple[tuple[str, object], ...] = ()  # (dotted field, value) set in the row's parameter file
    apply: bool = True
    slow: bool = True
    back: Callable | None = None  # (lab, the row's parameters): puts the stage back after the row (roles an incident runbook moved)

    @property
    def id(self) -> str:
        return f"{self.stage}-{Path(self.runbook).stem}-{self.fault.replace(' ', '-')}-{self.host}"


MATRIX = [
    Row("cluster", K8S, "vm stopped during", "w1", perturb=(("w1", AGENT_GONE),), slow=False),
    Row("cluster", K8S, "link cut mid-command", "w1", perturb=(("w1", AGENT_GONE),)),
    Row("cluster", K8S, "host key changed", "w1"),
    Row("cluster", K8S, "SIGTERM mid-phase", "w1", perturb=(("w1", AGENT_GONE),)),
    Row("cluster", REG, "vm stopped during", "w1", perturb=(("w1", REGISTRIES_GONE), ("cp1", REGISTRIES_GONE))),
    Row("cluster", REG, "link cut mid-command", "w1", perturb=(("w1", REGISTRIES_GONE), ("cp1", REGISTRIES_GONE))),
    Row("cluster", REG, "host key changed", "cp1"),
    Row("cluster", REG, "SIGINT mid-phase", "cp1", perturb=(("w1", REGISTRIES_GONE), ("cp1", REGISTRIES_GONE))),
    Row("cluster", RES, "vm stopped before", "db1", apply=False),
    Row("cluster", RES, "link cut mid-command", "w1", apply=False),
    Row("cluster", RES, "host key changed", "edge1", apply=False),
    Row("cluster", SNAP, "vm stopped before", "cp1"),
    Row("cluster", SNAP, "host key changed", "cp1"),
    Row("cluster", SNAP, "SIGHUP mid-phase", "cp1"),
    Row("services", CDN, "vm stopped during", "w2", perturb=(("w1", UNMOUNTED), ("w2", UNMOUNTED))),
    Row("services", CDN, "link cut mid-command", "w1", perturb=(("w1", UNMOUNTED), ("w2", UNMOUNTED))),
    Row("services", CDN, "host key changed", "edge2"),
    Row("services", CDN, "SIGHUP mid-phase", "w1", perturb=(("w1", UNMOUNTED), ("w2", UNMOUNTED))),
    Row("services", CACHE, "vm stopped during", "cache2", perturb=(("cache1", REDIS_EDITED), ("cache2", REDIS_EDITED))),
    Row("services", CACHE, "link cut mid-command", "cache2", perturb=(("cache1", REDIS_EDITED), ("cache2", REDIS_EDITED))),
    Row("services", CACHE, "host key changed", "cache1"),
    Row("services", CACHE, "SIGINT mid-phase", "cache1", perturb=(("cache1", REDIS_EDITED), ("cache2", REDIS_EDITED))),
    Row("services", EDGE, "vm stopped during", "edge2", perturb=(("edge1", NGINX_EDITED), ("edge2", NGINX_EDITED))),
    Row("services", EDGE, "link cut mid-command", "edge1", perturb=(("edge1", NGINX_EDITED), ("edge2", NGINX_EDITED))),
    Row("services", EDGE, "host key changed", "edge2"),
    Row("services", EDGE, "SIGTERM mid-phase", "edge1", perturb=(("edge1", NGINX_EDITED), ("edge2", NGINX_EDITED))),
    Row("services", DRILL, "host key changed", "edge1", params=DRILL_PARAMS),
    Row("block", BLOCK, "vm stopped before", "w2"),
    Row("block", BLOCK, "host key changed", "w1"),
    Row("block", BLOCK, "link cut mid-command", "w3", apply=False),
    Row("block", BLOCK, "SIGINT mid-phase", "cp1", perturb=(CLASS_GONE,)),
    # logging (12, 13)
    # "host key changed" does not apply to 12 or 13: neither logs in to a host over SSH (12 speaks to the Kubernetes API
    # with its kubeconfig, 13 to the engine's HTTP API), so no host key is ever checked; the API's own TLS is 03's.
    Row("logging", LOGGING, "vm stopped before", "cp1", perturb=(SHIPPER_EDITED,)),  # cp1 runs the cluster's only API server
    Row("logging", LOGGING, "vm stopped during", "cp1", perturb=(SHIPPER_EDITED,)),
    Row("logging", LOGGING, "link cut mid-command", "cp1", perturb=(SHIPPER_EDITED,)),
    Row("logging", LOGGING, "SIGTERM mid-phase", "cp1", perturb=(SHIPPER_EDITED,)),
    Row("logging", RETENTION, "vm stopped before", "elk1", perturb=(TEMPLATE_GONE,)),  # elk1 runs the engine
    Row("logging", RETENTION, "vm stopped during", "elk1", perturb=(TEMPLATE_GONE,)),
    Row("logging", RETENTION, "link cut mid-command", "elk1", perturb=(TEMPLATE_GONE,)),
    Row("logging", RETENTION, "SIGINT mid-phase", "elk1", perturb=(TEMPLATE_GONE,)),
    # database incidents
    # the recovery: freeze db3 (the delayed replica), rewind it to just before the stage's mistake, export the table; every
    # run has something to apply (database_put_back unfreezes db3 and gives it its delay back before the next row)
    Row("database", PITR, "vm stopped before", "db3", params=RECOVERY),
    Row("database", PITR, "vm stopped during", "db3", params=RECOVERY),
    Row("database", PITR, "link cut mid-command", "db3", params=RECOVERY),
    Row("database", PITR, "host key changed", "db1", params=RECOVERY),  # the primary, whose binlog names the mistake
    Row("database", PITR, "SIGINT mid-phase", "db3", params=RECOVERY),
    # the planned switchover db1 -> db2 (database_put_back switches back before the next row)
    Row("database", SWITCH, "vm stopped before", "db2", params=PLANNED),  # the candidate
    Row("database", SWITCH, "vm stopped during", "db3", params=PLANNED),  # the delayed replica, re-pointed last
    Row("database", SWITCH, "link cut mid-command", "db2", params=PLANNED),
    Row("database", SWITCH, "host key changed", "db1", params=PLANNED),
    Row("database", SWITCH, "SIGTERM mid-phase", "db1", params=PLANNED),
    # its failover path: db1's server is stopped (the lost primary; its VM stays up, so that the row's own fault is the
    # only VM down), then db2 is promoted and db3 re-pointed. No "during", cut or signal row: the failover's changes
    # are five SQL statements in about a second after its first one (no fault lands mid-way reliably; the planned
    # switchover's rows cover those faults on the same code paths: the executor, the client, the record)
    Row("database-failover", SWITCH, "vm stopped before", "db3", perturb=(DB1_LOST,), params=FAILOVER_PARAMS),
    Row("database-failover", SWITCH, "host key changed", "db2", perturb=(DB1_LOST,), params=FAILOVER_PARAMS),
    # redis failover apply
    # cache2 promoted, cache1 re-pointed; redis_back fails back to cache1 after the row. Faults on the candidate only: the
    # old primary stopped or cut is the failover's own premise (it promotes, names cache1 pending: not a failure); no
    # "during", cut or signal row: its two steps (REPLICAOF, drop-in) take well under a second after the first change
    Row("services", FAILOVER, "vm stopped before", "cache2", params=REDIS_FAILOVER, back=lambda lab, params: redis_back(lab, params)),
    Row("services", FAILOVER, "host key changed", "cache2", params=REDIS_FAILOVER, back=lambda lab, params: redis_back(lab, params)),
    # fold-in and upgrade (10, 11)
    # w1 is the node 10 and 11 change (it joins again; it is upgraded). cp1 runs the only API server: 10 reads the join token
    # there, 11 takes its etcd snapshot there, and both read the cluster through it. Its rows are the faults struck before
    # anything changes on w1: stopped, or its host key changed (11's snapshot, first, must not be taken through it); and for
    # 11, stopped or cut while w1 is being upgraded (the API and etcd gone mid-phase).
    Row("foldin", FOLDIN, "vm stopped before", "w1", perturb=W1_LEFT),
    Row("foldin", FOLDIN, "vm stopped during", "w1", perturb=W1_LEFT),
    Row("foldin", FOLDIN, "link cut mid-command", "w1", perturb=W1_LEFT),
    Row("foldin", FOLDIN, "host key changed", "w1", perturb=W1_LEFT),
    Row("foldin", FOLDIN, "SIGTERM mid-phase", "w1", perturb=W1_LEFT),
    Row("foldin", UPGRADE, "vm stopped before", "w1", perturb=W1_OLD),
    Row("foldin", UPGRADE, "vm stopped during", "w1", perturb=W1_OLD),
    Row("foldin", UPGRADE, "link cut mid-command", "w1", perturb=W1_OLD),
    Row("foldin", UPGRADE, "host key changed", "w1", perturb=W1_OLD),
    Row("foldin", UPGRADE, "SIGINT mid-phase", "w1", perturb=W1_OLD),
    Row("foldin", FOLDIN, "vm stopped before", "cp1", perturb=W1_LEFT),
    Row("foldin", FOLDIN, "host key changed", "cp1", perturb=W1_LEFT),
    Row("foldin", UPGRADE, "vm stopped before", "cp1", perturb=W1_OLD),
    Row("foldin", UPGRADE, "host key changed", "cp1", perturb=W1_OLD),
    Row("foldin", UPGRADE, "vm stopped during", "cp1", perturb=W1_OLD),  # the API gone while w1 is upgraded
    Row("foldin", UPGRADE, "link cut mid-command", "cp1", perturb=W1_OLD),
]


@dataclass(frozen=True)
class CanaryRow:
    stage: str
    runbook: str
    apply: bool
    codes: tuple[int, ...] = (0,)  # success (0) or failure (1, 4): both must keep the secrets
    stop: str | None = None  # a VM stopped for the run: the failing case
    perturb: tuple[tuple[str, str], ...] = ()
    params: tuple[tuple[str, object], ...] = ()
    belongs: tuple[tuple[str, tuple[str, ...]], ...] = ()  # field -> VM paths where the value is kept by design
    slow: bool = True
    own: tuple[tuple[str, str], ...] = ()  # field -> environment variable: the canary is the stage's own secret (made as a canary)
    back: Callable | None = None  # (lab, canary parameters): puts the stage back, instead of the runbook run again with the stage's
    read: tuple[tuple[str, str, str], ...] = ()  # (name, vm, command): a secret that is no reference, read on the stage: a needle too

    @property
    def id(self) -> str:
        return f"{self.stage}-{Path(self.runbook).stem}-{'apply' if self.apply else 'plan'}" + (f"-{self.stop}-stopped" if self.stop else "")


JOIN_TOKEN = (("rke2 join token", "cp1", "cat /var/lib/rancher/rke2/server/node-token"),)  # what 10 writes to a joining node
TOKEN_KEPT = (("rke2 join token", ("/etc/rancher/rke2/join-token",)),)  # its file there (0600), as RKE2 reads it
REG_KEPT = (("registry.json_key", ("/etc/rancher/rke2/registries.yaml", "/var/lib/rancher/rke2/server/db/*")),)  # the node file; etcd's data
REDIS_KEPT = (("cache.password", ("/etc/redis/runbooklib.conf",)),)  # Redis reads its password from its configuration
# 12 puts logging.password in the cluster's Secret, which etcd stores (on cp1); 13 sends it to the engine, which keeps it nowhere
LOGGING_KEPT = (("logging.password", ("/var/lib/etcd/*",)),)
CANARIES = [
    CanaryRow("cluster", REG, apply=False),
    CanaryRow("cluster", REG, apply=True, perturb=(("w1", REGISTRIES_GONE),), belongs=REG_KEPT),
    CanaryRow("cluster", REG, apply=True, codes=(1, 4), stop="w1", perturb=(("cp1", REGISTRIES_GONE),), belongs=REG_KEPT),
    CanaryRow("cluster", K8S, apply=False),
    CanaryRow("cluster", K8S, apply=True, perturb=(("w1", AGENT_GONE),)),
    CanaryRow("cluster", RES, apply=False),
    CanaryRow("cluster", SNAP, apply=True),
    CanaryRow("services", CACHE, apply=False),
    CanaryRow("services", CACHE, apply=True, perturb=(("cache1", REDIS_EDITED), ("cache2", REDIS_EDITED)), belongs=REDIS_KEPT),
    CanaryRow("services", CACHE, apply=True, codes=(1, 4), stop="cache2", perturb=(("cache1", REDIS_EDITED),), belongs=REDIS_KEPT),
    CanaryRow("services", CDN, apply=True, perturb=(("w1", UNMOUNTED),)),
    CanaryRow("services", EDGE, apply=True, perturb=(("edge1", NGINX_EDITED),)),
    CanaryRow("services", DRILL, apply=True, params=DRILL_PARAMS),
    CanaryRow("services", FAILOVER, apply=False, params=(("cache.failover", {}),)),  # its plan only: an apply would switch the stage's pair
    CanaryRow("block", BLOCK, apply=False),
    CanaryRow("block", BLOCK, apply=True, perturb=(CLASS_GONE,)),
    # logging (12, 13)
    CanaryRow("logging", LOGGING, apply=False),
    CanaryRow("logging", LOGGING, apply=True, perturb=(SHIPPER_EDITED,), belongs=LOGGING_KEPT),
    # w1 stopped: its Fluentd pod is never ready (the verification waits kubernetes.settle_seconds, 20 s here, not 180)
    CanaryRow("logging", LOGGING, apply=True, codes=(1, 4), stop="w1", perturb=(SHIPPER_EDITED,), params=(("kubernetes.settle_seconds", 20),),
              belongs=LOGGING_KEPT),
    CanaryRow("logging", RETENTION, apply=False),
    CanaryRow("logging", RETENTION, apply=True, perturb=(TEMPLATE_GONE,)),
    CanaryRow("logging", RETENTION, apply=True, codes=(1, 4), stop="elk1", perturb=(TEMPLATE_GONE,)),
    # database incidents
    # the database passwords are the stage's own, made as canaries (SQL- and shell-breaking): these runbooks use them,
    # they do not set them (a rotation is 05's, with its own canary row); the other secrets are fresh canaries
    CanaryRow("database", PITR, apply=False, params=RECOVERY, own=DB_OWN),
    CanaryRow("database", PITR, apply=True, params=RECOVERY, own=DB_OWN, belongs=DB_KEPT, back=lambda lab, _: database_put_back(lab)),
    CanaryRow("database", PITR, apply=True, codes=(1, 4), stop="db3", params=RECOVERY, own=DB_OWN, belongs=DB_KEPT,
              back=lambda lab, _: database_put_back(lab)),
    CanaryRow("database", SWITCH, apply=False, params=PLANNED, own=DB_OWN),
    CanaryRow("database", SWITCH, apply=True, params=PLANNED, own=DB_OWN, belongs=DB_KEPT, back=lambda lab, _: database_put_back(lab)),
    CanaryRow("database", SWITCH, apply=True, codes=(1, 4), stop="db2", params=PLANNED, own=DB_OWN, belongs=DB_KEPT,
              back=lambda lab, _: database_put_back(lab)),
    # the failover path, failing: the primary's server lost and the delayed replica's VM stopped
    CanaryRow("database-failover", SWITCH, apply=True, codes=(1, 4), stop="db3", perturb=(DB1_LOST,), params=FAILOVER_PARAMS, own=DB_OWN,
              belongs=DB_KEPT, back=lambda lab, _: database_put_back(lab)),
    # redis failover apply
    # cache2 promoted, cache1 re-pointed; redis_back fails back to cache1. Its password is the stage's own (the failover
    # uses the pair's password, it does not set one: a fresh canary is refused by both servers, WRONGPASS)
    CanaryRow("services", FAILOVER, apply=True, params=REDIS_FAILOVER, belongs=REDIS_FAILOVER_KEPT, own=(("cache.password", CACHE_PASSWORD),),
              back=lambda lab, params: redis_back(lab, params)),
    # fold-in and upgrade (10, 11)
    # the one secret reference 10 and 11 use is ssh.key (the lab's own key: it must log in, and is a needle all the same); the
    # stage's registry.json_key gets a canary too, which neither may carry anywhere. Neither keeps a reference's value on a host.
    # 10 also carries a secret that is no reference: the cluster's join token, read from cp1 and written to the joining node;
    # it is read on the stage as a needle (JOIN_TOKEN), allowed only in the joining node's token file (TOKEN_KEPT).
    CanaryRow("foldin", FOLDIN, apply=False, perturb=W1_LEFT, read=JOIN_TOKEN),
    CanaryRow("foldin", FOLDIN, apply=True, perturb=W1_LEFT, read=JOIN_TOKEN, belongs=TOKEN_KEPT),
    CanaryRow("foldin", FOLDIN, apply=True, codes=(1, 4), stop="w1", perturb=W1_LEFT, read=JOIN_TOKEN, belongs=TOKEN_KEPT),
    CanaryRow("foldin", UPGRADE, apply=False, perturb=W1_OLD),
    CanaryRow("foldin", UPGRADE, apply=True, perturb=W1_OLD),
    CanaryRow("foldin", UPGRADE, apply=True, codes=(1, 4), stop="w1", perturb=W1_OLD),
]


def sh(lab, vm: str, command: str) -> str:
    """A command in a VM, or with vm ``local`` on the runbook's machine in the lab's folder."""
    r = subprocess.run(command, shell=True, cwd=lab.root, capture_output=True, text=True) if vm == "local" else lab.exec_in(vm, command)
    assert r.returncode == 0, f"{vm}: {command}: {r.stderr.strip()}"
    return r.stdout


@pytest.fixture(scope="module")
def stage(request, tmp_path_factory):
    """A lab brought to the stage's phases by the suite, shared by the stage's rows."""
    st = STAGES[request.param]
    root = tmp_path_factory.mktemp(f"stage-{request.param}")
    saved = os.environ.get(CACHE_PASSWORD)
    os.environ[CACHE_PASSWORD] = "hostile-stage-cache-password"  # the stage's own; canary rows replace the reference
    try:
        profile = st.profile if isinstance(st.profile, str) else st.profile(root)
        with running_lab(root / "lab", st.name, st.subnet, profile=profile) as lab:
            lab.hostile_profile = profile
            env = {"RUNBOOK_ARCHIVE": str(root / "archive"), "RUNBOOK_LOCK_DIR": str(root / "locks")}
            built = runbook("suite", "--params", str(lab.params_file), "--apply", "--only", *st.only, env=env, timeout=3000)
            assert built.returncode == 0, built.stdout[-5000:] + built.stderr[-3000:]
            st.after(lab)
            lab.hostile_put_back = st.put_back
            yield lab
    finally:
        if saved is None:
            os.environ.pop(CACHE_PASSWORD, None)
        else:
            os.environ[CACHE_PASSWORD] = saved


def restore(lab) -> None:
    """The stage as built: every link up, every VM running, every key pinned (what a failed row may have left)."""
    for vm in lab.vms():
        lab.heal(vm)
    lab.up(profile=lab.hostile_profile)
    if getattr(lab, "hostile_put_back", None):
        lab.hostile_put_back(lab)


def row_params(lab, row, name: str) -> Path:
    """The stage's parameters with the fault timeouts and the row's fields, beside the lab's own (its references resolve)."""
    from conftest import set_path

    data = yaml.safe_load(lab.params_file.read_text())
    data["ssh"]["command_timeout"] = COMMAND_TIMEOUT
    data["ssh"]["connect_timeout"] = CONNECT_TIMEOUT
    for field, value in row.params:
        set_path(data, field, value)
    path = lab.params_file.with_name(f"{name}.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _marks(row, cls: str):
    return [pytest.mark.hostile(cls, row.runbook), *([pytest.mark.slow] if row.slow else [])]


@pytest.mark.parametrize(("stage", "row"), [pytest.param(r.stage, r, id=r.id, marks=_marks(r, f"fault: {r.fault}")) for r in MATRIX],
                         indirect=["stage"], scope="module")
def test_fault_on_a_staged_lab(stage, row, tmp_path):
    restore(stage)
    stage.fault_params = row_params(stage, row, f"fault-{row.id}")
    for vm, command in row.perturb:
        sh(stage, vm, command)
    try:
        FAULTS[row.fault](stage, row, tmp_path)
    finally:
        if row.back is not None:
            restore(stage)  # (the fault's VM, link and key back first)
            row.back(stage, stage.fault_params)


@pytest.mark.parametrize(("stage", "row"), [pytest.param(r.stage, r, id=r.id, marks=_marks(r, "secrets: canaries")) for r in CANARIES],
                         indirect=["stage"], scope="module")
def test_no_canary_after_a_run_on_a_staged_lab(stage, row, tmp_path):
    restore(stage)
    source = row_params(stage, row, f"canary-source-{row.id}")
    params, values = canary_params(stage, tmp_path / "canaries", source, fixed={field: os.environ[var] for field, var in row.own})
    values.update({name: sh(stage, vm, command).strip() for name, vm, command in row.read})
    for vm, command in row.perturb:
        sh(stage, vm, command)
    before = vm_files(stage)
    if row.stop:
        stage.stop(row.stop)
    try:
        done = runbook("run", row.runbook, "--params", str(params), *(["--apply"] if row.apply else []),
                       *([] if row.stop else ["--allow-not-ready"]), timeout=900)  # a stopped VM's bad verdict is a failure (exit 4)
    finally:
        if row.stop:
            stage.start(row.stop)
    assert done.returncode in row.codes, done.stdout[-2000:] + done.stderr[-3000:]
    if row.stop:
        assert row.stop in done.stdout + done.stderr, "the failing run names the stopped VM"
    kept = check_no_canary(stage, done, values, before, dict(row.belongs))
    if row.apply and row.belongs and not row.stop:
        # the canary was really used: it is where it belongs on the hosts, and nowhere else
        assert set(kept) == {field for field, _ in row.belongs}, kept
    if row.back is not None:
        row.back(stage, params)
    elif row.apply and row.runbook not in (SNAP, DRILL):
        # put back what the row changed (the canary secrets set, what perturb took away) with the stage's own: the next row starts converged
        again = runbook("run", row.runbook, "--params", str(row_params(stage, CanaryRow(row.stage, row.runbook, True), "converge")),
                        "--apply", "--allow-not-ready", timeout=900)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]


# -- database incidents -----------------------------------------------------------------------------

def database_profile(directory: Path, **database) -> str:
    """The hostile services' database lab (tests/data/database/lab-db.yaml), its passwords the stage's own: canaries
    (a SQL string and a shell word broken out of, as the canary rows make them) in environment variables."""
    from hostile.test_hostile_secrets import db_canary

    data = yaml.safe_load((ROOT / "tests" / "data" / "database" / "lab-db.yaml").read_text())
    data["environment"]["name"] = "lab-hostile-db"
    data["database"].update(database)
    for field, var in DB_SECRETS:
        os.environ.setdefault(var, db_canary())
        data["database"][field.split(".", 1)[1]] = f"env:{var}"
    path = directory / "db-lab.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def database_mistake(lab) -> None:
    """200 orders committed on the primary, then the mistake the recovery rows look for: half of them deleted."""
    rows = ", ".join(f"({i}, 'order {i}')" for i in range(1, 201))
    sh(lab, "db1", f'mariadb -e "CREATE DATABASE hostile; CREATE TABLE hostile.orders (id INT PRIMARY KEY, note VARCHAR(40)); '
                   f'INSERT INTO hostile.orders VALUES {rows}; DELETE FROM hostile.orders WHERE id > 100"')


def _source_of(lab, vm: str) -> str | None:
    out = sh(lab, vm, "mariadb -e 'SHOW SLAVE STATUS\\G' | awk '/ Master_Host:/ {print $2}'").strip()
    return out or None


def _exists(lab, vm: str, path: str) -> bool:
    return lab.exec_in(vm, f"test -e {path}").returncode == 0


def _db_run(lab, notebook: str, name: str, fields: dict) -> None:
    from conftest import set_path

    data = yaml.safe_load(lab.params_file.read_text())
    for field, value in fields.items():
        set_path(data, field, value)
    path = lab.params_file.with_name(f"{name}.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    done = runbook("run", notebook, "--params", str(path), "--apply", timeout=900)
    assert done.returncode == 0, f"putting the database stage back ({name}): " + done.stdout[-2000:] + done.stderr[-4000:]


def database_put_back(lab) -> None:
    """The database stage as built: db1 the primary, db2 its real-time replica, db3 delayed and not frozen.

    With the product's own runbooks, as an operator would: a server a row stopped is started; a failover's promotion
    is followed by the same failover run again (db1 back: fenced, counted, rejoined); a switchover is switched back
    (db2 -> db1); a recovery's marker is removed and 05 gives db3 its delay back (05 also confirms the whole stage)."""
    from runbooklib.database.facts import FAILOVER_MARKER, RECOVERY_MARKER
    from runbooklib.params import load_params

    for vm in DB_VMS:
        sh(lab, vm, "systemctl start mariadb && for i in $(seq 60); do mariadb -e 'SELECT 1' >/dev/null 2>&1 && exit 0; sleep 1; done; exit 1")
    db2 = str(load_params(lab.params_file).host("db2").address)
    moved = False
    if _exists(lab, "db2", FAILOVER_MARKER) and _source_of(lab, "db2") is None and _source_of(lab, "db1") is None:
        _db_run(lab, SWITCH, "put-back-rejoin", {"database.switchover": {"failover": True}})
        moved = True
    if _source_of(lab, "db1") == db2:
        _db_run(lab, SWITCH, "put-back-switch", {"database.primary": "db2", "database.replica": "db1", "database.switchover": {}})
        moved = True
    if _exists(lab, "db2", FAILOVER_MARKER):
        sh(lab, "db2", f"rm -f {FAILOVER_MARKER}")  # db2 is a replica again: the marker of its promotion is history
        moved = True
    frozen = _exists(lab, "db3", RECOVERY_MARKER)
    if frozen:
        sh(lab, "db3", f"rm -f {RECOVERY_MARKER}")  # the engineer's step once the primary is repaired (the runbook says so)
    if moved or frozen:
        _db_run(lab, "notebooks/05-database.ipynb", "put-back-05", {})


# -- redis failover apply ---------------------------------------------------------------------------

def redis_back(lab, params: Path) -> None:
    """The services stage's pair as built: the failover run back (cache1 the candidate, with the row's parameters), then
    08 with the stage's own (its password back, and 08 plans only on a pair whose roles match the file)."""
    from conftest import set_path

    data = yaml.safe_load(params.read_text())
    for field, value in (("cache.vms.primary", "cache2"), ("cache.vms.replica", "cache1"), ("cache.failover", {})):
        set_path(data, field, value)
    back = params.with_name(params.stem + "-back.yaml")
    back.write_text(yaml.safe_dump(data, sort_keys=False))
    done = runbook("run", FAILOVER, "--params", str(back), "--apply", "--allow-not-ready", timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    again = runbook("run", CACHE, "--params", str(row_params(lab, CanaryRow("services", CACHE, True), "converge")), "--apply", timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
