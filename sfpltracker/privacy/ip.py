"""Which IP a request comes from, and what of it may be stored (API.md section 4)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping


class TrustedProxies:
    """Peers whose ``X-Forwarded-For`` / ``X-Real-IP`` / ``X-Client-IP`` / ``CF-Connecting-IP``
    are believed; anyone else's are ignored."""

    def __init__(self, cidrs: Iterable[str]):
        self.networks = [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()]

    def __contains__(self, ip: str) -> bool:
        if not self.networks:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(addr.version == net.version and addr in net for net in self.networks)

    def client_ip(self, peer: str, headers: Mapping[str, str]) -> str:
        """The client's IP: the peer, or what a trusted proxy says the client was.

        ``X-Forwarded-For`` is read right to left, skipping our own trusted proxies, so a client
        cannot prepend a fake address: the first hop that is not a trusted proxy is the client.
        When every hop is a trusted proxy, the leftmost is the client (a client on the proxies'
        own network). A hop that is not an IP ends the walk: what lies left of it is unverifiable.
        """
        peer = canonical_ip(peer) or peer
        if peer not in self:
            return peer
        forwarded = headers.get("x-forwarded-for", "")
        if forwarded:
            client = None
            for hop in reversed(forwarded.split(",")):
                ip = canonical_ip(_strip_port(hop.strip()))
                if ip is None:
                    break
                client = ip
                if ip not in self:
                    return ip
            if client is not None:
                return client
        # One-address headers, in the original's order: nginx's, then other proxies' and
        # Cloudflare's (believed only from a trusted proxy, unlike the original).
        for name in ("x-real-ip", "x-client-ip", "cf-connecting-ip"):
            ip = canonical_ip(_strip_port(headers.get(name, "").strip()))
            if ip:
                return ip
        return peer


def _strip_port(hop: str) -> str:
    """``1.2.3.4:5678`` -> ``1.2.3.4``; ``[2001:db8::1]:443`` -> ``2001:db8::1``."""
    if hop.startswith("["):
        return hop[1 : hop.find("]")] if "]" in hop else hop
    if hop.count(":") == 1:
        return hop.split(":", 1)[0]
    return hop


@functools.lru_cache(maxsize=65536)
def canonical_ip(text: str) -> str | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return str(addr)


_V6_MASK = ~((1 << 80) - 1) & ((1 << 128) - 1)


@functools.lru_cache(maxsize=65536)
def truncate(ip: str) -> str:
    """IPv4 to its /24, IPv6 to its /48 (what Google Analytics and Matomo call anonymisation).

    Cached: visitors come back, and ``ipaddress`` parsing dominates the cost of an event.
    """
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    if addr.version == 4:
        return str(ipaddress.IPv4Address(int(addr) & 0xFFFFFF00))
    return str(ipaddress.IPv6Address(int(addr) & _V6_MASK))


class IPPolicy:
    """Applies ``IPMode`` to an IP before it is stored: truncate, hash, full or none.

    ``stored(ip)`` gives the two columns every table with an IP has, ``ip`` and ``iphash``:

    ==========  =========================  ==========================
    IPMode      ip                         iphash
    ==========  =========================  ==========================
    truncate    IPv4 /24, IPv6 /48         keyed hash of the truncated IP
    hash        keyed hash of the IP       the same keyed hash
    full        the IP                     keyed hash of the IP
    none        ""                         ""
    ==========  =========================  ==========================

    The hash is an HMAC-SHA256 keyed with ``IPHashSecret`` (or the secret generated in
    ``DataDirectory``): without the key it cannot be reversed by trying all 2^32 IPv4 addresses.
    In ``truncate`` mode nothing finer than the truncated network is derivable from either
    column. For visitors without cookies, ``day_key`` replaces the key so that their hashes,
    like their visitor ids, change every day.
    """

    def __init__(self, mode: str, secret: bytes):
        self.mode = mode
        self.secret = secret
        # A visitor sends many events from one address: parse and hash it once. The cache is
        # this process's memory only, never written anywhere.
        self.stored = functools.lru_cache(maxsize=65536)(self._stored)

    def keyed_hash(self, ip: str, key: bytes | None = None) -> str:
        if not ip:
            return ""
        return hmac.new(key or self.secret, ip.encode(), hashlib.sha256).hexdigest()[:26]

    def _stored(self, ip: str, day_key: bytes | None = None) -> tuple[str, str]:
        """``(ip, iphash)`` as they may be stored."""
        if not ip or self.mode == "none":
            return "", ""
        if self.mode == "truncate":
            net = truncate(ip)
            return net, self.keyed_hash(net)
        if self.mode == "hash":
            hashed = self.keyed_hash(ip, day_key)
            return hashed, hashed
        return ip, self.keyed_hash(ip)  # full

    def stored_ip(self, ip: str) -> str:
        return self.stored(ip)[0]

    def stored_iphash(self, ip: str) -> str:
        return self.stored(ip)[1]
