"""The cache section's rules as data (tests/data/cache/settings_cases.yaml): each bad case names its field."""

from __future__ import annotations

import pytest
import yaml
from cachedata import DATA, params_from, profile_data

from conftest import delete_path, set_path
from runbooklib.errors import ParamsError

CASES = yaml.safe_load((DATA / "settings_cases.yaml").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_settings_case(tmp_path, case):
    data = profile_data()
    for path in case.get("delete", []):
        delete_path(data, path)
    for path, value in (case.get("set") or {}).items():
        set_path(data, path, value)
    if case.get("ok"):
        p = params_from(tmp_path, data)
        assert p.cache is not None
        return
    with pytest.raises(ParamsError) as e:
        params_from(tmp_path, data)
    named = {pr.path: pr.message for pr in e.value.problems}
    assert case["problem"] in named, f"{case['name']}: problems name {sorted(named)}"
    if case.get("says"):
        assert case["says"] in named[case["problem"]], named[case["problem"]]
    assert "hunter2-literal" not in str(e.value)  # an error names the field, never the value


def test_the_roles_of_the_vm_variant(tmp_path):
    p = params_from(tmp_path, profile_data())
    assert p.cache.roles() == {"cache1": "primary", "cache2": "replica"}
