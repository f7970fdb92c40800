"""The lab cluster's PKI: CAs, serving certificates, x509 client certificates, the service-account key.

As RKE does with ``authentication.strategy: x509``: clients (kubectl, the Python client, the
controllers, each node's agent) present certificates signed by the cluster CA; the subject's CN is
the user and O the groups. A second CA signs the API server's front-proxy client certificate (the
request-header CA), and etcd's members and clients use certificates of the cluster CA, as RKE sets
them up. Certificates are kept while their subject and names still fit (a later ``rke up`` does not
rotate them); everything here is for the lab only and every certificate says so in its subject.

File names follow the distribution: RKE1's ``<name>.pem`` and ``<name>-key.pem`` (the default), RKE2's
``<name>.crt`` and ``<name>.key`` (``Pki(root, ".crt", ".key")``); a name may hold a folder (``etcd/server-ca``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LAB_OU = "runbook lab simulation"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, LAB_OU)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name(attrs)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _pem_cert(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Pki:
    """Files under ``root``: ca.pem/ca-key.pem, kube-apiserver.pem/-key.pem, <user>.pem/-key.pem (RKE1's names)."""

    root: Path
    cert_suffix: str = ".pem"
    key_suffix: str = "-key.pem"

    def path(self, name: str) -> Path:
        return self.root / name

    def cert(self, name: str) -> Path:
        return self.root / f"{name}{self.cert_suffix}"

    def key(self, name: str) -> Path:
        return self.root / f"{name}{self.key_suffix}"

    def _write_key(self, name: str, key) -> None:
        path = self.key(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_pem_key(key))
        path.chmod(0o600)

    def ensure_ca(self, cluster: str, name: str = "ca", title: str = "kube-ca") -> None:
        if self.cert(name).exists():
            return
        key = _key()
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(_name(f"{title} {cluster}")).issuer_name(_name(f"{title} {cluster}"))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        self._write_key(name, key)
        self.cert(name).write_bytes(_pem_cert(cert))

    def ensure_key(self, name: str) -> None:
        """A bare key pair, the key and its public half in the certificate's place: the service-account signing key."""
        if self.key(name).exists():
            return
        key = _key()
        self._write_key(name, key)
        self.cert(name).write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def fits(self, name: str, cn: str, orgs: tuple[str, ...], server_names: tuple[str, ...], ca: str) -> bool:
        """Whether the certificate ``name`` exists, was signed by ``ca``, and has this subject and these names."""
        try:
            cert = x509.load_pem_x509_certificate(self.cert(name).read_bytes())
            issuer = x509.load_pem_x509_certificate(self.cert(ca).read_bytes())
        except (OSError, ValueError):
            return False
        if cert.subject != _name(cn, orgs) or cert.issuer != issuer.subject or not self.key(name).exists():
            return False
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = {str(v) for v in sans.get_values_for_type(x509.IPAddress)} | set(sans.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            have = set()
        remaining = cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
        return have == {str(n) for n in server_names} and remaining > dt.timedelta(days=30)

    def issue(self, name: str, cn: str, orgs: tuple[str, ...] = (), server_names: tuple[str, ...] = (),
              client: bool = True, ca: str = "ca") -> tuple[Path, Path]:
        """The certificate and key ``name`` signed by ``ca``: kept if they still fit, else issued anew."""
        if self.fits(name, cn, orgs, server_names, ca):
            return self.cert(name), self.key(name)
        ca_key = serialization.load_pem_private_key(self.key(ca).read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.cert(ca).read_bytes())
        key = _key()
        now = dt.datetime.now(dt.timezone.utc)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        builder = (x509.CertificateBuilder().subject_name(_name(cn, orgs)).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=825))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if server_names:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            sans = []
            for n in server_names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    sans.append(x509.DNSName(n))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        self._write_key(name, key)
        self.cert(name).write_bytes(_pem_cert(cert))
        return self.cert(name), self.key(name)
