"""Certificate pairs and the per-host store the TLS listener serves from.

A *pair* is a PEM certificate chain (leaf first) and its private key. The store indexes pairs
by the DNS names in their certificates; a TLS client's SNI name picks the pair (exact name,
then a ``*.`` wildcard one label up), and the default pair answers everything else (no SNI,
unknown names). Installing a pair replaces the one for the same names at once: connections
that start afterwards get the new certificate, open ones keep theirs (hot swap, no restart).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.logger import Logger

from sfpltracker.fsutil import write_atomic

log = Logger()

SELF_SIGNED_DAYS = 825  # the longest validity browsers accept for a self-signed leaf


class CertificateError(Exception):
    """A certificate or key file is missing or unusable; the message names the file."""


# The private keys pyOpenSSL can serve a certificate with.
ServableKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | dsa.DSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
SERVABLE_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    dsa.DSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


@dataclass
class CertPair:
    """A certificate chain and its key, parsed once."""

    chain: list[x509.Certificate]
    key: ServableKey
    source: str  # "local", "self-signed", "acme"
    fullchain_pem: bytes = b""
    key_pem: bytes = b""
    names: list[str] = field(default_factory=list)

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_after(self) -> datetime.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def serial(self) -> int:
        return self.leaf.serial_number

    def days_left(self, now: datetime.datetime | None = None) -> float:
        now = now or datetime.datetime.now(datetime.UTC)
        return (self.not_after - now).total_seconds() / 86400

    def describe(self) -> str:
        issuer = self.leaf.issuer.rfc4514_string() or "?"
        return (
            f"{', '.join(self.names) or '(no names)'} serial {self.serial:x} issued by {issuer}, "
            f"valid until {self.not_after:%Y-%m-%d %H:%M} UTC"
        )


def dns_names(cert: x509.Certificate) -> list[str]:
    """The DNS names a certificate is valid for (SAN, else the CN), lower-cased."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        if names:
            return names
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return [a.value.lower() for a in cns if isinstance(a.value, str)]  # a CN is text


def parse_pair(fullchain_pem: bytes, key_pem: bytes, source: str, where: str = "") -> CertPair:
    """A ``CertPair`` from PEM bytes; ``CertificateError`` when they do not belong together."""
    try:
        chain = x509.load_pem_x509_certificates(fullchain_pem)
    except ValueError as e:
        raise CertificateError(
            f"{where or 'certificate'}: no PEM certificate in it ({e})"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertificateError(
            f"{where or 'key'}: not an unencrypted PEM private key ({e})"
        ) from None
    if not isinstance(key, SERVABLE_KEYS):  # X25519, DH: cannot sign
        raise CertificateError(f"{where or 'key'}: a {type(key).__name__} cannot serve TLS")
    if _public_bytes(chain[0].public_key()) != _public_bytes(key.public_key()):
        raise CertificateError(f"{where or 'certificate'}: the key does not match the certificate")
    return CertPair(
        chain=chain,
        key=key,
        source=source,
        fullchain_pem=fullchain_pem,
        key_pem=key_pem,
        names=dns_names(chain[0]),
    )


def _public_bytes(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_pair(cert_path: Path, key_path: Path, source: str) -> CertPair:
    try:
        cert_pem = Path(cert_path).read_bytes()
    except OSError as e:
        raise CertificateError(f"{cert_path}: cannot read certificate: {e.strerror}") from None
    try:
        key_pem = Path(key_path).read_bytes()
    except OSError as e:
        raise CertificateError(f"{key_path}: cannot read key: {e.strerror}") from None
    return parse_pair(cert_pem, key_pem, source, where=f"{cert_path} / {key_path}")


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` atomically and durably, readable by the owner only unless ``mode``
    says otherwise (a certificate chain is public, its key is not)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, mode)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def self_signed_pair(names: Iterable[str], days: int = SELF_SIGNED_DAYS) -> CertPair:
    """A self-signed certificate for ``names`` (DNS names or IPs), EC P-256."""
    names = list(dict.fromkeys(n for n in names if n))
    key = new_key()
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    return parse_pair(cert_pem, key_to_pem(key), "self-signed")


def load_or_create_self_signed(directory: Path, names: Iterable[str]) -> CertPair:
    """The self-signed pair kept in ``directory``; generated on first start (or when expired)."""
    cert_path, key_path = directory / "selfsigned.crt", directory / "selfsigned.key"
    if cert_path.exists() and key_path.exists():
        try:
            pair = load_pair(cert_path, key_path, "self-signed")
            if pair.days_left() > 1:
                return pair
            log.info("self-signed certificate {path} expired; generating a new one", path=cert_path)
        except CertificateError as e:
            log.warn("self-signed certificate unusable ({why}); generating a new one", why=e)
    pair = self_signed_pair(names)
    write_private(key_path, pair.key_pem)
    write_private(cert_path, pair.fullchain_pem, mode=0o644)
    log.info(
        "generated a self-signed certificate for {names} in {path}",
        names=", ".join(pair.names),
        path=cert_path,
    )
    return pair


class CertStore:
    """Pairs by DNS name, plus the default pair; ``on_change`` builds what the listener needs.

    ``context_factory(pair)`` turns a pair into whatever the TLS server serves (an OpenSSL
    context); it is called once per installed pair, on the reactor thread.
    """

    def __init__(self, context_factory: Callable[[CertPair], object]):
        self._make = context_factory
        self.default: CertPair | None = None
        self._default_context: object = None
        self._by_name: dict[str, tuple[CertPair, object]] = {}

    def set_default(self, pair: CertPair) -> None:
        self.default = pair
        self._default_context = self._make(pair)

    def install(self, pair: CertPair, names: Iterable[str] | None = None) -> None:
        """Serve ``pair`` for ``names`` (default: the names in the certificate) from now on."""
        context = self._make(pair)
        for name in names or pair.names:
            self._by_name[name.lower()] = (pair, context)

    def pair_for(self, name: str | None) -> CertPair | None:
        found = self._lookup(name)
        return found[0] if found else self.default

    def context_for(self, name: bytes | str | None):
        found = self._lookup(name)
        return found[1] if found else self._default_context

    def default_context(self):
        return self._default_context

    def _lookup(self, name: bytes | str | None):
        if not name:
            return None
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        name = name.lower().rstrip(".")
        found = self._by_name.get(name)
        if found is None and "." in name:
            found = self._by_name.get("*." + name.split(".", 1)[1])
        return found

    def served(self) -> list[tuple[str, CertPair]]:
        """(name, pair) for every name served, plus ("", default)."""
        out = [(name, pair) for name, (pair, _) in sorted(self._by_name.items())]
        if self.default is not None:
            out.append(("", self.default))
        return out
