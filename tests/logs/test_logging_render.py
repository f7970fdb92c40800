"""The logging phase as data: the objects 12 applies (judged by Kubernetes' own schemas), the runtime
decision and the lint, the template and the ISM/ILM bodies field by field, sizing, and the rules."""

from __future__ import annotations

import pytest
import yaml

from conftest import resolvable_lab_data, set_path, write_params
from runbooklib.errors import ParamsError
from runbooklib.logging import fluentd, search, sizing
from runbooklib.params import load_params

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def params(tmp_path, **changes):
    data = resolvable_lab_data(tmp_path)
    for path, value in changes.items():
        set_path(data, path.replace("__", "."), value)
    return load_params(write_params(tmp_path, data))


# -- runtime ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("declared,nodes,want", [
    (None, {"w1": "containerd://1.7.13-k3s1", "w2": "containerd://1.7.13-k3s1"}, ("containerd", "every node reports containerd")),
    (None, {"w1": "docker://20.10.24"}, ("docker", "every node reports docker")),
    ("docker", {"w1": "kwok://v0.8.0", "w2": "kwok://v0.8.0"}, ("docker", "logging.container_runtime (docker); 2 node(s) report")),
    ("containerd", {"w1": "containerd://1.7", "w2": "cri-o://1.30"}, ("containerd", "logging.container_runtime (containerd); 1 node(s)")),
])
def test_the_runtime_comes_from_the_nodes_or_the_parameters(declared, nodes, want):
    runtime, why = fluentd.decide_runtime(declared, nodes)
    assert runtime == want[0] and why.startswith(want[1])


@pytest.mark.parametrize("declared,nodes,message", [
    ("docker", {"w1": "containerd://1.7"}, "logging.container_runtime is docker, but the nodes run containerd"),
    (None, {"w1": "containerd://1.7", "w2": "docker://24.0"}, "the nodes run different container runtimes (containerd: w1; docker: w2)"),
    (None, {"w1": "kwok://v0.8.0"}, "no node reports docker:// or containerd:// (w1 kwok://v0.8.0): set logging.container_runtime"),
])
def test_a_runtime_that_cannot_be_decided_is_refused_with_what_to_do(declared, nodes, message):
    with pytest.raises(fluentd.RuntimeUnknown, match=message.replace("(", r"\(").replace(")", r"\)")):
        fluentd.decide_runtime(declared, nodes)


# -- the drop-in and its lint ------------------------------------------------------------------------

def test_the_drop_in_reads_the_runtimes_field_keeps_the_record_and_casts_the_typed_fields(tmp_path):
    lg = params(tmp_path).logging
    for runtime, key in (("docker", "log"), ("containerd", "message")):
        conf = fluentd.dropin(lg, runtime)
        [f] = fluentd.parse_filters(conf)
        assert f["arg"] == "kubernetes.**" and f["params"] == {"@type": "parser", "key_name": key, "reserve_data": "true",
                                                                 "reserve_time": "true", "emit_invalid_record_to_error": "false"}
        [parse] = f["children"]
        assert parse["params"] == {"@type": "json", "keep_time_key": "true", "types": "elapsed_time:float,status_code:integer,bytes_sent:integer"}
        assert fluentd.lint(conf, runtime, lg.typed_fields) == []


def test_the_lint_catches_the_wrong_field_a_missing_reserve_data_an_unknown_cast_and_an_uncast_field(tmp_path):
    lg = params(tmp_path).logging
    assert [r["problem"] for r in fluentd.lint(fluentd.dropin(lg, "docker"), "containerd", lg.typed_fields)] == \
        ["key_name log, but with containerd the line is in `message`: this filter parses nothing, silently"]
    seed = """# the seed's filter, as it was
<filter kubernetes.**>
  @type parser
  key_name log
  <parse>
    @type json
    types elapsed_time:float,status_code:int
  </parse>
</filter>
"""
    rows = fluentd.lint(seed, "containerd", lg.typed_fields)
    assert [r["where"] for r in rows] == ["runbooklib-json.conf:2"] * 2 + ["runbooklib-json.conf:5"] * 3
    assert "key_name log" in rows[0]["problem"] and "reserve_data is not true" in rows[1]["problem"]
    assert "types status_code:int: Fluentd knows no such cast" in rows[2]["problem"]
    assert [r["fix"] for r in rows[3:]] == ["types …,status_code:integer", "types …,bytes_sent:integer"]
    assert fluentd.lint("<match **>\n  @type stdout\n</match>\n", "docker")[0]["problem"].startswith("no parser filter")


# -- the objects ------------------------------------------------------------------------------------

def test_every_object_is_valid_against_kubernetes_schemas_and_the_password_is_only_in_the_real_secret(tmp_path):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    p = params(tmp_path)
    objects = fluentd.render(p, "docker")
    assert list(objects) == ["namespace", "service account", "cluster role", "cluster role binding", "parser drop-in", "credentials", "daemonset"]
    for obj in objects.values():
        kubernetes_validate.validate(obj, "1.32.0", strict=True)
    ds = objects["daemonset"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in ds["containers"][0]["env"]}
    assert env["FLUENT_OPENSEARCH_HOST"] == "10.77.0.51" and env["FLUENT_OPENSEARCH_PORT"] == "9200"
    assert env["FLUENT_OPENSEARCH_SCHEME"] == "http" and env["FLUENT_CONTAINER_TAIL_PARSER_TYPE"] == "json"
    assert env["FLUENT_OPENSEARCH_PASSWORD"] == {"secretKeyRef": {"name": fluentd.SECRET, "key": "password"}}
    assert {"name": "conf-d", "mountPath": "/fluentd/etc/conf.d", "readOnly": True} in ds["containers"][0]["volumeMounts"]
    assert not any("subPath" in m for m in ds["containers"][0]["volumeMounts"])  # a subPath mount never receives updates
    assert {"operator": "Exists", "effect": "NoSchedule"} in ds["tolerations"]  # the control plane's nodes too
    text = yaml.safe_dump(objects)
    assert "lab-logging-password" not in text and "<secret:logging.password>" in text
    real = fluentd.secret(p, "s3cr3t")
    kubernetes_validate.validate(real, "1.32.0", strict=True)
    assert real["stringData"] == {"user": "fluentd", "password": "s3cr3t"}


def test_containerd_uses_the_cri_parser_and_elasticsearch_its_own_image_and_variables(tmp_path):
    p = params(tmp_path, logging__engine="elasticsearch", logging__endpoint="https://es.logging.svc:9243")
    ds = fluentd.render(p, "containerd")["daemonset"]["spec"]["template"]
    env = {e["name"]: e.get("value") for e in ds["spec"]["containers"][0]["env"]}
    assert ds["spec"]["containers"][0]["image"] == "fluent/fluentd-kubernetes-daemonset:v1.19-debian-elasticsearch8-1"
    assert env["FLUENT_ELASTICSEARCH_HOST"] == "es.logging.svc" and env["FLUENT_ELASTICSEARCH_PORT"] == "9243"
    assert env["FLUENT_CONTAINER_TAIL_PARSER_TYPE"] == "cri"
    # a new drop-in is a new pod template: the pods roll, as Fluentd reads its configuration once
    other = fluentd.render(params(tmp_path, logging__typed_fields={"status_code": "integer"}), "containerd")["daemonset"]
    assert other["spec"]["template"]["metadata"]["annotations"] != ds["metadata"]["annotations"]


def test_without_credentials_there_is_no_secret(tmp_path):
    data = resolvable_lab_data(tmp_path)
    del data["logging"]["user"], data["logging"]["password"]
    objects = fluentd.render(load_params(write_params(tmp_path, data)), "docker")
    assert "credentials" not in objects
    assert not any("USER" in e["name"] for e in objects["daemonset"]["spec"]["template"]["spec"]["containers"][0]["env"])


def test_one_row_per_node_names_the_nodes_without_a_fluentd_pod():
    nodes = [{"name": "cp1"}, {"name": "w1"}, {"name": "w2"}]
    pods = [{"name": "fluentd-a", "node": "cp1", "phase": "Running", "ready": True}, {"name": "fluentd-b", "node": "w1", "phase": "Pending", "ready": False},
            {"name": "fluentd-c", "node": "gone", "phase": "Running", "ready": True}]
    rows = fluentd.daemonset_rows(nodes, pods)
    assert [(r["node"], r["status"]) for r in rows] == [("cp1", "ok"), ("w1", "fail"), ("w2", "fail"), ("gone", "fail")]
    assert rows[2]["detail"] == "no Fluentd pod here: this node's logs are not shipped"


# -- the engine's bodies ------------------------------------------------------------------------------

def test_the_template_types_the_fields_and_takes_shards_and_replicas_from_the_sizing(tmp_path):
    lg = params(tmp_path, logging__typed_fields={"status_code": "integer", "elapsed_time": "float", "http.ok": "bool"}).logging
    body = search.template_body(lg)
    assert body["index_patterns"] == ["logs-*"] and body["priority"] == 200
    assert body["template"]["settings"] == {"index.number_of_shards": 1, "index.number_of_replicas": 0}
    assert body["template"]["mappings"] == {"properties": {"@timestamp": {"type": "date"}, "status_code": {"type": "long"},
                                                           "elapsed_time": {"type": "float"}, "http": {"properties": {"ok": {"type": "boolean"}}}}}
    es = params(tmp_path, logging__engine="elasticsearch").logging
    assert search.template_body(es)["template"]["settings"]["index.lifecycle.name"] == "logs-retention"


def test_the_ism_policy_goes_hot_warm_delete_and_attaches_itself_to_new_indices(tmp_path):
    policy = search.ism_policy(params(tmp_path).logging)["policy"]
    assert policy["default_state"] == "hot"
    assert [s["name"] for s in policy["states"]] == ["hot", "warm", "delete"]
    hot, warm, delete = policy["states"]
    assert hot["actions"] == [] and hot["transitions"] == [{"state_name": "warm", "conditions": {"min_index_age": "3d"}}]
    assert warm["actions"] == [{"read_only": {}}, {"force_merge": {"max_num_segments": 1}}]
    assert warm["transitions"] == [{"state_name": "delete", "conditions": {"min_index_age": "90d"}}]
    assert delete == {"name": "delete", "actions": [{"delete": {}}], "transitions": []}
    assert policy["ism_template"] == [{"index_patterns": ["logs-*"], "priority": 100}]


def test_the_ilm_policy_has_phases_and_no_close(tmp_path):
    phases = search.ilm_policy(params(tmp_path, logging__warm_after_days=7, logging__delete_after_days=30).logging)["policy"]["phases"]
    assert list(phases) == ["hot", "warm", "delete"]
    assert phases["hot"] == {"min_age": "0ms", "actions": {"set_priority": {"priority": 100}}}
    assert phases["warm"] == {"min_age": "7d", "actions": {"readonly": {}, "forcemerge": {"max_num_segments": 1}, "set_priority": {"priority": 50}}}
    assert phases["delete"] == {"min_age": "30d", "actions": {"delete": {}}}
    assert "close" not in str(phases)


def test_without_an_engine_both_bodies_are_rendered_for_review_and_blocked_with_the_reason(tmp_path):
    p = params(tmp_path)
    steps = search.plan(p, None, {"reachable": False, "error": "ConnectionError: refused"})
    assert [s.operation for s in steps] == ["index template", "retention policy"] and all(s.command is None for s in steps)
    assert "does not answer (ConnectionError: refused): rendered for review" in steps[0].blocked
    assert steps[0].host == "elk1" and '"index_patterns": [' in steps[0].diff
    verdict, problems = search.verdict(steps, "pending", "", [])
    assert verdict == "not ready" and len(problems) == 1


# -- sizing ---------------------------------------------------------------------------------------------

def test_sizing_disk_heap_and_shards(tmp_path):
    lg = params(tmp_path, logging__replicas=1, logging__sizing={"daily_gb": 40, "container_memory_gb": 16, "nodes": 3}).logging
    z = sizing.size(lg)
    assert (z.daily_primary_gb, z.daily_stored_gb, z.kept_gb) == (44.0, 88.0, 7920.0)
    assert z.disk_gb == 10560.0 and z.disk_per_node_gb == 3520.0 and z.heap_gb == 8.0 and z.primary_shards == 2
    assert z.shards_kept == 360 and z.shards_per_node == 120.0 and z.shard_ceiling_per_node == 160 and not sizing.warnings(lg)
    big = params(tmp_path, logging__sizing={"daily_gb": 10, "container_memory_gb": 96, "nodes": 1}, logging__replicas=0).logging
    assert sizing.size(big).heap_gb == 31.0 and "capped at 31 GB" in sizing.rows(big)[5]["how"]
    many = params(tmp_path, logging__sizing={"daily_gb": 500, "container_memory_gb": 2, "nodes": 2}, logging__replicas=1).logging
    assert sizing.warnings(many) and "above the rule of thumb of 20 for a 1 GB heap" in sizing.warnings(many)[0]
    assert sizing.rows(many)[-1]["status"] == "warn"
    xs, total, warm = sizing.volume_curve(lg)
    assert total[90] == total[-1] == 7920.0 and total[1] == 88.0 and warm[3] == 0 and warm[4] == 88.0


def test_a_missing_samples_file_is_an_error_naming_the_field(tmp_path):
    from runbooklib.errors import RunbookError
    from runbooklib.logging.settings import sample_lines

    with pytest.raises(RunbookError, match=r"logging.samples: .*/nowhere/app.jsonl cannot be read \(No such file or directory\): put a few"):
        sample_lines(params(tmp_path, logging__samples="nowhere/app.jsonl"))
    assert len(sample_lines(params(tmp_path, logging__samples=str(ROOT / "params" / "samples" / "app-logs.jsonl")))) == 9


# -- the rules --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes,field,message", [
    ({"logging.user": None}, "logging.user", "set both logging.user and logging.password"),
    ({"logging.replicas": 1}, "logging.replicas", "1 replica(s) need at least 2 data nodes"),
    ({"logging.typed_fields": {"message": "integer"}}, "logging.typed_fields.message", "is a field Fluentd or the Kubernetes metadata filter sets"),
    ({"logging.samples": "samples.csv"}, "logging.samples", "name a text file of log lines"),
    ({"logging.typed_fields": {"status_code": "int"}}, "logging.typed_fields.status_code", "'int' is not allowed; expected 'integer', 'float'"),
    ({"logging.endpoint": "opensearch:9200"}, "logging.endpoint", "does not have the expected form"),
])
def test_bad_logging_parameters_are_refused_naming_the_field(tmp_path, changes, field, message):
    data = resolvable_lab_data(tmp_path)
    for path, value in changes.items():
        if value is None:
            del data["logging"][path.split(".")[1]]
        else:
            set_path(data, path, value)
    with pytest.raises(ParamsError) as info:
        load_params(write_params(tmp_path, data))
    problems = [(p.path, p.message) for p in info.value.problems]
    assert any(f == field and message in m for f, m in problems), problems
