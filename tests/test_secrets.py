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


# -- key material told apart by shape (runbooklib.keyfiles) ------------------------------------------

def _keys():
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    ed = ed25519.Ed25519PrivateKey.generate()
    pub = ed.public_key().public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH).decode()
    ecdsa = ec.generate_private_key(ec.SECP256R1())
    return {
        "public": pub,
        "openssh": ed.private_bytes(s.Encoding.PEM, s.PrivateFormat.OpenSSH, s.NoEncryption()).decode(),
        "pkcs8": ed.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()).decode(),
        "ec": ecdsa.private_bytes(s.Encoding.PEM, s.PrivateFormat.TraditionalOpenSSL, s.NoEncryption()).decode(),
    }


def test_public_key_lines_are_told_from_everything_else():
    from runbooklib.keyfiles import public_keys_problem

    k = _keys()
    assert public_keys_problem(k["public"] + " me@ws") is None
    assert public_keys_problem(f'# deploy\nfrom="10.0.0.0/8,a b",no-pty {k["public"]}\n\n{k["public"]}\n') is None
    for name in ("openssh", "pkcs8", "ec"):
        assert "PRIVATE" in public_keys_problem(k[name])
    assert "line 2 of 2" in public_keys_problem(k["public"] + "\nroot:$y$j9T$abc:19000:0:99999:7:::\n")
    forged = "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x07ssh-rsa").decode()  # the blob says another type
    assert public_keys_problem(forged) is not None
    assert "empty" in public_keys_problem("\n# nothing\n")


def test_private_keys_and_known_hosts_are_recognised():
    from runbooklib.keyfiles import known_hosts_problem, private_key_problem

    k = _keys()
    for name in ("openssh", "pkcs8", "ec"):
        assert private_key_problem(k[name]) is None
    assert "public key" in private_key_problem(k["public"])
    assert "not a private key" in private_key_problem("root:x:0:0:root:/root:/bin/bash\n")
    blob = k["public"].split()[1]
    good = f"10.0.0.1 {k['public']}\n[h.example]:2222,10.0.0.2 {k['public']} c\n@cert-authority *.x {k['public']}\n" \
           f"|1|c2FsdA==|aGFzaA== ssh-ed25519 {blob}\n"
    assert known_hosts_problem(good) is None
    assert "line 1 of 1" in known_hosts_problem("root:$y$j9T$abc:19000:0:99999:7:::\n")
    assert "PRIVATE" in known_hosts_problem(k["openssh"])
    assert "pins no host key" in known_hosts_problem("")


def test_a_fifo_secret_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pw"
    os.mkfifo(fifo)
    with pytest.raises(SecretError, match="is not a regular file"):
        SecretRef.parse("file:pw").resolve(tmp_path, field="database.root_password")
