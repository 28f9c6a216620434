"""Certificates for local use: a self-signed server certificate, and a small CA.

Used by ``s3proxy dev --tls`` and by the test suite.  Production deployments
bring their own certificates (``tls.cert`` / ``tls.key``); ``cert_not_after``
reads when theirs expires (``s3proxy_tls_cert_expiry_timestamp_seconds``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _builder(subject: str, issuer: x509.Name | None, pub: ec.EllipticCurvePublicKey, days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


class LocalCA:
    """A throwaway certificate authority that issues server and client certificates."""

    def __init__(self, directory: Path, name: str = "s3proxy local CA") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            _builder(name, None, self.key.public_key(), 30)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = self.dir / "ca.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, hosts: list[str] | None = None, *, client: bool = False) -> CertFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        b = _builder(name, self.cert.subject, key.public_key(), 30).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
        if hosts:
            b = b.add_extension(_san(hosts), critical=False)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        files = CertFiles(self.dir / f"{name}.pem", self.dir / f"{name}.key")
        # The chain: leaf then CA, as servers should present it.
        files.cert.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM) + self.cert.public_bytes(serialization.Encoding.PEM)
        )
        _write_key(key, files.key)
        return files


def self_signed(directory: Path, hosts: list[str] | None = None) -> CertFiles:
    """A self-signed server certificate for ``hosts`` (default: localhost, 127.0.0.1)."""
    directory.mkdir(parents=True, exist_ok=True)
    hosts = hosts or ["localhost", "127.0.0.1", "::1"]
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(hosts[0], None, key.public_key(), 365)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    files = CertFiles(directory / "tls-cert.pem", directory / "tls-key.pem")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, files.key)
    return files


def cert_not_after(path: str | os.PathLike[str]) -> dt.datetime:
    """notAfter (UTC) of the first certificate in a PEM file: the leaf of a chain.

    The file may hold the private key too.  Raises OSError if it cannot be
    read, ValueError if it holds no PEM certificate.
    """
    certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    return certs[0].not_valid_after_utc
