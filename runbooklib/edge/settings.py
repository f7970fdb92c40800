"""The ``edge`` section: two NGINX edge nodes behind DNS round-robin, with the CDN host name."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ..errors import Problem
from ..schema import Name, Port, Section, need_host


class Edge(Section):
    hosts: Annotated[list[Name], Field(min_length=1)]
    cdn_hostname: str
    cdn_path: str = "/cdn/"
    http_port: Port = 80
    https_port: Port = 443
    proxy_protocol: bool = True


def rules(p) -> list[Problem]:
    if p.edge is None:
        return []
    out: list[Problem] = []
    for i, name in enumerate(p.edge.hosts):
        out += need_host(p, f"edge.hosts[{i}]", name, "edge")
    return out
