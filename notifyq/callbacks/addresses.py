"""Which addresses a callback may reach: the SSRF rule, applied to every address a name resolves to.

A callback's URL comes from a job row, that is from any producer. Left alone, it could make the daemon
call the cloud's metadata service (169.254.169.254), the database, or anything else on the daemon's
network. So a callback connects only to globally routable addresses, unless an operator allows a CIDR
or a host name (`callback_allow`) for callbacks on premises.

`ipaddress.is_global` alone is not the rule: depending on the Python release it calls NAT64
(64:ff9b::/96), 6to4 (2002::/16), IPv4-compatible (::a.b.c.d) and site-local (fec0::/10) addresses
global, and multicast global too; and an IPv4 address wrapped in IPv6 must be judged as the IPv4 address
it reaches (CPython changed these ranges in security releases: cpython#113171).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Not globally routable whatever a Python release says (IANA special-purpose registries).
_REFUSED_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
    )
)
_REFUSED_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # unspecified, loopback, IPv4-compatible (deprecated: it reaches the IPv4 address)
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments, Teredo (2001::/32) among them
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated, still routed inside some networks)
        "ff00::/8",  # multicast
    )
)
# Where clouds serve instance credentials (AWS, GCP, Azure, and AWS's IPv6 address).
_METADATA = (ipaddress.IPv4Address("169.254.169.254"), ipaddress.IPv6Address("fd00:ec2::254"))
_METADATA_NAMES = frozenset(
    {"metadata", "metadata.google.internal", "instance-data", "instance-data.ec2.internal"}
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_SIXTOFOUR = ipaddress.IPv6Network("2002::/16")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # IPv4-translated (SIIT), RFC 2765
# The only IPv6 unicast space IANA allocates for the global Internet; anything outside (and not an IPv4
# address wrapped in IPv6) is refused, so that ranges a table of exceptions forgot stay refused too.
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")


@dataclass(frozen=True, slots=True)
class Allowed:
    """What an operator exempts from the rule (`callback_allow`): networks and host names."""

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowed:
        """From `callback_allow`'s entries: a CIDR or an address is a network, anything else a host name.
        A ValueError names an entry that is neither."""
        networks: list[Network] = []
        hosts: set[str] = set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = entry.lower().rstrip(".")
            if not name or any(not (c.isalnum() or c in "-._") for c in name):
                raise ValueError(f"{entry!r} is neither a CIDR, an address nor a host name")
            hosts.add(name)
        return cls(tuple(networks), frozenset(hosts))

    def host(self, name: str) -> bool:
        return name.lower().rstrip(".") in self.hosts

    def risks(self) -> list[str]:
        """What in this list undoes more of the rule than an on-premises exemption should: a network wider
        than a /8 (IPv4) or a /16 (IPv6), such as 0.0.0.0/0, or one holding a cloud metadata address.
        Said at start as a warning; it stays the operator's choice."""
        found = []
        for network in self.networks:
            # An IPv6 network that wraps IPv4 (mapped, NAT64, 6to4) reaches the IPv4 range it wraps.
            inner = wrapped_v4(network) if isinstance(network, ipaddress.IPv6Network) else None
            judged: Network = inner or network
            if judged.prefixlen < (8 if judged.version == 4 else 16):
                found.append(f"{network} exempts a large part of the address space from the SSRF rule")
            elif any(address in judged for address in _METADATA if address.version == judged.version):
                found.append(f"{network} lets callbacks reach a cloud metadata service (169.254.169.254)")
        for host in sorted(self.hosts & _METADATA_NAMES):
            found.append(f"{host} is a cloud metadata service")
        return found

    def address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks if network.version == address.version)


def wrapped_v4(network: ipaddress.IPv6Network) -> ipaddress.IPv4Network | None:
    """The IPv4 range an IPv6 network reaches when it lies within (or covers) one of the ranges that wrap
    IPv4 addresses; None when it wraps none."""
    for wrapper, shift in ((_MAPPED, 0), (_TRANSLATED, 0), (_NAT64, 0), (_SIXTOFOUR, 80)):
        if not network.overlaps(wrapper):
            continue
        if network.prefixlen <= wrapper.prefixlen:
            return ipaddress.IPv4Network("0.0.0.0/0")
        bits = min(network.prefixlen - wrapper.prefixlen, 32)
        first = (int(network.network_address) >> shift) & 0xFFFFFFFF
        return ipaddress.IPv4Network((first, bits), strict=False)
    return None


def embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches: mapped (::ffff:a.b.c.d), translated (::ffff:0:a.b.c.d),
    NAT64 (64:ff9b::a.b.c.d) or 6to4 (2002:aabb:ccdd::); None for a plain IPv6 address."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or address in _TRANSLATED:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    return None


def refusal(address: IPAddress) -> str | None:
    """Why a callback may not connect to `address`, or None if it may (before any allow-list)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "an IPv6 address with a zone"
        inner = embedded_v4(address)
        if inner is not None:
            why = refusal(inner)
            return None if why is None else f"{why}, inside an IPv6 address"
        if address not in _GLOBAL_UNICAST_V6 or any(address in network for network in _REFUSED_V6):
            return "not a globally routable address"
    elif any(address in network for network in _REFUSED_V4):
        return "not a globally routable address"
    if not address.is_global or address.is_multicast:
        return "not a globally routable address"
    return None


def check(host: str, addresses: Iterable[str], allowed: Allowed) -> list[IPAddress]:
    """The addresses `host` resolved to, parsed, if every one may be reached; else a Refused naming the
    first that may not. Every address is judged, not only the one a connection would try first: a name
    that resolves to one public and one private address is refused."""
    if allowed.host(host):
        return [ipaddress.ip_address(a.split("%", 1)[0]) for a in addresses]
    found: list[IPAddress] = []
    for text in addresses:
        address = ipaddress.ip_address(text)
        why = None if allowed.address(address) else refusal(address)
        if why is not None:
            raise Refused(f"{host} resolves to {address}: {why} (allow it with callback_allow)")
        found.append(address)
    if not found:
        raise Refused(f"{host} resolves to no address")
    return found


class Refused(Exception):
    """A destination the SSRF rule refuses; the message says which address and why. Not an httpx or
    httpcore error on purpose: a refused callback fails its job at once, it is never retried."""
