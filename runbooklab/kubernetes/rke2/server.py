"""``rke2 server``: etcd, kube-apiserver, kube-controller-manager and kube-scheduler, real, as RKE2 runs them.

The first server (no ``server:`` in config.yaml) creates the cluster: its CAs and token, a new etcd
of one member, the control plane, the DNS add-on (``kube-system/rke2-coredns-rke2-coredns`` at
``cluster-dns``) and ``/etc/rancher/rke2/rke2.yaml``. A joining server gets the CAs from
``server:`` with the token, checks that it agrees on the cluster's ranges, joins etcd as a learner and
is promoted, then starts the same parts; a server with ``disable-etcd`` uses the cluster's etcd, one
with ``disable-apiserver`` reaches the API through a load balancer over the servers (as an agent).
Every server answers joiners on port 9345 (:mod:`.join`), registers its Node with the roles RKE2
gives (``control-plane``, ``master``, ``etcd``), runs KWOK for it, and takes the scheduled etcd snapshots.
``--cluster-reset`` (:meth:`Server.cluster_reset`) resets etcd to one member, restoring a snapshot first
when ``--cluster-reset-restore-path`` names one, as RKE2 does.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from pathlib import Path

from .. import cluster as lab_cluster
from .. import parts
from . import (
    API_PORT,
    CONFIG_DIR,
    CRED_DIR,
    ETCD_DIR,
    KUBECONFIG,
    NODE_TOKEN,
    RELEASE,
    SERVER_DIR,
    SUPERVISOR_PORT,
    TLS_DIR,
    TOKEN_FILE,
    Fatal,
    certs,
    etcd,
    join,
    kubernetes_version,
    lb,
    node,
)
from .children import Children, pod_log
from .snapshots import Schedule

RESET_FLAG = f"{SERVER_DIR}/db/reset-flag"  # written by a cluster reset; a normal start removes it
CRITICAL = ("cluster-cidr", "service-cidr", "cluster-dns", "cluster-domain")  # every server must agree, as RKE2 checks
COREDNS_IMAGE = "rancher/hardened-coredns:v1.12.1-build20250401"
COREDNS = lab_cluster.DnsAddon(
    "rke2-coredns-rke2-coredns", "rke2-coredns-rke2-coredns",
    {"app.kubernetes.io/instance": "rke2-coredns", "app.kubernetes.io/name": "rke2-coredns", "k8s-app": "kube-dns"}, COREDNS_IMAGE,
    service_labels={"kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"},
    tolerations=({"key": "CriticalAddonsOnly", "operator": "Exists"},
                 {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
                 {"key": "node-role.kubernetes.io/etcd", "operator": "Exists", "effect": "NoExecute"}))


class Stopped(Exception):
    """SIGTERM arrived while the server was still starting."""


class Server:
    def __init__(self, cfg, log, stopping: threading.Event):
        self.cfg, self.log, self.stopping = cfg, log, stopping
        self.version = kubernetes_version()
        self.join_url = cfg.get("server")
        self.node = node.from_config(cfg, lb.host_of(self.join_url) if self.join_url else None)
        self.pki = certs.server_pki()
        self.children = Children(log)
        self.runs = {part: not cfg.flag(f"disable-{part}") for part in ("etcd", "apiserver", "controller-manager", "scheduler")}
        self.etcd_servers = etcd.LOCAL
        self.client: join.Client | None = None
        self.supervisor: join.Supervisor | None = None
        self.balancers: list[lb.LoadBalancer] = []
        self.issue_lock = threading.Lock()
        self.admin: lab_cluster.ApiClient | None = None
        self.given: str | None = None  # the token of config.yaml (token or token-file)
        self.secrets: dict[str, tuple[str, ...]] = {}  # what port 9345 accepts, per user (set by bootstrap)

    # -- the steps -----------------------------------------------------------------------------
    def run(self) -> int:
        node.prepare(self.cfg, self.log, self.version)
        if self.cfg.flag("cluster-reset"):
            return self.cluster_reset()
        Path(RESET_FLAG).unlink(missing_ok=True)  # RKE2 removes it when it starts normally
        self.log.info(f"Starting rke2 {self.version}+{RELEASE} server ({self.node.name}, {self.node.address}): LAB SIMULATION of "
                      f"RKE2 starting the real Kubernetes {self.version} and etcd {parts.default_version('etcd')} (no kubelet: KWOK)")
        self.log.info(f"cni {','.join(self.cfg.get('cni'))}: no CNI runs in the lab (KWOK gives pods their addresses from the node's range)")
        try:
            self.start()
            self.log.info("rke2 is up and running")
            self.serve()
        except Stopped:
            self.log.info("Stopping before rke2 was up")
        finally:
            self.shutdown()
        return 0

    def cluster_reset(self) -> int:
        """``rke2 server --cluster-reset [--cluster-reset-restore-path=P]`` (rke2-server stopped): etcd becomes one member.

        As RKE2 (k3s pkg/etcd): refused on a server that joins another (``server:`` set) and after an earlier
        reset until ``db/reset-flag`` is removed. With a snapshot, the data folder is moved to ``db/etcd-old-<time>``
        and the snapshot restored with the real etcdutl as this server's one member (its integrity hash checked);
        without, etcd starts once with ``--force-new-cluster``. Then etcd is checked to run alone, stopped, the flag
        written, and rke2 exits for the service to be started normally.
        """
        if self.join_url:
            raise Fatal("cannot perform cluster-reset while server URL is set - remove server from configuration before resetting")
        if not self.runs["etcd"]:
            raise Fatal("cluster-reset needs the embedded etcd; this server has disable-etcd")
        if Path(RESET_FLAG).exists():
            raise Fatal("Managed etcd cluster membership was previously reset, please remove the cluster-reset flag and start rke2 "
                        f"normally. If you need to perform another cluster reset, you must first manually delete the {RESET_FLAG} file")
        if not etcd.has_data() and not self.cfg.get("cluster-reset-restore-path"):
            raise Fatal(f"cluster-reset: no etcd data in {ETCD_DIR} to reset")
        self.log.info(f"Starting rke2 {self.version}+{RELEASE} cluster reset ({self.node.name}): LAB SIMULATION of RKE2")
        name = etcd.member_name(self.node.name)  # read before the data folder moves
        restore = self.cfg.get("cluster-reset-restore-path")
        if restore:
            if not Path(restore).is_file():
                raise Fatal(f"failed to restore etcd snapshot: open {restore}: no such file or directory")
            old = f"{ETCD_DIR}-old-{int(time.time())}"
            if Path(ETCD_DIR).exists():
                Path(ETCD_DIR).rename(old)
                self.log.info(f"Pre-restore etcd database moved to {old}")
            etcd.restore(restore, name, f"https://{self.node.address}:2380", self.log)
        try:
            self.start_etcd(force_new=not restore)
            members = etcd.members()
            if len(members) != 1:
                raise Fatal(f"etcd still has {len(members)} members after the reset")
        finally:
            self.children.stop_all(timeout=8)
        Path(RESET_FLAG).touch()
        self.log.info("Managed etcd cluster membership has been reset, restart without --cluster-reset flag now. Backup and delete "
                      "${datadir}/server/db on each peer etcd server and rejoin the nodes")
        return 0

    def start(self) -> None:
        for d in (SERVER_DIR, TLS_DIR, CRED_DIR):
            Path(d).mkdir(parents=True, exist_ok=True)
            Path(d).chmod(0o700)
        self.given = self.cfg.token(self.log, self.stopping)
        if self.stopping.is_set():
            raise Stopped
        self.bootstrap()
        certs.issue_server(self.pki, self.node.name, self.node.address, self.cfg.get("tls-san") or [], self.cfg.get("service-cidr"),
                           self.cfg.get("cluster-domain"))
        for path, text in certs.server_kubeconfigs().items():
            certs.write_file(path, text)
        certs.write_agent({"server-ca.crt": self.pki.cert("server-ca").read_bytes(), "client-ca.crt": self.pki.cert("client-ca").read_bytes(),
                           **self.node_credentials(self.node.name)})
        node.write_files(self.node, self.version)
        self.supervisor = join.Supervisor(self.secrets, self.routes(), self.log)
        self.supervisor.start(SUPERVISOR_PORT, str(self.pki.cert("serving-kube-apiserver")), str(self.pki.key("serving-kube-apiserver")))
        if self.runs["etcd"]:
            self.start_etcd()
        else:
            self.etcd_servers = ",".join(u for m in self.joined().json("/db/info")["members"] for u in m.get("clientURLs", [])[:1])
            self.log.info(f"etcd disabled on this server: the API server uses the cluster's etcd at {self.etcd_servers}")
        if self.runs["apiserver"]:
            self.start_apiserver()
        else:
            self.balance_api()
        self.admin = lab_cluster.ApiClient([f"https://127.0.0.1:{API_PORT}"], self.pki, "client-admin", "server-ca")
        self.wait_api()
        lab_cluster.ensure_namespaces(self.admin)
        lab_cluster.ensure_kwok_role(self.admin)
        for created in lab_cluster.ensure_dns(self.admin, self.dns_addon(), str(self.cfg.get("cluster-dns")), self.cfg.get("cluster-domain")):
            self.log.info(f"Created {created} of the rke2-coredns add-on (its pods run nothing: LAB SIMULATION)")
        self.write_kubeconfig()
        if self.runs["controller-manager"]:
            self.start_part("kube-controller-manager", lab_cluster.controller_manager_flags(
                f"{CRED_DIR}/controller.kubeconfig", f"{TLS_DIR}/service.key", f"{TLS_DIR}/server-ca.crt", f"{TLS_DIR}/client-ca.crt",
                f"{TLS_DIR}/client-ca.key", self.cfg.get("cluster-cidr"), self.cfg.get("service-cidr")), "kube-controller-manager-arg")
        if self.runs["scheduler"]:
            self.start_part("kube-scheduler", lab_cluster.scheduler_flags(f"{CRED_DIR}/scheduler.kubeconfig"), "kube-scheduler-arg")
        if not node.register(self.node, self.version, self.log, self.stopping):
            raise Stopped
        roles = {"control-plane": self.runs["apiserver"], "master": self.runs["apiserver"], "etcd": self.runs["etcd"]}
        node.role_labels(self.admin, self.node.name, {f"node-role.kubernetes.io/{r}": "true" for r, on in roles.items() if on})
        node.start_kwok(self.children, self.node, self.log)

    def serve(self) -> None:
        """Until SIGTERM: restart exited parts, take the scheduled snapshots, follow the API servers (when balanced)."""
        schedule = None
        if self.runs["etcd"] and not self.cfg.flag("etcd-disable-snapshots"):
            schedule = Schedule(str(self.cfg.get("etcd-snapshot-schedule-cron")), int(self.cfg.get("etcd-snapshot-retention")),
                                self.cfg.get("etcd-snapshot-dir") or f"{SERVER_DIR}/db/snapshots", self.node.name, self.log)
        refreshed = time.monotonic()
        while not self.stopping.wait(1):
            self.children.check()
            if schedule is not None:
                schedule.tick()
            if self.balancers and time.monotonic() - refreshed > 30:
                refreshed = time.monotonic()
                self.balancers[0].set_backends(self.apiservers() or self.balancers[0].backends)

    def shutdown(self) -> None:
        self.children.stop_all(timeout=8)
        if self.supervisor is not None:
            self.supervisor.stop()
        for b in self.balancers:
            b.close()

    # -- the cluster's secrets -------------------------------------------------------------------
    def bootstrap(self) -> None:
        """The CAs (created, or fetched from the server joined) and the token files."""
        given = self.given
        if self.join_url and not (etcd.has_data() and self.pki.cert("server-ca").exists()):
            token = join.parse_token(given)
            files = self.joined().json("/v1-rke2/server-bootstrap")
            self.check_config(self.joined().json("/v1-rke2/config"))
            certs.write_bootstrap(self.pki, {name: base64.b64decode(data) for name, data in files.items()})
            self.log.info(f"Received the cluster's CAs from {self.join_url}")
            secret = token.secret
        else:
            certs.create_cas(self.pki, "rke2")
            secret = self.stored_secret()
            if given:
                token = join.parse_token(given)
                if token.ca_hash and token.ca_hash != join.ca_hash(self.pki.cert("server-ca").read_bytes()):
                    raise Fatal("the token's CA hash does not match this server's CA: the token is from another cluster")
                if secret and token.secret != secret:
                    raise Fatal(f"bootstrap data already found and encrypted with a different token: the token in config.yaml is not the "
                                f"one this cluster was created with (see {TOKEN_FILE})")
                secret = token.secret
            secret = secret or secrets.token_hex(16)
        ca = self.pki.cert("server-ca").read_bytes()
        agent = join.parse_token(self.cfg.get("agent-token")).secret if self.cfg.get("agent-token") else secret
        self.secrets = {"server": (secret,), "node": (agent, secret)}
        certs.write_file(TOKEN_FILE, join.full_token(ca, secret) + "\n")
        certs.write_file(f"{SERVER_DIR}/agent-token", join.full_token(ca, agent, "node" if agent != secret else "server") + "\n")
        link = Path(NODE_TOKEN)
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(TOKEN_FILE)

    def stored_secret(self) -> str | None:
        try:
            return join.parse_token(Path(TOKEN_FILE).read_text()).secret
        except (OSError, Fatal):
            return None

    def joined(self) -> join.Client:
        """The server joined (``server:``), its CA checked against the token; waited for while it does not answer."""
        if self.client is None:
            self.client = join.Client(self.join_url, join.parse_token(self.given), "server")
        while True:
            try:
                if self.client.ca is None:
                    self.client.cacerts()
                return self.client
            except join.Unreachable as e:
                self.log.info(f"Waiting for the server to join ({e}); retrying in 5 s")
                if self.stopping.wait(5):
                    raise Stopped from None

    def check_config(self, theirs: dict) -> None:
        for key in CRITICAL:
            if str(theirs.get(key)) != str(self.cfg.get(key)):
                raise Fatal(f"failed to validate server configuration: critical configuration value mismatch between servers: {key} is "
                            f"{self.cfg.get(key)} here but {theirs.get(key)} on {self.join_url}")

    def node_credentials(self, name: str) -> dict[str, bytes]:
        with self.issue_lock:
            return certs.node_credentials(self.pki, name)

    # -- port 9345 ----------------------------------------------------------------------------------
    def routes(self) -> dict[str, join.Route]:
        anyone, servers, nodes = (), ("server",), ("server", "node")

        def pem(name: str):
            return lambda headers: join.text(self.pki.cert(name).read_bytes())

        def credential(kind: str):
            def answer(headers) -> join.Answer:
                name = headers.get("RKE2-Node-Name")
                if not name:
                    return 400, "text/plain", b"the RKE2-Node-Name header is required\n"
                files = self.node_credentials(name)
                return join.text(files[f"{kind}.crt"] + files[f"{kind}.key"])
            return answer

        return {
            "/ping": join.Route(anyone, lambda h: join.text("pong")),
            "/cacerts": join.Route(anyone, pem("server-ca")),
            "/v1-rke2/readyz": join.Route(anyone, lambda h: join.text("ok") if self.admin and self.admin.ready()
                                          else (503, "text/plain", b"the API server is not ready\n")),
            "/v1-rke2/server-bootstrap": join.Route(servers, lambda h: join.as_json(
                {name: base64.b64encode(data).decode() for name, data in certs.bootstrap_files(self.pki).items()})),
            "/db/info": join.Route(servers, lambda h: join.as_json({"members": etcd.members(self.etcd_servers)})),
            "/v1-rke2/config": join.Route(nodes, lambda h: join.as_json({**{k: str(self.cfg.get(k)) for k in CRITICAL},
                                                                         "kubernetesVersion": self.version})),
            "/v1-rke2/apiservers": join.Route(nodes, lambda h: join.as_json(self.apiservers())),
            "/v1-rke2/server-ca.crt": join.Route(nodes, pem("server-ca")),
            "/v1-rke2/client-ca.crt": join.Route(nodes, pem("client-ca")),
            "/v1-rke2/client-kubelet.crt": join.Route(nodes, credential("client-kubelet")),
            f"/v1-rke2/{certs.KWOK_NAME}.crt": join.Route(nodes, credential(certs.KWOK_NAME)),
        }

    def apiservers(self) -> list[str]:
        """``address:6443`` of every API server (the ``kubernetes`` Service's endpoints), this one's if the API does not answer."""
        mine = [f"{self.node.address}:{API_PORT}"] if self.runs["apiserver"] else []
        if self.admin is None:
            return mine
        try:
            code, body = self.admin.request("GET", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
                                                   "?labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes")
        except lab_cluster.ClusterError:
            return mine
        found = sorted({f"{a}:{API_PORT}" for s in body.get("items", []) for e in s.get("endpoints") or [] for a in e.get("addresses", [])})
        return found if code == 200 and found else mine

    # -- the parts ----------------------------------------------------------------------------------
    def wait(self, ready, what: str, log_every: float = 10.0) -> None:
        """Until ``ready()``, restarting exited parts meanwhile; Stopped on SIGTERM."""
        said = time.monotonic()
        while not ready():
            self.children.check()
            if time.monotonic() - said > log_every:
                self.log.info(f"Waiting for {what}")
                said = time.monotonic()
            if self.stopping.wait(0.5):
                raise Stopped

    def start_etcd(self, force_new: bool = False) -> None:
        name = etcd.member_name(self.node.name)
        Path(ETCD_DIR).chmod(0o700)
        peer = f"https://{self.node.address}:2380"
        joining = self.join_url and not etcd.has_data()
        initial, state = f"{name}={peer}", "new"
        if joining:
            endpoints = ",".join(m["clientURLs"][0] for m in self.joined().json("/db/info")["members"] if m.get("clientURLs"))
            initial, state = etcd.add_learner(name, peer, endpoints, self.log, self.stopping), "existing"
        a = self.node.address
        tls = lab_cluster.EtcdTls(etcd.CLIENT_CERT, etcd.CLIENT_KEY, etcd.SERVER_CA, f"{etcd.ETCD_TLS}/peer-server-client.crt",
                                  f"{etcd.ETCD_TLS}/peer-server-client.key", f"{etcd.ETCD_TLS}/peer-ca.crt")
        flags = {**lab_cluster.etcd_flags(name, a, ETCD_DIR, initial, tls, state, f"https://127.0.0.1:2379,https://{a}:2379",
                                          f"https://127.0.0.1:2380,https://{a}:2380"), "listen-metrics-urls": "http://127.0.0.1:2381",
                 **({"force-new-cluster": "true"} if force_new else {})}
        self.start_part("etcd", flags, "etcd-arg", binary=parts.vm_path("etcd", "etcd"))
        if joining:
            etcd.promote(peer, endpoints, self.log, self.stopping)
        self.wait(etcd.healthy, "etcd to be healthy")
        self.log.info(f"etcd member {name} is healthy ({'joined' if joining else 'started'})")

    def start_apiserver(self) -> None:
        t = TLS_DIR
        tls = lab_cluster.ApiserverTls(
            client_ca=f"{t}/client-ca.crt", cert=f"{t}/serving-kube-apiserver.crt", key=f"{t}/serving-kube-apiserver.key",
            etcd_ca=etcd.SERVER_CA, etcd_cert=f"{t}/etcd/client.crt", etcd_key=f"{t}/etcd/client.key",
            service_account_key=f"{t}/service.crt", service_account_signing_key=f"{t}/service.key",
            requestheader_ca=f"{t}/request-header-ca.crt", proxy_cert=f"{t}/client-auth-proxy.crt", proxy_key=f"{t}/client-auth-proxy.key",
            proxy_cn="system:auth-proxy")
        address = self.cfg.get("advertise-address") or self.node.address
        self.start_part("kube-apiserver", lab_cluster.apiserver_flags(
            address, self.etcd_servers, self.cfg.get("service-cidr"), tls, f"https://kubernetes.default.svc.{self.cfg.get('cluster-domain')}"),
            "kube-apiserver-arg")

    def start_part(self, name: str, flags: dict[str, str], extra: str, binary: str | None = None) -> None:
        argv = [binary or parts.vm_path("kubernetes", name, self.version), *lab_cluster.flag_args(flags, self.cfg.pairs(extra))]
        self.children.start(name, argv, pod_log(name, self.node.name))

    def balance_api(self) -> None:
        """No API server here: 127.0.0.1:6443 balanced over the cluster's, as on an agent."""
        backends = self.joined().json("/v1-rke2/apiservers")
        balancer = lb.LoadBalancer("rke2-api-server-agent-load-balancer", API_PORT, backends, self.log)
        balancer.start()
        self.balancers.append(balancer)

    def wait_api(self) -> None:
        self.wait(self.admin.ready, f"the API server on 127.0.0.1:{API_PORT} to be ready")
        self.log.info("The API server is ready")

    def dns_addon(self) -> lab_cluster.DnsAddon:
        registry = self.cfg.get("system-default-registry")
        if not registry:
            return COREDNS
        from dataclasses import replace

        return replace(COREDNS, image=f"{registry.rstrip('/')}/{COREDNS_IMAGE}")

    def write_kubeconfig(self) -> None:
        path = self.cfg.get("write-kubeconfig") or KUBECONFIG
        mode = int(str(self.cfg.get("write-kubeconfig-mode")), 8)
        Path(CONFIG_DIR).mkdir(parents=True, exist_ok=True)
        text = lab_cluster.kubeconfig(self.pki, "default", f"https://127.0.0.1:{API_PORT}", "client-admin", "server-ca", entry="default")
        if certs.write_file(path, text, mode):
            self.log.info(f"Wrote kubeconfig {path}")
