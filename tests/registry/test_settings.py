"""The registry section: its defaults, and each bad value refused naming its field and line."""

from __future__ import annotations

import pytest

from conftest import resolvable_lab_data, write_params
from runbooklib.errors import ParamsError
from runbooklib.params import load_params


def load(tmp_path, rke2=False, **registry):
    data = resolvable_lab_data(tmp_path)
    if rke2:
        data["kubernetes"]["distribution"] = "rke2"
    data["registry"].update(registry)
    return load_params(write_params(tmp_path, data))


def test_defaults_are_a_secret_attached_to_default(tmp_path):
    r = load(tmp_path).registry
    assert (r.mode, r.service_accounts, r.uses_secret, r.uses_node_file) == ("secret", ["default"], True, False)
    both = load(tmp_path, rke2=True, mode="both").registry
    assert (both.uses_secret, both.uses_node_file) == (True, True)


@pytest.mark.parametrize("change, rke2, field, words", [
    ({"mode": "registries-yaml"}, False, "registry.mode", "needs RKE2"),
    ({"mode": "both"}, False, "registry.mode", "kubernetes.distribution is rke1"),
    ({"mode": "file"}, True, "registry.mode", "secret"),
    ({"server": "registry.example.com"}, False, "registry.server", "is not one of Google's registries"),
    ({"namespaces": ["shop", "default", "shop"]}, False, "registry.namespaces[2]", "listed twice (also registry.namespaces[0])"),
    ({"namespaces": []}, False, "registry.namespaces", "none is listed"),
    ({"service_accounts": ["web", "ops/deployer"]}, False, "registry.service_accounts[1]", "namespace ops, which registry.namespaces does not list"),
    ({"service_accounts": ["Web_1"]}, False, "registry.service_accounts[0]", "is not a ServiceAccount"),
    ({"service_accounts": []}, False, "registry.service_accounts", "at least 1"),
])
def test_a_bad_value_is_refused_naming_the_field(tmp_path, change, rke2, field, words):
    with pytest.raises(ParamsError) as e:
        load(tmp_path, rke2=rke2, **change)
    lines = [line for line in str(e.value).splitlines() if f" {field}:" in line]
    assert lines and words in lines[0], str(e.value)
    assert "params.yaml:" in lines[0]  # the file and its line


def test_rke2_takes_the_node_file(tmp_path):
    assert load(tmp_path, rke2=True, mode="registries-yaml").registry.mode == "registries-yaml"
