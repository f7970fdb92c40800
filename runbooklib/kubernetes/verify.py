"""Verification of a running cluster against the parameters, with the official kubernetes client and etcdctl.

Every check is a row ``{check, target, status, detail}`` with status ``ok`` or ``fail`` (never guessed:
an API that does not answer is a failing row that says so). What is checked:

- the API's version equals ``kubernetes.version``;
- every cluster host is a Node, Ready, with its roles (``node-role.kubernetes.io/<role>``), labels and taints;
- no Node the parameters do not name;
- the system workloads in ``kube-system``: every Deployment and DaemonSet fully available;
- the cluster DNS Service at ``kubernetes.cluster_dns``;
- etcd: every member healthy and the members exactly the etcd hosts, asked with ``etcdctl`` on an etcd
  node over SSH (RKE1: ``docker exec etcd etcdctl``, the etcd container's own client and certificates; RKE2:
  ``kubernetes.etcdctl`` with RKE2's etcd client certificate).

Right after a change the cluster is still moving (a fresh add-on's pods are being scheduled, pods a drain
evicted start elsewhere, a restored etcd is catching up): :func:`settled` asks again while something fails,
for up to ``kubernetes.settle_seconds``, and keeps the last answer. A run that changed nothing asks once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import RunbookError
from ..schema import K8S_ROLES

DNS_SERVICES = {"rke1": ("kube-system", "kube-dns"), "rke2": ("kube-system", "rke2-coredns-rke2-coredns")}
RKE2_ETCD_TLS = "/var/lib/rancher/rke2/server/tls/etcd"


def etcdctl_command(params) -> str:
    """etcdctl on an etcd node: RKE1's etcd container has its client and certificates; RKE2 ships no etcdctl,
    so ``kubernetes.etcdctl`` (default ``etcdctl``) runs with RKE2's etcd client certificate."""
    k = params.kubernetes
    if k.distribution == "rke1":
        return k.etcdctl or "docker exec etcd etcdctl"
    return (f"ETCDCTL_ENDPOINTS=https://127.0.0.1:2379 ETCDCTL_CACERT={RKE2_ETCD_TLS}/server-ca.crt "
            f"ETCDCTL_CERT={RKE2_ETCD_TLS}/server-client.crt ETCDCTL_KEY={RKE2_ETCD_TLS}/server-client.key {k.etcdctl or 'etcdctl'}")


def row(check: str, target: str, ok: bool, detail: str = "") -> dict:
    return {"check": check, "target": target, "status": "ok" if ok else "fail", "detail": detail}


def api_host(params, kubeconfig: Path) -> str:
    """Where the kubeconfig's API server is, for a message an operator acts on: the inventory host at the server's
    address with the URL (``cp1 (https://10.77.0.11:6443)``); the URL alone when no host has that address (a load
    balancer), the kubeconfig's path when it cannot be read."""
    server = _server(kubeconfig)
    return _named(params, server) if server != str(kubeconfig) else server


def _named(params, server: str) -> str:
    """``cp1 (https://10.77.0.11:6443)``: the inventory host at the URL's address with the URL; the URL alone when none is."""
    from urllib.parse import urlsplit

    address = urlsplit(server).hostname or ""
    hosts = params.inventory.hosts if params is not None else ()
    name = next((h.name for h in hosts if address and (str(h.address) == address or h.name == address)), None)
    return f"{name} ({server})" if name else server


def _server(kubeconfig: Path) -> str:
    """The kubeconfig's server URL, or its path when it cannot be read."""
    from .state import summarize_kubeconfig

    try:
        return summarize_kubeconfig(kubeconfig).server or str(kubeconfig)
    except (RunbookError, OSError):
        return str(kubeconfig)


# a request to the API: connected within 10 s, answered within 60 s (a cut link must not hold a run for TCP's 15 minutes);
# urllib3 retries a connection that failed (three times), each try with these bounds
REQUEST_TIMEOUT = (10, 60)


def _http_error():
    import urllib3

    return urllib3.exceptions.HTTPError


class ApiUnanswered(RunbookError, _http_error()):
    """The Kubernetes API did not answer (refused, unreachable, timed out, cut mid-answer), or answered with a certificate the
    kubeconfig does not trust: the message names where it is (the inventory host and URL) and what to do. Also an urllib3
    ``HTTPError``, what the client raised before, so a caller that turns an API without an answer into a failing row still
    does, now with the host named."""

    def __init__(self, api_at: str, reason: str):
        self.api_at, self.reason = api_at, reason
        if "CERTIFICATE_VERIFY_FAILED" in reason or "certificate verify failed" in reason:
            said = (f"the Kubernetes API on {api_at} answered with a certificate the kubeconfig does not trust ({reason}): "
                    "was the cluster rebuilt? Use its current kubeconfig")
        else:
            said = f"the Kubernetes API on {api_at} does not answer ({reason}): start that host or heal its link"
        super().__init__(said)

    def __reduce__(self):
        return type(self), (self.api_at, self.reason)


def api_failure(e: BaseException) -> str:
    """A failed API call in one line: an :class:`ApiUnanswered` as it says itself (host named), anything else with its type."""
    if isinstance(e, ApiUnanswered):
        return str(e)
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def api_client(kubeconfig: Path, params=None):
    """``(kubernetes.client, an ApiClient)`` for the cluster the kubeconfig reaches. Every request is bounded
    (:data:`REQUEST_TIMEOUT` unless the call sets its own) and, when the API does not answer (or its answer is cut
    off), raises :class:`ApiUnanswered` naming the server the request went to: with ``params``, the inventory host at
    its address and the URL, else the URL (a caller may point the client at another server: the name follows it)."""
    import urllib3
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    class Client(client.ApiClient):
        def call_api(self, method, url, header_params=None, body=None, post_params=None, _request_timeout=None):
            try:
                response = super().call_api(method, url, header_params, body, post_params,
                                            REQUEST_TIMEOUT if _request_timeout is None else _request_timeout)
                response.read()  # the body, here: a link cut or a server stalled mid-answer is named too (no caller streams)
                return response
            except ApiException:
                raise  # the API answered: its status and reason are the caller's to read
            except (urllib3.exceptions.HTTPError, OSError) as e:
                reason = getattr(e, "reason", None) or e
                raise ApiUnanswered(_named(params, self.configuration.host), f"{type(reason).__name__}: {str(reason)[-300:]}") from None

    configuration = type.__call__(client.Configuration)  # a fresh one, not a copy of the process-wide default
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration, persist_config=False)
    return client, Client(configuration=configuration)


def verify_api(params, kubeconfig: Path, version: str | None = None) -> list[dict]:
    """Version, nodes, system workloads and DNS, read through the API with the kubeconfig at ``kubeconfig``.

    ``version``: the release the API must report, ``kubernetes.version`` unless given (an upgrade's step).
    """
    import urllib3

    k = params.kubernetes
    wanted = version or k.version
    try:
        client, api = api_client(kubeconfig, params)
        reported = client.VersionApi(api).get_code().git_version
    except ApiUnanswered as e:
        return [row("API answers", e.api_at, False, str(e)[:400])]
    except (urllib3.exceptions.HTTPError, OSError) as e:
        return [row("API answers", str(kubeconfig), False, f"{type(e).__name__}: {e}"[:300])]
    except Exception as e:  # an ApiException or a broken kubeconfig: say which
        return [row("API answers", str(kubeconfig), False, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")]
    rows = [row("API version", wanted, reported.split("+")[0] == wanted, f"the API reports {reported}")]
    try:
        return rows + _cluster_rows(params, client, api)
    except ApiUnanswered as e:
        return rows + [row("API answers", e.api_at, False, str(e)[:400])]
    except (urllib3.exceptions.HTTPError, OSError, client.ApiException) as e:  # every check is a row, never a crash
        return rows + [row("API answers", str(kubeconfig), False, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")]


def _cluster_rows(params, client, api) -> list[dict]:
    k = params.kubernetes
    rows: list[dict] = []
    v1 = client.CoreV1Api(api)
    nodes = {n.metadata.name: n for n in v1.list_node().items}
    wanted = [h for h in params.hosts if h.in_cluster]
    for h in wanted:
        rows += node_rows(h, nodes.get(h.name), k.distribution)
    extra = sorted(set(nodes) - {h.name for h in wanted})
    rows.append(row("no unexpected nodes", "cluster", not extra, ", ".join(extra) and f"not in the parameters: {', '.join(extra)}"))
    apps = client.AppsV1Api(api)
    for d in apps.list_namespaced_deployment("kube-system").items:
        want, have = d.spec.replicas or 0, d.status.available_replicas or 0
        rows.append(row("system workload", f"deployment/{d.metadata.name}", have >= want, f"{have}/{want} available"))
    for ds in apps.list_namespaced_daemon_set("kube-system").items:
        want, have = ds.status.desired_number_scheduled or 0, ds.status.number_available or 0
        rows.append(row("system workload", f"daemonset/{ds.metadata.name}", have >= want, f"{have}/{want} available"))
    ns, name = DNS_SERVICES[k.distribution]
    try:
        ip = v1.read_namespaced_service(name, ns).spec.cluster_ip
        rows.append(row("cluster DNS", f"{ns}/{name}", ip == str(k.cluster_dns), f"at {ip}, expected {k.cluster_dns}"))
    except client.ApiException as e:
        rows.append(row("cluster DNS", f"{ns}/{name}", False, f"not found ({e.status}): the DNS add-on is missing"))
    return rows


def node_roles(distribution: str, labels: dict, taints: set[str]) -> list[str]:
    """The cluster roles a Node shows, in each distribution's words.

    RKE1 labels ``node-role.kubernetes.io/{etcd,controlplane,worker}``. RKE2 labels servers
    ``control-plane`` and ``etcd`` and agents nothing (the API server refuses a ``node-role`` label from a
    node); a node that takes workloads is one without RKE2's server-only taint ``CriticalAddonsOnly``.
    """
    def has(name: str) -> bool:
        return labels.get(f"node-role.kubernetes.io/{name}") == "true"

    if distribution == "rke1":
        return [r for r in K8S_ROLES if has(r)]
    from .rke2 import SERVER_ONLY_TAINT

    shown = {"etcd": has("etcd"), "controlplane": has("control-plane"), "worker": _taint(SERVER_ONLY_TAINT) not in taints}
    return [r for r in K8S_ROLES if shown[r]]


def node_rows(host, node, distribution: str = "rke1") -> list[dict]:
    if node is None:
        return [row("node registered", host.name, False, "no Node of this name: did it join?")]
    conditions = {c.type: c for c in node.status.conditions or []}
    ready = conditions.get("Ready")
    out = [row("node Ready", host.name, bool(ready and ready.status == "True"),
               f"Ready={ready.status} ({ready.reason})" if ready else "no Ready condition yet")]
    labels = node.metadata.labels or {}
    have = {f"{t.key}={t.value or ''}:{t.effect}" for t in node.spec.taints or []}
    roles = node_roles(distribution, labels, have)
    want = [r for r in K8S_ROLES if r in host.roles]
    out.append(row("node roles", host.name, roles == want, f"{','.join(roles) or 'none'}; expected {','.join(want)}"))
    wrong = {k: labels.get(k) for k, v in host.labels.items() if labels.get(k) != v}
    out.append(row("node labels", host.name, not wrong, ", ".join(f"{k}={v!r}" for k, v in wrong.items()) and
                   f"different or missing: {', '.join(f'{k} is {v!r}' for k, v in wrong.items())}"))
    missing = [t for t in host.taints if _taint(t) not in have]
    out.append(row("node taints", host.name, not missing, missing and f"missing: {', '.join(missing)}"))
    return out


def _taint(text: str) -> str:
    key_value, _, effect = text.rpartition(":")
    key, _, value = key_value.partition("=")
    return f"{key}={value}:{effect}"


def verify_etcd(params, fleet, etcdctl: str | None = None) -> list[dict]:
    """Member health and membership, asked on the first etcd host that answers."""
    etcdctl = etcdctl or etcdctl_command(params)
    hosts = params.hosts_with("etcd")
    last = ""
    for h in hosts:
        health = fleet.run_on(h, f"{etcdctl} endpoint health --cluster -w json")
        members = fleet.run_on(h, f"{etcdctl} member list -w json")
        if health.exit_code is None or members.exit_code is None:
            last = f"{h.name}: {health.error or members.error}"
            continue
        return etcd_rows(params, h.name, health.stdout, members.stdout, health.stderr or members.stderr)
    return [row("etcd members", "etcd", False, f"no etcd host answered over SSH ({last})")]


def etcd_rows(params, asked: str, health_json: str, members_json: str, stderr: str = "") -> list[dict]:
    try:
        health = json.loads(health_json or "[]")
        members = json.loads(members_json or "{}").get("members", [])
    except ValueError:
        return [row("etcd members", asked, False, f"etcdctl did not answer in JSON: {stderr.strip()[-300:]}")]
    addresses = {str(h.address): h.name for h in params.hosts_with("etcd")}
    rows = []
    for e in health:
        host = next((name for a, name in addresses.items() if f"//{a}:" in e.get("endpoint", "")), e.get("endpoint"))
        rows.append(row("etcd member healthy", host, bool(e.get("health")), e.get("error", "") or f"took {e.get('took', '?')}"))
    seen = {name for m in members for a, name in addresses.items() if any(f"//{a}:" in u for u in m.get("peerURLs", []))}
    missing, extra = sorted(set(addresses.values()) - seen), len(members) - len(seen)
    rows.append(row("etcd membership", f"asked on {asked}", not missing and not extra,
                    (f"missing: {', '.join(missing)}. " if missing else "") + (f"{extra} member(s) not in the parameters" if extra else "")
                    or f"{len(members)} members: {', '.join(sorted(seen))}"))
    return rows


def recap(rows: list[dict]) -> list[dict]:
    """One line per kind of check, as a recap reads: how many passed, which failed and why."""
    out: dict[str, dict] = {}
    for r in rows:
        line = out.setdefault(r["check"], {"check": r["check"], "ok": 0, "failed": 0, "failing": []})
        if r["status"] == "ok":
            line["ok"] += 1
        else:
            line["failed"] += 1
            line["failing"].append(f"{r['target']}: {r['detail']}")
    return [{**line, "failing": "; ".join(line["failing"])} for line in out.values()]


def verify_cluster(params, fleet, kubeconfig: Path, changed: bool, on_line: Callable[[str], None] = print) -> list[dict]:
    """The API's and etcd's checks; when this run ``changed`` the cluster, given ``kubernetes.settle_seconds`` to settle."""
    return settled(lambda: verify_api(params, kubeconfig) + verify_etcd(params, fleet),
                   params.kubernetes.settle_seconds if changed else 0, on_line)


# failing checks that time can mend after a change (pods being scheduled, a node or member catching up); any
# other failure (a Node that never registered, wrong roles, an unexpected node) will not mend by waiting
SETTLING = ("API answers", "system workload", "cluster DNS", "node Ready", "node version", "etcd member healthy", "etcd membership")


def settled(ask: Callable[[], list[dict]], settle: float, on_line: Callable[[str], None] = print,
            interval: float = 5.0, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
            ) -> list[dict]:
    """The rows ``ask()`` returns, asked again every ``interval`` seconds while some fail, for up to ``settle``
    seconds (0: once), and only while every failing check is one that time can mend (:data:`SETTLING`). Says on
    ``on_line`` what it waits for and, at the end, how long it waited; the last answer is the one returned."""
    started, said = clock(), None
    while True:
        rows = ask()
        bad = failing(rows)
        waited = clock() - started
        lasting = [r for r in rows if r["status"] != "ok" and r["check"] not in SETTLING]
        if not bad or lasting or waited + interval > settle:
            break
        if bad != said:  # say what it waits for when that changes, not every few seconds
            on_line(f"waiting up to {settle:.0f} s for the cluster to settle: {len(bad)} check(s) fail, first {bad[0]}")
            said = bad
        sleep(interval)
    if waited >= interval:
        on_line(f"after {waited:.0f} s: " + ("every check passes" if not bad else f"{len(bad)} check(s) still fail"))
    return rows


def failing(rows: list[dict]) -> list[str]:
    return [f"{r['check']} {r['target']}: {r['detail']}" for r in rows if r["status"] != "ok"]


def status_colour(rows: list[dict]) -> Callable[[int, str], str]:
    return lambda i, col: ("ok" if rows[i]["status"] == "ok" else "bad") if col == "status" else ""
