"""Which certificate the servers use, and the self-signed certificates sheesh makes."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509

from sheesh.config import Settings
from sheesh.errors import InvalidInputError
from sheesh.tls import self_signed, server_tls


def test_self_signed_certificates_name_their_hosts(tmp_path: Path) -> None:
    files = self_signed(["node.example", "10.1.2.3"], tmp_path / "tls")
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["node.example"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert files.key.stat().st_mode & 0o777 == 0o600
    with pytest.raises(InvalidInputError):
        self_signed([], tmp_path / "none")


def test_server_tls_settings(tmp_path: Path) -> None:
    assert server_tls(Settings(data_dir=tmp_path)) is None
    made = server_tls(Settings(data_dir=tmp_path, tls="self-signed"))
    assert made is not None and made.cert == tmp_path / "tls" / "cert.pem"
    again = server_tls(Settings(data_dir=tmp_path, tls="self-signed"))
    assert again == made and again.cert.read_bytes() == made.cert.read_bytes(), "made once, kept"
    given = server_tls(Settings(data_dir=tmp_path, tls_cert=made.cert, tls_key=made.key))
    assert given == made and Settings(data_dir=tmp_path, tls_cert=made.cert, tls_key=made.key).tls_on
    with pytest.raises(InvalidInputError, match="go together"):
        server_tls(Settings(data_dir=tmp_path, tls_cert=made.cert))
    with pytest.raises(InvalidInputError, match="does not exist"):
        server_tls(Settings(data_dir=tmp_path, tls_cert=tmp_path / "x", tls_key=made.key))
