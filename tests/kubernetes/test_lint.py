"""Lint as data: one case per rule that fires it, the seed's own slips, and clean files (tests/data/kubernetes/lint/*.yaml).

A case is either a committed parameter file (``params``) with changes (``set``), linted with
:func:`lint` (and, given ``existing_set``, against the cluster as made: the same file with those
changes, rendered in its distribution's format and read back), or a hand-written cluster.yml
(``cluster_yml``, shown as ``source``) linted with :func:`lint_cluster_yml`. ``expect`` lists every
finding in order as [rule, severity, where]: a finding more or less fails the case.
"""

from __future__ import annotations

import pytest
import yaml
from test_render import case_params

from conftest import ROOT
from runbooklib.kubernetes import rke1, rke2
from runbooklib.kubernetes.lint import RULES, SUPPORTED_MINORS, Finding, lint, lint_cluster_yml
from runbooklib.kubernetes.spec import spec_from_params

DATA = ROOT / "tests" / "data" / "kubernetes" / "lint"
CASES = sorted(DATA.glob("*.yaml"))


def existing_spec(case: dict):
    """The cluster as made: the case's file with ``existing_set`` applied, rendered and read back."""
    spec = spec_from_params(case_params({"params": case["params"], "set": case["existing_set"]}))
    if spec.distribution == "rke1":
        return rke1.read_cluster_yml(rke1.render_cluster_yml(spec, "/keys/id"), "kubernetes-state/cluster.yml")
    return rke2.read_rke2_configs(rke2.render_rke2_configs(spec))


def findings(case: dict) -> list[Finding]:
    if "cluster_yml" in case:
        return lint_cluster_yml(case["cluster_yml"], case["source"], environment_kind=case.get("environment_kind", "production"))
    existing = existing_spec(case) if "existing_set" in case else None
    return lint(case_params(case, validate=False), existing)


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_lint_case(path):
    case = yaml.safe_load(path.read_text())
    found = findings(case)
    assert [[f.rule, f.severity, f.where] for f in found] == case["expect"], "\n".join(map(str, found))
    for f in found:
        assert f.rule in RULES and f.message and f.fix, f


def test_every_rule_has_a_case_that_fires_it():
    fired = {rule for path in CASES for rule, _, _ in yaml.safe_load(path.read_text())["expect"]}
    assert fired == set(RULES), f"rules without a case: {sorted(set(RULES) - fired)}"


def test_every_rule_says_why_and_what_to_do():
    for name, rule in RULES.items():
        assert rule.name == name and len(rule.why) > 40 and rule.fix and rule.severity in ("error", "warning"), name


def test_a_finding_reads_as_one_line_naming_file_field_rule_and_fix():
    case = {"params": "params/example-production.yaml", "set": {"kubernetes.cluster_dns": "10.44.0.10"}}
    (finding,) = lint(case_params(case, validate=False))
    assert str(finding) == ("params/example-production.yaml: kubernetes.cluster_dns: error [cluster-dns-outside-service-range]: "
                            "10.44.0.10 is outside the service range 10.43.0.0/16 (kubernetes.service_cidr); "
                            "use an address inside 10.43.0.0/16, usually 10.43.0.10")


def test_the_seed_slip_says_what_the_controller_gets():
    case = yaml.safe_load((DATA / "seed-service-range-slip.yaml").read_text())
    slip = findings(case)[0]
    assert "kube-controller.service_cluster_ip_range is not set (RKE's default for kube-controller: 10.43.0.0/16)" in slip.message
    assert slip.fix == "set both to the same range (services.kube-controller.service_cluster_ip_range: 10.43.0.0/21)"


def test_what_the_renderer_writes_lints_as_its_parameter_file():
    """A rendered cluster.yml carries nothing lint would judge differently from the parameter file it came from."""
    params = case_params({"params": "params/lab.yaml"})
    from_file = lint_cluster_yml(rke1.render_cluster_yml(params, "/keys/id"), "params/lab.yaml", environment_kind="lab")
    assert [(f.rule, f.severity) for f in from_file] == [(f.rule, f.severity) for f in lint(params)]


def test_unreadable_yaml_is_a_finding_not_a_traceback():
    (f,) = lint_cluster_yml("nodes: [unclosed", "cluster.yml")
    assert (f.rule, f.where) == ("cluster-yml-unreadable", "cluster.yml: line 1")


def test_an_empty_cluster_yml_is_judged_with_rke_defaults():
    assert [f.rule for f in lint_cluster_yml("", "cluster.yml")] == [
        "rke1-end-of-life", "version-not-shipped", "missing-role", "missing-role", "missing-role"]


def test_supported_minors_are_contiguous_and_rke1_stops_at_1_32():
    for minors in SUPPORTED_MINORS.values():
        assert list(minors) == list(range(minors[0], minors[-1] + 1))
    assert SUPPORTED_MINORS["rke1"][-1] == 32
