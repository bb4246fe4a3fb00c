"""Which IP a request comes from, and what of it may be stored (API.md section 4)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping


class TrustedProxies:
    """Peers whose ``X-Forwarded-For`` / ``X-Real-IP`` are believed; anyone else's are ignored."""

    def __init__(self, cidrs: Iterable[str]):
        self.networks = [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()]

    def __contains__(self, ip: str) -> bool:
        if not self.networks:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.networks)

    def client_ip(self, peer: str, headers: Mapping[str, str]) -> str:
        """The client's IP: the peer, or what a trusted proxy says the client was.

        ``X-Forwarded-For`` is read right to left, skipping our own trusted proxies, so a
        client cannot prepend a fake address.
        """
        peer = canonical_ip(peer) or peer
        if peer not in self:
            return peer
        forwarded = headers.get("x-forwarded-for", "")
        if forwarded:
            for hop in reversed([h.strip() for h in forwarded.split(",")]):
                ip = canonical_ip(hop)
                if ip is None:
                    break
                if ip not in self:
                    return ip
        real = canonical_ip(headers.get("x-real-ip", "").strip())
        return real or peer


def canonical_ip(text: str) -> str | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return str(addr)


def truncate(ip: str) -> str:
    """IPv4 to its /24, IPv6 to its /48 (what Google Analytics and Matomo call anonymisation)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address)


class IPPolicy:
    """Applies ``IPMode`` to an IP before it is stored: truncate, hash, full or none."""

    def __init__(self, mode: str, secret: bytes):
        self.mode = mode
        self.secret = secret
        # Visitors send many events from one address; parsing and hashing it once is enough.
        # The cache lives in this process's memory only and is never written anywhere.
        self.stored_ip = functools.lru_cache(maxsize=65536)(self._stored_ip)
        self.stored_iphash = functools.lru_cache(maxsize=65536)(self._stored_iphash)

    def keyed_hash(self, ip: str) -> str:
        if not ip:
            return ""
        return hmac.new(self.secret, ip.encode(), hashlib.sha256).hexdigest()[:26]

    def _stored_ip(self, ip: str) -> str:
        if self.mode == "full":
            return ip
        if self.mode == "truncate":
            return truncate(ip)
        if self.mode == "hash":
            return self.keyed_hash(ip)
        return ""

    def _stored_iphash(self, ip: str) -> str:
        return "" if self.mode == "none" else self.keyed_hash(ip)
