"""The ``registry`` section: pulling private images from Google's registry with a pull secret."""

from __future__ import annotations

from ..schema import Name, SecretField, Section


class Registry(Section):
    server: str
    secret_name: Name = "registry-pull"
    namespaces: list[Name] = ["default"]
    json_key: SecretField
