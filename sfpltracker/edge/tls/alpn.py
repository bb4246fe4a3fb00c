"""tls-alpn-01 (RFC 8737): the validation certificate the TLS listener shows the CA.

The CA connects to the name being validated with SNI = that name and ALPN offering only
``acme-tls/1``; the server must then present a self-signed certificate whose only SAN is the
name and which carries the critical ``id-pe-acmeIdentifier`` extension (OID
1.3.6.1.5.5.7.1.31) holding, as a DER OCTET STRING, the SHA-256 of the key authorization.

Certbot's ``acme`` library (5.x) no longer builds these (its tls-alpn-01 support was removed),
so the certificate is built here with ``cryptography``; the challenge itself is answered with
the library's generic key-authorization response (see ``acme.py``).
"""

from __future__ import annotations

import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID, ObjectIdentifier

from sfpltracker.edge.tls.certs import CertPair, key_to_pem, new_key, parse_pair

ACME_TLS_1 = b"acme-tls/1"
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")


def acme_identifier_value(key_authorization: str) -> bytes:
    """DER of ``Authorization ::= OCTET STRING (SIZE (32))`` holding SHA-256(keyAuthorization)."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return b"\x04\x20" + digest


def validation_pair(domain: str, key_authorization: str) -> CertPair:
    """The self-signed tls-alpn-01 certificate for ``domain``."""
    key = new_key()
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sfpltracker ACME tls-alpn-01")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(
                ACME_IDENTIFIER_OID, acme_identifier_value(key_authorization)
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives import serialization

    return parse_pair(cert.public_bytes(serialization.Encoding.PEM), key_to_pem(key), "acme-tls/1")
