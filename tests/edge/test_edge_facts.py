"""The edge facts' parsers on recorded outputs (tests/data/edge/facts/): this machine before anything was configured,
a lab edge node after runbook 09, and the same node with nginx stopped."""

from __future__ import annotations

import pytest

from conftest import ROOT
from runbooklib.edge import facts
from runbooklib.phase.facts import parse_host_output

DATA = ROOT / "tests" / "data" / "edge" / "facts"


def read(name: str) -> tuple[dict, dict]:
    return parse_host_output(facts.FACTS, (DATA / name).read_text())


def test_a_debian_machine_with_the_packages_and_nothing_configured():
    f, errors = read("debian12-packages-installed-nothing-configured.txt")
    assert errors == {}
    assert f["nginx"] == {"installed": True, "version": "nginx/1.22.1", "stream_module": True, "curl": True}
    assert f["files"] == {path: None for path in facts.MANAGED}
    assert f["default_site"] is True and f["running_config"] == ""
    assert f["service"] == {"active": "unknown", "enabled": "enabled"}  # is-active said nothing here: unknown, not a guess
    assert f["cdn_root"] == {"exists": False, "fstype": "", "probe": False}


def test_a_lab_edge_node_after_09():
    f, errors = read("lab-edge1-configured-and-running.txt")
    assert errors == {}
    assert f["default_site"] is False and f["service"] == {"active": "active", "enabled": "enabled"}
    http = f["files"]["/etc/nginx/conf.d/runbooklib-edge.conf"]
    assert "ssl_preread" in f["files"]["/etc/nginx/modules-enabled/90-runbooklib-edge-stream.conf"] and "proxy_pass" in http
    assert f["running_config"] and f"configuration {f['running_config']}" in http  # the running id is the one on disk
    assert f["cdn_root"] == {"exists": True, "fstype": "", "probe": False}


def test_the_same_node_with_nginx_stopped():
    f, _ = read("lab-edge1-configured-nginx-stopped.txt")
    assert f["service"]["active"] == "inactive" and f["running_config"] == ""


@pytest.mark.parametrize("text, value", [("0123456789ab\n", "0123456789ab"), ("<html>404</html>", ""), ("", ""),
                                         ("0123456789abc", "")])
def test_the_running_id_is_only_what_the_edge_answers(text, value):
    assert facts.parse_running(text) == value


def test_a_cut_file_list_is_an_error_not_an_empty_node():
    with pytest.raises(ValueError, match="no answer for"):
        facts.parse_files("/etc/nginx/conf.d/runbooklib-edge.conf absent\n")
    assert facts.parse_cdn_root("dir=yes\nfstype=fuse.glusterfs\nprobe=yes\n") == {"exists": True, "fstype": "fuse.glusterfs", "probe": True}
