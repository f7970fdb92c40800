"""The lab's RKE2 stand-in without a lab: how it reads config.yaml, tokens and schedules, and its artifact."""

from __future__ import annotations

import hashlib
import io
import tarfile
import time

import pytest

from runbooklab.kubernetes.rke2 import Fatal, artifact, config, join, snapshots


def load(tmp_path, text: str, command: str = "server", drop_in: str | None = None, flags=()):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    if drop_in is not None:
        (tmp_path / "config.yaml.d").mkdir(exist_ok=True)
        (tmp_path / "config.yaml.d" / "50-extra.yaml").write_text(drop_in)
    return config.load(command, str(path), list(flags))


def test_config_keys_defaults_drop_ins_and_flags(tmp_path):
    cfg = load(tmp_path, "node-name: cp1\nnode-label: [a=b]\nnode-taint: ['CriticalAddonsOnly=true:NoExecute']\ntls-san: x.example,10.0.0.5\n",
               drop_in="node-label+: [c=d]\ncluster-dns: 10.43.0.20\n", flags=[("node-label", "e=f")])
    assert cfg.labels() == {"a": "b", "c": "d", "e": "f"}  # appended by key+ and by the command line
    assert cfg.taints() == [{"key": "CriticalAddonsOnly", "value": "true", "effect": "NoExecute"}]
    assert cfg.get("tls-san") == ["x.example", "10.0.0.5"] and cfg.get("cluster-dns") == "10.43.0.20"
    assert cfg.get("service-cidr") == "10.43.0.0/16" and cfg.get("etcd-snapshot-retention") == 5  # RKE2's defaults
    assert load(tmp_path, "kubelet-arg: [max-pods=150]\nprofile: cis\n").warnings[0].startswith("profile ")


@pytest.mark.parametrize("text, command, message", [
    ("node-nmae: cp1\n", "server", "flag provided but not defined: -node-nmae"),
    ("tls-san: [a]\nserver: https://10.0.0.1:9345\ntoken: x\n", "agent", "flag provided but not defined: -tls-san"),
    ("node-taint: [dedicated=db]\n", "server", "invalid node-taint 'dedicated=db'"),
    ("node-label: [role]\n", "server", "invalid node-label 'role'"),
    ("server: https://10.0.0.1:9345\n", "server", "--token is required"),
    ("token: x\n", "agent", "--server is required"),
    ("cluster-dns: 10.44.0.10\n", "server", "is not in service-cidr"),
    ("cni: weave\n", "server", "invalid cni 'weave'"),
    ("etcd-snapshot-schedule-cron: '0 */6 * *'\n", "server", "five fields expected"),
    ("disable-etcd: true\n", "server", "disable-etcd needs server"),
    ("data-dir: /data/rke2\n", "server", "keeps its data in /var/lib/rancher/rke2"),
])
def test_config_refusals(tmp_path, text, command, message):
    with pytest.raises(Fatal, match=message.replace("*", r"\*").replace("(", r"\(").replace("+", r"\+")):
        load(tmp_path, text, command)


def test_a_token_file_is_waited_for_as_rke2_waits(tmp_path, monkeypatch):
    """RKE2 waits for a token-file that does not exist yet (4 minutes), then stops: a first server given a
    token-file that nothing writes never starts."""
    import threading

    cfg = load(tmp_path, f"token-file: {tmp_path / 'join-token'}\n")
    stopping = threading.Event()
    monkeypatch.setattr(config, "TOKEN_FILE_WAIT", 0.5)
    with pytest.raises(Fatal, match="Timeout while trying to read the file"):
        cfg.token(stopping=stopping)
    threading.Timer(0.3, lambda: (tmp_path / "join-token").write_text("K10" + "a" * 64 + "::server:s3cret\n")).start()
    assert cfg.token(stopping=stopping).endswith("::server:s3cret")


def test_tokens():
    ca = b"-----BEGIN CERTIFICATE-----\nlab\n-----END CERTIFICATE-----\n"
    full = join.full_token(ca, "s3cret")
    assert full == f"K10{hashlib.sha256(ca).hexdigest()}::server:s3cret"
    assert join.parse_token(full) == join.Token(hashlib.sha256(ca).hexdigest(), "server", "s3cret")
    assert join.parse_token("plain-secret") == join.Token(None, "server", "plain-secret")
    with pytest.raises(Fatal, match="K10<CA hash>"):
        join.parse_token("K10abc::server:x")


def test_cron_schedules():
    every_six = snapshots.parse_cron("0 */6 * * *")
    at = lambda text: time.strptime(text, "%Y-%m-%d %H:%M")
    assert snapshots.matches(every_six, at("2026-11-28 12:00")) and not snapshots.matches(every_six, at("2026-11-28 13:00"))
    assert not snapshots.matches(every_six, at("2026-11-28 12:01"))
    sundays = snapshots.parse_cron("30 2 * * 7")  # 7 is Sunday, as 0
    assert snapshots.matches(sundays, at("2026-11-29 02:30")) and not snapshots.matches(sundays, at("2026-11-28 02:30"))
    with pytest.raises(Fatal, match="outside 0-23"):
        snapshots.parse_cron("0 24 * * *")


def test_the_artifact_is_rke2s_layout_the_same_each_time(tmp_path):
    from runbooklab.kubernetes import parts

    try:
        parts.require("kubernetes")
    except parts.PartMissing as e:
        pytest.skip(f"the artifact is of a built release: {e}")
    first = artifact.build(tmp_path / "a")
    second = artifact.build(tmp_path / "b")
    data = (first / artifact.TARBALL).read_bytes()
    assert data == (second / artifact.TARBALL).read_bytes()  # the same inputs, the same checksum
    assert (first / artifact.SUMS).read_text() == f"{hashlib.sha256(data).hexdigest()}  {artifact.TARBALL}\n"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        unit = tar.extractfile("lib/systemd/system/rke2-server.service").read().decode()
        launcher = tar.extractfile("bin/rke2").read().decode()
    assert {"bin/rke2", "bin/rke2-killall.sh", "bin/rke2-uninstall.sh", "lib/systemd/system/rke2-agent.service"} <= set(names)
    assert "Type=notify" in unit and "ExecStart=/usr/local/bin/rke2 server" in unit and "RestartSec=5s" in unit
    assert "LAB SIMULATION" in unit and "LAB SIMULATION" in launcher and "-m runbooklab.kubernetes.rke2" in launcher
    installer = (first / artifact.INSTALLER).read_text()
    assert installer.startswith("#!/bin/sh") and "INSTALL_RKE2_ARTIFACT_PATH" in installer and "INSTALL_RKE2_TAR_PREFIX" in installer


def test_scheduled_snapshots_keep_the_retention(tmp_path, monkeypatch):
    import subprocess

    from runbooklab.kubernetes.rke2 import Log, etcd

    def save(path):
        (tmp_path / path.rsplit("/", 1)[1]).write_text("snapshot")
        return subprocess.CompletedProcess([], 0, "", "")

    monkeypatch.setattr(etcd, "snapshot_save", save)
    schedule = snapshots.Schedule("0 */6 * * *", 2, str(tmp_path), "cp1", Log(io.StringIO()))
    (tmp_path / "on-demand-cp1-1").write_text("kept: not the schedule's")
    taken = []
    for hour in (0, 1, 6, 6, 12, 18):
        t = time.mktime(time.strptime(f"2026-11-28 {hour:02d}:00", "%Y-%m-%d %H:%M"))
        taken.append(schedule.tick(t) is not None)
        time.sleep(0.01)  # distinct modification times, the order retention goes by
    assert taken == [True, False, True, False, True, True]  # on the schedule, once per minute
    assert sorted(p.name.rsplit("-", 1)[0] for p in tmp_path.iterdir()) == ["etcd-snapshot-cp1", "etcd-snapshot-cp1", "on-demand-cp1"]


def test_registries_yaml_is_read_at_start_naming_hosts_never_a_password(tmp_path):
    from runbooklab.kubernetes.rke2 import Log, node

    out = io.StringIO()
    path = tmp_path / "registries.yaml"
    assert node.private_registries(Log(out), str(path)) == [] and out.getvalue() == ""  # none: nothing said
    path.write_text("configs:\n  gcr.io:\n    auth: {username: _json_key, password: SECRETPASSWORD}\n  eu.gcr.io:\n    auth: {}\n")
    assert node.private_registries(Log(out), str(path)) == ["eu.gcr.io", "gcr.io"]
    assert f"Using private registry config file at {path}" in out.getvalue() and "SECRETPASSWORD" not in out.getvalue()
    for bad in ("configs: [a, b]\n", "registries: {}\n", "configs: {a: [\n"):
        path.write_text(bad)
        with pytest.raises(Fatal, match="failed to parse private registries file"):
            node.private_registries(Log(out), str(path))
