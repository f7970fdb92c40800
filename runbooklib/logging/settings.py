"""The ``logging`` section: where Fluentd ships logs and how long the indices are kept."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ..errors import Problem
from ..schema import SecretField, Section


class Logging(Section):
    elasticsearch_url: Annotated[str, Field(pattern=r"^https?://")]
    user: str = "elastic"
    password: SecretField
    container_runtime: Literal["containerd", "docker"] = "containerd"
    warm_after_days: Annotated[int, Field(ge=0)] = 3
    delete_after_days: Annotated[int, Field(ge=1)] = 90


def rules(p) -> list[Problem]:
    lg = p.logging
    if lg is not None and lg.delete_after_days <= lg.warm_after_days:
        return [Problem("logging.delete_after_days",
                        f"{lg.delete_after_days} must be later than logging.warm_after_days {lg.warm_after_days}")]
    return []
