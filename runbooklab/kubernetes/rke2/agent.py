"""``rke2 agent``: a worker node joins with ``server:`` and the token, as RKE2's agent does.

It fetches the server CA (checked against the token), its node certificates and the API servers'
addresses over port 9345 (a wrong token stops it: ``401 Unauthorized``), runs RKE2's two client-side
load balancers (127.0.0.1:6444 over the servers' supervisor port, 127.0.0.1:6443 over their API
servers, :mod:`.lb`), registers its Node with the labels and taints of config.yaml (RKE2 gives an
agent no role label), and runs KWOK for it (LAB SIMULATION: no kubelet). While a server does not
answer it waits (``Waiting to retrieve agent configuration``), trying the servers it knew before.
"""

from __future__ import annotations

import re
import threading
import time

from . import LB_PORT, RELEASE, SUPERVISOR_PORT, Fatal, certs, join, kubernetes_version, lb, node
from .children import Children

SUPERVISOR_LB = "rke2-agent-load-balancer"
API_LB = "rke2-api-server-agent-load-balancer"


def split_pem(data: bytes) -> tuple[bytes, bytes]:
    """A certificate and its key answered together (``client-kubelet.crt``), apart."""
    cert = key = b""
    for m in re.finditer(rb"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----\n?", data, re.S):
        if m.group(1) == b"CERTIFICATE":
            cert += m.group(0)
        elif m.group(1).endswith(b"PRIVATE KEY"):
            key += m.group(0)
    if not cert or not key:
        raise Fatal("the server's answer holds no certificate and key")
    return cert, key


class Agent:
    def __init__(self, cfg, log, stopping: threading.Event):
        self.cfg, self.log, self.stopping = cfg, log, stopping
        self.version = kubernetes_version()
        self.server = cfg.get("server")
        self.node = node.from_config(cfg, lb.host_of(self.server))
        self.token: join.Token | None = None
        self.children = Children(log)
        self.lb_port = int(cfg.get("lb-server-port") or LB_PORT)
        self.api_port = self.lb_port - 1  # as RKE2: the API's balancer just below the supervisor's (6443, 6444)
        self.balancers: dict[str, lb.LoadBalancer] = {}

    def run(self) -> int:
        node.prepare(self.cfg, self.log, self.version)
        self.log.info(f"Starting rke2 agent {self.version}+{RELEASE} ({self.node.name}, {self.node.address}): LAB SIMULATION of RKE2's "
                      "agent (no kubelet: KWOK manages the node)")
        try:
            given = self.cfg.token(self.log, self.stopping)
            if given is None:
                return 0
            self.token = join.parse_token(given)
            client = self.contact()
            if client is None:
                return 0
            self.join(client)
            self.log.info("rke2 agent is up and running")
            refreshed = time.monotonic()
            while not self.stopping.wait(1):
                self.children.check()
                if time.monotonic() - refreshed > 30:
                    refreshed = time.monotonic()
                    self.refresh()
        finally:
            self.children.stop_all(timeout=8)
            for b in self.balancers.values():
                b.close()
        return 0

    def candidates(self) -> list[str]:
        known = [f"https://{lb.host_of(a)}:{SUPERVISOR_PORT}" for a in lb.LoadBalancer.saved(SUPERVISOR_LB)]
        return list(dict.fromkeys([self.server.rstrip("/")] + known))

    def contact(self) -> join.Client | None:
        """The first server that answers with a CA matching the token (a refusal stops the agent)."""
        while True:
            reasons = []
            for url in self.candidates():
                client = join.Client(url, self.token, "node")
                try:
                    client.cacerts()
                    client.get("/v1-rke2/client-ca.crt")  # the token's secret, checked before anything is written
                    return client
                except join.Unreachable as e:
                    reasons.append(str(e))
            self.log.info(f"Waiting to retrieve agent configuration; server is not ready: {'; '.join(reasons)}")
            if self.stopping.wait(5):
                return None

    def join(self, client: join.Client) -> None:
        header = {"RKE2-Node-Name": self.node.name}
        kubelet = split_pem(client.get("/v1-rke2/client-kubelet.crt", header))
        kwok = split_pem(client.get(f"/v1-rke2/{certs.KWOK_NAME}.crt", header))
        certs.write_agent({"server-ca.crt": client.ca, "client-ca.crt": client.get("/v1-rke2/client-ca.crt"),
                           "client-kubelet.crt": kubelet[0], "client-kubelet.key": kubelet[1],
                           f"{certs.KWOK_NAME}.crt": kwok[0], f"{certs.KWOK_NAME}.key": kwok[1]})
        apiservers = client.json("/v1-rke2/apiservers")
        supervisors = [f"{lb.host_of(client.url)}:{SUPERVISOR_PORT}"] + [f"{lb.host_of(a)}:{SUPERVISOR_PORT}" for a in apiservers]
        for name, port, backends in ((SUPERVISOR_LB, self.lb_port, supervisors), (API_LB, self.api_port, apiservers)):
            self.balancers[name] = lb.LoadBalancer(name, port, backends, self.log)
            self.balancers[name].start()
        node.write_files(self.node, self.version, self.api_port)
        if node.register(self.node, self.version, self.log, self.stopping, self.api_port):
            node.start_kwok(self.children, self.node, self.log, self.api_port)

    def refresh(self) -> None:
        """The API servers, asked through the supervisor load balancer (any server that answers)."""
        client = join.Client(f"https://127.0.0.1:{self.lb_port}", self.token, "node")
        try:
            client.cacerts()
            apiservers = client.json("/v1-rke2/apiservers")
        except (join.Unreachable, Fatal, ValueError) as e:
            self.log.info(f"Could not refresh the API server addresses: {e}")
            return
        if apiservers:
            self.balancers[API_LB].set_backends(apiservers)
            self.balancers[SUPERVISOR_LB].set_backends(
                list(dict.fromkeys(self.balancers[SUPERVISOR_LB].backends[:1] + [f"{lb.host_of(a)}:{SUPERVISOR_PORT}" for a in apiservers])))
