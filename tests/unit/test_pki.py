"""The VPN certificate authority: certificates chain to it and carry the usages OpenVPN checks."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from sheesh.control.pki import CertificateAuthority


def test_issued_certificates_chain_to_the_ca_with_their_usage() -> None:
    ca = CertificateAuthority.generate("test CA")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for server, usage in ((True, ExtendedKeyUsageOID.SERVER_AUTH), (False, ExtendedKeyUsageOID.CLIENT_AUTH)):
        issued = ca.issue("peer", server=server)
        cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
        cert.verify_directly_issued_by(ca_cert)
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert "PRIVATE KEY" in issued.key_pem
    impostor = x509.load_pem_x509_certificate(CertificateAuthority.generate("test CA").cert_pem.encode())
    client = x509.load_pem_x509_certificate(ca.issue("x", server=False).cert_pem.encode())
    with pytest.raises(InvalidSignature):  # same name, another key: not ours
        client.verify_directly_issued_by(impostor)
