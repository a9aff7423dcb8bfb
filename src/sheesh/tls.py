"""TLS for the API and the node port: the certificate and key a server uses (``SHEESH_TLS_CERT`` and
``SHEESH_TLS_KEY``, or with ``SHEESH_TLS=self-signed`` one made on the first start in ``<data_dir>/tls``), and
the self-signed certificate maker behind ``sheesh tls self-signed``."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sheesh.config import Settings
from sheesh.errors import InvalidInputError
from sheesh.secretfile import write_secret

VALIDITY = dt.timedelta(days=825)


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path


def self_signed(hostnames: list[str], folder: Path) -> TlsFiles:
    """A self-signed ECDSA certificate for ``hostnames`` (DNS names or IP addresses) in ``folder``
    (``cert.pem``, and ``key.pem`` readable by its owner only)."""
    if not hostnames:
        raise InvalidInputError("at least one host name is needed")
    names: list[x509.GeneralName] = []
    for name in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(folder / "cert.pem", folder / "key.pem")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_secret(files.key, pem)
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def server_tls(settings: Settings) -> TlsFiles | None:
    """The files the servers use, None for plain HTTP; InvalidInputError for half or missing settings."""
    if settings.tls_cert or settings.tls_key:
        if not (settings.tls_cert and settings.tls_key):
            raise InvalidInputError("SHEESH_TLS_CERT and SHEESH_TLS_KEY go together")
        for path in (settings.tls_cert, settings.tls_key):
            if not path.is_file():
                raise InvalidInputError(f"TLS file {path} does not exist")
        return TlsFiles(settings.tls_cert, settings.tls_key)
    if settings.tls != "self-signed":
        return None
    folder = settings.data_dir / "tls"
    if (folder / "cert.pem").is_file() and (folder / "key.pem").is_file():
        return TlsFiles(folder / "cert.pem", folder / "key.pem")
    hosts = settings.tls_hostnames or list(dict.fromkeys([settings.node_host(), "localhost", "127.0.0.1"]))
    return self_signed(hosts, folder)
