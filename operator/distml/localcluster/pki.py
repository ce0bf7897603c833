"""Certificates and keys for the local control plane: a CA, the API server's serving cert, an admin
client cert (O=system:masters) and the service-account signing key pair."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=3650)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _issue(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def write_pki(folder: Path) -> None:
    """Writes ca.{crt,key}, apiserver.{crt,key}, admin.{crt,key}, sa.{key,pub} into `folder`,
    unless they are there already (a restart keeps the same identity)."""
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "sa.pub").exists():
        return
    ca_key = _key()
    ca_name = _name("distml-local-ca")
    ca = _issue(ca_name, ca_key, ca_name, ca_key, ca=True)
    pem = serialization.Encoding.PEM
    _write(folder / "ca.crt", ca.public_bytes(pem))
    _write(folder / "ca.key", _pem_key(ca_key))

    server_key = _key()
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes"),
        x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"),
        x509.DNSName("kubernetes.default.svc.cluster.local"),
    ]
    server = _issue(_name("kube-apiserver"), server_key, ca_name, ca_key, server=True, sans=sans)
    _write(folder / "apiserver.crt", server.public_bytes(pem))
    _write(folder / "apiserver.key", _pem_key(server_key))

    admin_key = _key()
    admin = _issue(_name("distml-admin", "system:masters"), admin_key, ca_name, ca_key)
    _write(folder / "admin.crt", admin.public_bytes(pem))
    _write(folder / "admin.key", _pem_key(admin_key))

    sa_key = _key()
    _write(folder / "sa.key", _pem_key(sa_key))
    _write(
        folder / "sa.pub",
        sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo),
    )


def write_serving_cert(folder: Path, name: str, ip: str) -> tuple[Path, Path]:
    """A serving cert for `ip`, signed by the cluster's CA (a node agent's kubelet port);
    returns (cert, key) paths."""
    pem = serialization.Encoding.PEM
    ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    key = _key()
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)), x509.DNSName(name)]
    cert = _issue(_name(name), key, _name("distml-local-ca"), ca_key, server=True, sans=sans)
    crt_path, key_path = folder / f"node-{name}.crt", folder / f"node-{name}.key"
    _write(crt_path, cert.public_bytes(pem))
    _write(key_path, _pem_key(key))
    return crt_path, key_path
