"""Telling SSH key material apart without ever showing it: public keys, private keys, known-hosts files.

A parameter field that expects a public key and is handed a private one would copy the private key
onto every host (``vm.deploy_user.authorized_key``); ``/etc/shadow`` given as a known-hosts file
would be read and half-parsed. These pure functions look at the shape of a text and return
``None`` when it is what the field needs, or a sentence saying what it is instead. The sentences
name line numbers and key types, never content, so they are safe to print and to archive.

    >>> public_keys_problem("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP... me@host")  # doctest: +SKIP
    None
"""

from __future__ import annotations

import base64
import binascii
import re
import struct

PUBLIC_KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
)
_CERT_TYPES = tuple(t.replace("@openssh.com", "") + "-cert-v01@openssh.com" for t in PUBLIC_KEY_TYPES)
_KEY_TYPES = frozenset(PUBLIC_KEY_TYPES + _CERT_TYPES)

_PRIVATE_PEM = re.compile(
    r"-----BEGIN (OPENSSH |RSA |DSA |EC |ENCRYPTED |)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", re.DOTALL)
_ANY_PRIVATE_MARK = re.compile(r"PRIVATE KEY-----|^PuTTY-User-Key-File-", re.MULTILINE)


def _blob_type(b64: str) -> str | None:
    """The key type written inside a base64 key blob, or None when it is not one."""
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    if length > 64 or len(blob) < 4 + length:
        return None
    try:
        return blob[4:4 + length].decode("ascii")
    except UnicodeDecodeError:
        return None


def is_public_key_line(line: str) -> bool:
    """True for one authorized_keys-style line: ``[options] TYPE BASE64 [comment]`` with a matching blob."""
    tokens = line.split()
    for i, token in enumerate(tokens[:-1]):  # options (from="a b",...) come first and may hold spaces
        if token in _KEY_TYPES:
            return _blob_type(tokens[i + 1]) == token
    return False


def looks_private(text: str) -> bool:
    """True when ``text`` holds a private key in any usual format (OpenSSH, PEM, PKCS#8, PuTTY)."""
    return bool(_ANY_PRIVATE_MARK.search(text))


def _meaningful_lines(text: str) -> list[tuple[int, str]]:
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def public_keys_problem(text: str) -> str | None:
    """None if ``text`` is one or more public key lines and nothing else; else what is wrong."""
    if looks_private(text):
        return ("holds a PRIVATE key; give the public half (the .pub file, or the line "
                "`ssh-keygen -y -f KEY` prints) and keep the private key where it is")
    lines = _meaningful_lines(text)
    if not lines:
        return "is empty; give a public key line such as the content of ~/.ssh/id_ed25519.pub"
    bad = [n for n, line in lines if not is_public_key_line(line)]
    if bad:
        where = f"line {bad[0]}" if len(bad) == 1 else f"lines {', '.join(map(str, bad[:5]))}"
        return (f"{where} of {len(lines)} is not a public key (expected `TYPE BASE64 [comment]`, TYPE one of "
                f"ssh-ed25519, ssh-rsa, ecdsa-sha2-*); give only public key lines")
    return None


def private_key_problem(text: str) -> str | None:
    """None if ``text`` holds a private key block (PEM, OpenSSH or PuTTY); else what it is instead.

    What surrounds the block is not judged: paramiko reads the first key it finds.
    """
    if _PRIVATE_PEM.search(text) or re.search(r"^PuTTY-User-Key-File-\d+:", text, re.MULTILINE):
        return None
    lines = _meaningful_lines(text)
    if lines and all(is_public_key_line(line) for _, line in lines):
        return "holds a public key; give the private key (the file without .pub)"
    if looks_private(text):
        return "holds a damaged private key (its BEGIN/END lines do not match); copy the key file again"
    return "is not a private key (no -----BEGIN ... PRIVATE KEY----- block); give the SSH private key file"


def known_hosts_problem(text: str) -> str | None:
    """None if every line is a known-hosts entry (``[@marker] HOSTS TYPE BASE64``); else what is wrong."""
    if looks_private(text):
        return "holds a PRIVATE key, not pinned host keys; give the known-hosts file"
    lines = _meaningful_lines(text)
    if not lines:
        return ("pins no host key; add each host's verified key (ssh-keyscan output checked against the "
                "host's console), since keys are never trusted on first use")
    bad = []
    for n, line in lines:
        tokens = line.split()
        if tokens and tokens[0].startswith("@"):  # @cert-authority, @revoked
            tokens = tokens[1:]
        if len(tokens) < 3 or tokens[1] not in _KEY_TYPES or _blob_type(tokens[2]) != tokens[1]:
            bad.append(n)
    if bad:
        where = f"line {bad[0]}" if len(bad) == 1 else f"lines {', '.join(map(str, bad[:5]))}"
        return (f"{where} of {len(lines)} is not a known-hosts entry (expected `HOSTS TYPE BASE64`); "
                "is this the right file?")
    return None
