"""Secret references, resolution errors, and the redactor."""

from __future__ import annotations

import base64
import os
import pickle
import secrets

import pytest

from runbooklib.errors import SecretError
from runbooklib.secrets import Redactor, Secret, SecretRef


@pytest.mark.parametrize("raw,scheme,target", [
    ("env:DB_PASSWORD", "env", "DB_PASSWORD"),
    ("file:/etc/keys/a.json", "file", "/etc/keys/a.json"),
    ("file:../.lab/ssh/id", "file", "../.lab/ssh/id"),
    ("hunter2", "literal", "hunter2"),
    ("envy:thing", "literal", "envy:thing"),
])
def test_parse(raw, scheme, target):
    ref = SecretRef.parse(raw)
    assert (ref.scheme, ref.target) == (scheme, target)


def test_literal_never_printed():
    ref = SecretRef.parse("hunter2")
    assert "hunter2" not in str(ref) and "hunter2" not in repr(ref)


@pytest.mark.parametrize("raw", ["", None, 5, "env:1BAD"])
def test_parse_rejects(raw):
    with pytest.raises(ValueError):
        SecretRef.parse(raw)


def test_resolve_env(monkeypatch):
    monkeypatch.setenv("RB_TEST_SECRET", "v1")
    assert SecretRef.parse("env:RB_TEST_SECRET").resolve() == "v1"


def test_resolve_env_missing_names_field_and_variable(monkeypatch):
    monkeypatch.delenv("RB_TEST_MISSING", raising=False)
    with pytest.raises(SecretError) as info:
        SecretRef.parse("env:RB_TEST_MISSING").resolve(field="database.root_password")
    assert "database.root_password" in str(info.value) and "RB_TEST_MISSING" in str(info.value)


def test_resolve_file_relative_to_base(tmp_path):
    (tmp_path / "k").write_text("s3cret\n")
    assert SecretRef.parse("file:k").resolve(tmp_path) == "s3cret"


def test_resolve_file_missing(tmp_path):
    with pytest.raises(SecretError) as info:
        SecretRef.parse("file:nope").resolve(tmp_path, field="registry.json_key")
    assert "registry.json_key" in str(info.value) and "nope" in str(info.value)


def test_secret_wrapper_hides_value():
    s = Secret("topsecret", "logging.password")
    assert "topsecret" not in repr(s) and "topsecret" not in str(s) and "topsecret" not in f"{s}"
    assert s.reveal() == "topsecret"
    with pytest.raises(TypeError):
        pickle.dumps(s)


def test_redactor_plain_and_base64_forms():
    value = secrets.token_urlsafe(24)
    r = Redactor()
    r.add(value, "db.pw")
    text = f"a {value} b {base64.b64encode(value.encode()).decode()} c {base64.urlsafe_b64encode(value.encode()).decode()}"
    out = r.scrub(text)
    assert value not in out
    assert base64.b64encode(value.encode()).decode().rstrip("=") not in out
    assert out.count("[redacted:db.pw]") == 3


@pytest.mark.parametrize("prefix_len", range(0, 7))
def test_redactor_finds_value_inside_larger_base64_blob(prefix_len):
    value = secrets.token_hex(20)
    r = Redactor()
    r.add(value, "registry.json_key")
    blob = base64.b64encode(os.urandom(prefix_len) + value.encode() + os.urandom(5)).decode()
    scrubbed = r.scrub(blob)
    assert scrubbed != blob and "[redacted:registry.json_key]" in scrubbed


def test_redactor_multiline_key_lines():
    key = "-----BEGIN KEY-----\n" + "\n".join(secrets.token_hex(32) for _ in range(3)) + "\n-----END KEY-----"
    r = Redactor()
    r.add(key, "ssh.key")
    one_line = key.splitlines()[2]
    assert one_line not in r.scrub(f"partial print: {one_line}")


def test_scrub_obj_walks_keys_and_values():
    r = Redactor()
    r.add("zzsecretzz", "x")
    out = r.scrub_obj({"zzsecretzz": ["a zzsecretzz", {"k": "zzsecretzz"}], "n": 1})
    assert "zzsecretzz" not in repr(out)
    assert out["n"] == 1


def test_leaks_reports_label():
    r = Redactor()
    r.add("abcdefgh12345678", "logging.password")
    assert r.leaks(b"xx abcdefgh12345678 yy") == ["logging.password"]
    assert r.leaks(b"clean") == []
