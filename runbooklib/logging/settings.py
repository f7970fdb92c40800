"""The ``logging`` section: Fluentd in the cluster, the search engine it ships to, retention and sizing."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field

from ..errors import Problem
from ..schema import Name, SecretField, Section

URL = Annotated[str, Field(pattern=r"^https?://[^/\s:]+(:\d+)?/?$")]
# Fluentd's `types` casts (its parser's value types) and the field type each one maps to in the index
CASTS = ("integer", "float", "bool", "string", "time", "array")
MAPPING = {"integer": "long", "float": "float", "bool": "boolean", "string": "keyword", "time": "date", "array": "keyword"}
IMAGES = {"opensearch": "fluent/fluentd-kubernetes-daemonset:v1.19-debian-opensearch-1",
          "elasticsearch": "fluent/fluentd-kubernetes-daemonset:v1.19-debian-elasticsearch8-1"}


class Sizing(Section):
    """What the engine must hold: the inputs of the sizing table (``13-log-retention``)."""

    daily_gb: Annotated[float, Field(gt=0)] = 20.0  # raw log volume per day, as Fluentd ships it
    index_ratio: Annotated[float, Field(gt=0, le=5)] = 1.1  # stored size / raw size (mapping, doc values; before replicas)
    container_memory_gb: Annotated[float, Field(gt=0)] = 8.0  # memory of each engine node (container or VM)
    nodes: Annotated[int, Field(ge=1)] = 3  # data nodes
    max_shard_gb: Annotated[float, Field(gt=0)] = 40.0  # the engines' guidance: 10-50 GB per shard
    disk_headroom: Annotated[float, Field(gt=0, lt=1)] = 0.25  # kept free: the low watermark (85 %) plus merges


class Logging(Section):
    engine: Literal["opensearch", "elasticsearch"] = "opensearch"
    endpoint: URL  # what Fluentd in the cluster ships to (a Service name or an address)
    api_endpoint: URL | None = None  # what this runbook talks to, when the cluster's name does not resolve here
    user: str | None = None
    password: SecretField | None = None  # with user: basic authentication, for Fluentd and for this runbook
    verify_tls: bool = True
    namespace: Name = "logging"
    fluentd_image: str | None = None  # default: the fluentd-kubernetes-daemonset image for the engine
    container_runtime: Literal["containerd", "docker"] | None = None  # default: from the nodes (containerRuntimeVersion)
    index_prefix: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,60}$")] = "logs"
    typed_fields: dict[Annotated[str, Field(pattern=r"^[A-Za-z_@][A-Za-z0-9_.@-]{0,100}$")], Literal[CASTS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: {"elapsed_time": "float", "status_code": "integer", "bytes_sent": "integer"})
    samples: str | None = None  # a file of sample application log lines (one per line), relative to this file
    warm_after_days: Annotated[int, Field(ge=0)] = 3
    delete_after_days: Annotated[int, Field(ge=1)] = 90
    replicas: Annotated[int, Field(ge=0, le=5)] = 1
    # false: an engine without its retention plugin is a warning, not a stop (retention is done elsewhere, e.g. a
    # Curator job, or this is a rehearsal whose engine lacks the plugin); the runbook says RETENTION NOT IN FORCE
    retention_required: bool = True
    sizing: Sizing = Field(default_factory=Sizing)

    def api_url(self) -> str:
        return (self.api_endpoint or self.endpoint).rstrip("/")

    def image(self) -> str:
        return self.fluentd_image or IMAGES[self.engine]

    def policy_name(self) -> str:
        return f"{self.index_prefix}-retention"

    def template_name(self) -> str:
        return f"{self.index_prefix}-typed"


def sample_lines(p) -> list[str]:
    """The lines of ``logging.samples`` ([] without it); a file that is not there is an error naming the field,
    raised before the runbook reaches the cluster or the engine."""
    from ..errors import RunbookError

    lg = p.logging
    if not lg.samples:
        return []
    path = p.path(lg.samples)
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise RunbookError(f"{p.source}: logging.samples: {path} cannot be read ({e.strerror}): put a few of the applications' "
                           "log lines there (one per line), or remove logging.samples") from None


def endpoint_parts(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an engine URL, the port defaulting to 9200 as the engines' own."""
    u = urlsplit(url)
    return u.scheme, u.hostname or "", u.port or 9200


def rules(p) -> list[Problem]:
    lg = p.logging
    if lg is None:
        return []
    problems = []
    if lg.delete_after_days <= lg.warm_after_days:
        problems.append(Problem("logging.delete_after_days",
                                f"{lg.delete_after_days} must be later than logging.warm_after_days {lg.warm_after_days}"))
    if (lg.user is None) != (lg.password is None):
        problems.append(Problem("logging.password" if lg.password is None else "logging.user",
                                "set both logging.user and logging.password (basic authentication), or neither"))
    if lg.sizing.nodes <= lg.replicas:
        problems.append(Problem("logging.replicas", f"{lg.replicas} replica(s) need at least {lg.replicas + 1} data nodes "
                                f"(logging.sizing.nodes is {lg.sizing.nodes}): a replica never shares a node with its primary"))
    clash = [f for f in lg.typed_fields if f in ("@timestamp", "kubernetes", "log", "message", "stream", "time")]
    if clash:
        problems.append(Problem(f"logging.typed_fields.{clash[0]}", "is a field Fluentd or the Kubernetes metadata filter sets; "
                                "cast the application's own fields only"))
    if lg.samples and not re.search(r"\.(jsonl|log|txt|ndjson)$", lg.samples):
        problems.append(Problem("logging.samples", f"{lg.samples!r}: name a text file of log lines (.jsonl, .ndjson, .log, .txt)"))

    return problems
