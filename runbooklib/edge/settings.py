"""The ``edge`` section: two NGINX edge nodes behind DNS round-robin, with the CDN host name.

The edge nodes terminate nothing for the applications: port 443 is passed through by SNI to the
ingress on the workers (the edge sees only the host name in the TLS ClientHello, never a path),
port 80 is proxied to it, and the CDN, which the edge serves itself from the Gluster mount, has a
host name of its own for exactly that reason.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, Field

from ..errors import Problem
from ..schema import Address, Name, Port, Section, need_host

_HOSTNAME = re.compile(r"^(?=.{1,253}$)(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$")


def _hostname(value: str) -> str:
    if not _HOSTNAME.match(value):
        raise ValueError(f"{value!r} is not a DNS host name; write it in lower case with its domain, like app.example.ru")
    return value


def _url_path(value: str) -> str:
    if not re.fullmatch(r"/([A-Za-z0-9._~-]+/)*", value):
        raise ValueError(f"{value!r}: write a URL path that starts and ends with '/', like /cdn/ (letters, digits, . _ ~ -)")
    return value


def _file_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*", value) or ".." in value.split("/"):
        raise ValueError(f"{value!r}: name a file relative to the CDN path, like probe.txt (no '..', no leading '/')")
    return value


HostName = Annotated[str, AfterValidator(_hostname)]
UrlPath = Annotated[str, AfterValidator(_url_path)]
# a path on an edge node, written into nginx's configuration and shell commands: absolute, no spaces or quotes
NodePath = Annotated[str, Field(pattern=r"^/[A-Za-z0-9_./-]*$")]


class Ingress(Section):
    """Where the edge sends application traffic: the ingress controller's ports on the workers."""

    hosts: list[Name] = []  # empty: every host with role worker
    http_port: Port = 80
    https_port: Port = 443


class Dns(Section):
    """The round-robin records: one A record per edge node for every public name, in the site's zone."""

    zone: HostName  # the zone the names live in (the snippet's $ORIGIN), like example.ru
    ttl_seconds: Annotated[int, Field(ge=1, le=86_400)] = 300
    # resolvers the verification asks from the runbook host (the site's DNS); empty: only the VMs' own resolution
    resolvers: list[Address] = []


class CdnTls(Section):
    """The CDN over HTTPS: the edge terminates TLS for the CDN's name only (its SNI is routed to the edge's own server).

    Every other name stays passed through to the ingress; that is what a host name of its own makes possible.
    """

    certificate: NodePath  # on the edge nodes, PEM (the chain after the certificate)
    key: NodePath
    port: Port = 8443  # the edge's own TLS server for the CDN, on its loopback only


class Failure(Section):
    """An edge-node failure, for incident/edge-node-failure. Set it for that run only."""

    node: Name
    # drill: the runbook stops nginx on the node itself (confirmed); incident: the node is already down, observed
    mode: Literal["drill", "incident"] = "drill"


class Load(Section):
    """The small load the runbooks measure with, from the runbook host against the edge addresses only."""

    requests: Annotated[int, Field(ge=1, le=5_000)] = 300
    seconds: Annotated[float, Field(gt=0, le=120)] = 15.0  # whichever ends first: the count or the time
    concurrency: Annotated[int, Field(ge=1, le=16)] = 4
    timeout_seconds: Annotated[float, Field(gt=0, le=30)] = 2.0


class Edge(Section):
    hosts: Annotated[list[Name], Field(min_length=1)]
    cdn_hostname: HostName
    cdn_path: UrlPath = "/cdn/"
    cdn_root: Optional[NodePath] = None  # what the edge serves under cdn_path; default: storage.gluster.mount_path
    cdn_max_age_seconds: Annotated[int, Field(ge=0, le=31_536_000)] = 86_400  # Cache-Control max-age and Expires
    cdn_probe_file: Annotated[str, AfterValidator(_file_name)] = "probe.txt"  # fetched through each edge by the verification
    # the application host names behind the ingress: passed through by SNI on 443, proxied on 80, in DNS
    hostnames: list[HostName] = []
    cdn_tls: Optional[CdnTls] = None  # unset: the CDN is served over HTTP only (its name over TLS goes to the ingress)
    http_port: Port = 80
    https_port: Port = 443
    proxy_protocol: bool = True  # PROXY protocol toward the ingress's TLS port (the ingress must expect it)
    ingress: Ingress = Ingress()
    max_fails: Annotated[int, Field(ge=0, le=100)] = 2  # failed attempts within fail_timeout that take a worker out
    fail_timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = 10
    connect_timeout_seconds: Annotated[int, Field(ge=1, le=60)] = 3
    dns: Optional[Dns] = None
    load: Load = Load()
    failure: Optional[Failure] = None

    def names(self) -> list[str]:
        """Every public name the edge answers for: the CDN's, then the applications'."""
        return list(dict.fromkeys([self.cdn_hostname, *self.hostnames]))


def cdn_root(p) -> str:
    """The folder the edge serves the CDN from: ``edge.cdn_root``, else the Gluster mount of runbook 06."""
    if p.edge.cdn_root:
        return p.edge.cdn_root
    if p.storage is not None and p.storage.gluster is not None:
        return p.storage.gluster.mount_path
    return "/cdn-data"


def ingress_hosts(p) -> list:
    """The workers the ingress runs on, as inventory hosts."""
    names = p.edge.ingress.hosts or [h.name for h in p.hosts_with("worker")]
    return [p.host(n) for n in names]


def rules(p) -> list[Problem]:
    e = p.edge
    if e is None:
        return []
    out: list[Problem] = []
    for i, name in enumerate(e.hosts):
        out += need_host(p, f"edge.hosts[{i}]", name, "edge")
    if len(set(e.hosts)) != len(e.hosts):
        out.append(Problem("edge.hosts", "a host is named twice; DNS round-robin needs one A record per distinct edge node"))
    if e.http_port == e.https_port:
        out.append(Problem("edge.https_port", f"{e.https_port} is also edge.http_port; HTTP and TLS need their own ports"))
    if e.cdn_tls is not None and e.cdn_tls.port in (e.http_port, e.https_port):
        out.append(Problem("edge.cdn_tls.port", f"{e.cdn_tls.port} is also a public port of the edge; the CDN's TLS server "
                                                "needs a loopback port of its own (8443)"))
    for i, name in enumerate(e.ingress.hosts):
        out += need_host(p, f"edge.ingress.hosts[{i}]", name, "worker")
    # with a kubernetes section, its own rule already names the missing workers
    if not e.ingress.hosts and not p.hosts_with("worker") and getattr(p, "kubernetes", None) is None:
        out.append(Problem("edge.ingress.hosts", "no host has role worker; name the hosts the ingress controller runs on"))
    if e.cdn_hostname in e.hostnames:
        out.append(Problem("edge.hostnames", f"{e.cdn_hostname} is edge.cdn_hostname: under TLS passthrough the edge sees only "
                                             "the host name, so the CDN needs a name of its own, not one of the applications'"))
    if e.dns is not None:
        for name in e.names():
            if not (name == e.dns.zone or name.endswith("." + e.dns.zone)):
                out.append(Problem("edge.dns.zone", f"{name} is not in the zone {e.dns.zone}; records outside it go to another zone"))
    if e.failure is not None:
        out += need_host(p, "edge.failure.node", e.failure.node, "edge")
        if e.failure.node not in e.hosts:
            out.append(Problem("edge.failure.node", f"{e.failure.node} is not in edge.hosts ({', '.join(e.hosts)})"))
        elif len(e.hosts) < 2:
            out.append(Problem("edge.failure", "one edge node: losing it is an outage, not a drill; add a second edge node first"))
    return out
