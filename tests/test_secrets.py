"""Secret references, resolution errors, and the redactor."""

from __future__ import annotations

import base64
import html
import json
import os
import pickle
import secrets
import time
import urllib.parse

import pytest
import yaml

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
    assert repr(s) == "Secret(logging.password: ********)" and "topsecret" not in f"{s!r}"
    assert s.reveal() == "topsecret"
    with pytest.raises(TypeError):
        pickle.dumps(s)


@pytest.mark.parametrize("turn_into_text", [
    str, lambda s: f"{s}", lambda s: "pw=%s" % s, lambda s: "{}".format(s), bytes,
    lambda s: json.dumps({"pw": s}), lambda s: json.dumps({"pw": s}, default=str), lambda s: "pw=" + s,
], ids=["str", "f-string", "percent", "format", "bytes", "json", "json-default-str", "concat"])
def test_a_secret_refuses_to_become_text_by_accident(turn_into_text):
    from runbooklib.errors import SecretTextError

    s = Secret("topsecret", "database.root_password")
    with pytest.raises(TypeError) as info:
        turn_into_text(s)
    assert "topsecret" not in str(info.value)
    if isinstance(info.value, SecretTextError):
        assert "database.root_password" in str(info.value) and ".reveal()" in str(info.value)


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


# -- secrets in their real shapes, in every form they are written out -----------------------------

CANARY = "cAn&<ry>\"q'\\" + secrets.token_hex(10)  # & < > " ' and a backslash: every escape differs

FORMS = {
    "plain": lambda v: v,
    "base64": lambda v: base64.b64encode(v.encode()).decode(),
    "base64-urlsafe": lambda v: base64.urlsafe_b64encode(v.encode()).decode().rstrip("="),
    "json-escaped": lambda v: json.dumps(v)[1:-1],
    "html-escaped": html.escape,
    "html-escaped-markupsafe": lambda v: html.escape(v).replace("&#x27;", "&#39;").replace("&quot;", "&#34;"),
    "url-encoded": lambda v: urllib.parse.quote(v, safe=""),
    "url-encoded-plus": urllib.parse.quote_plus,
    "hex": lambda v: v.encode().hex(),
    "repr": lambda v: repr(v)[1:-1],
    "html-of-json": lambda v: html.escape(json.dumps(v)[1:-1]),
}


@pytest.mark.parametrize("form", FORMS)
def test_every_form_of_a_secret_is_scrubbed_and_caught(form):
    r = Redactor()
    r.add(CANARY, "logging.password")
    shown = FORMS[form](CANARY)
    text = f"before {shown} after"
    assert r.scrub(text) == "before [redacted:logging.password] after"
    assert r.leaks(text.encode()) == ["logging.password"]


def _pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _body_lines(pem: str) -> list[str]:
    return [ln for ln in pem.splitlines() if ln and "-----" not in ln and len(ln) >= 16]


def test_service_account_key_with_escaped_newlines_is_taken_apart():
    pem = _pem()
    key = json.dumps({"type": "service_account", "project_id": "p", "private_key_id": secrets.token_hex(20),
                      "private_key": pem, "client_email": "puller@p.iam.gserviceaccount.com"})
    assert "\\n" in key and "\n" not in key  # one line, the PEM's newlines escaped
    r = Redactor()
    r.add(key, "registry.json_key")
    # what a cell naturally does: json.loads(key)["private_key"], printed, shown, logged
    printed = json.loads(key)["private_key"]
    for shown in (printed, repr(printed), json.dumps(printed), html.escape(printed)):
        out = r.scrub(shown)
        assert not any(line in out for line in _body_lines(pem)), out[:200]
    for line in _body_lines(pem):
        for form, encode in FORMS.items():
            assert r.scrub(f"x {encode(line)} y") != f"x {encode(line)} y", (form, line)
    assert json.loads(key)["private_key_id"] not in r.scrub(key + json.loads(key)["private_key_id"])
    assert "puller@p.iam.gserviceaccount.com" in r.scrub("puller@p.iam.gserviceaccount.com")  # not a secret


def test_kubeconfig_token_and_client_key_are_needles():
    pem, token = _pem(), secrets.token_urlsafe(32)
    kubeconfig = yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {"server": "https://10.77.0.11:6443"}}],
        "users": [{"name": "admin", "user": {"token": token,
                                             "client-key-data": base64.b64encode(pem.encode()).decode()}}],
    })
    r = Redactor()
    r.add(kubeconfig, "kubernetes.kubeconfig")
    assert token not in r.scrub(f"Authorization: Bearer {token}")
    assert not any(line in r.scrub(pem) for line in _body_lines(pem))
    assert "https://10.77.0.11:6443" in r.scrub("server https://10.77.0.11:6443")


def test_dockerconfigjson_password_and_auth_are_needles():
    password = "Reg!stry-" + secrets.token_hex(8)
    auth = base64.b64encode(f"_json_key:{password}".encode()).decode()
    config = json.dumps({"auths": {"europe-docker.pkg.dev": {"username": "_json_key", "password": password,
                                                             "auth": auth}}})
    r = Redactor()
    r.add(config, "registry.dockerconfigjson")
    for shown in (password, auth, urllib.parse.quote(password, safe=""), password.encode().hex()):
        assert r.scrub(f"[{shown}]") == "[[redacted:registry.dockerconfigjson]]"
    assert "_json_key" in r.scrub("user _json_key")


def test_many_needles_scrub_a_large_text_quickly():
    r = Redactor()
    for i in range(4):
        r.add(_pem(), f"key{i}")
    text = ("ordinary output line with numbers 0123456789abcdef and words\n" * 80_000)  # about 5 MB
    start = time.monotonic()
    assert r.scrub(text) == text
    assert r.leaks(text.encode()) == []
    assert time.monotonic() - start < 30
