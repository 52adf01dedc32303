"""Where a webhook may be sent: a tenant's URL resolved and checked before anything is sent to it.

Only ``http`` and ``https`` URLs whose every address is publicly routable pass (no requests into our own network),
and cloud instance-metadata services never do. The sender connects to exactly the addresses checked here, never
resolving the name again, so a DNS answer cannot change between the check and the connection.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import TypeAlias

import httpx

__all__ = ["NOT_ALLOWED", "BlockedDestination", "IPAddress", "check_destination"]

IPAddress: TypeAlias = IPv4Address | IPv6Address


# Names and addresses of cloud instance-metadata services. These are refused even with allow_private: nothing
# legitimate listens there for webhooks, and credentials do.
_METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata"})
_METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    {
        IPv4Address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        IPv4Address("169.254.170.2"),  # AWS ECS task metadata and credentials
        IPv4Address("100.100.100.200"),  # Alibaba Cloud
        IPv4Address("192.0.0.192"),  # Oracle Cloud
        IPv4Address("168.63.129.16"),  # Azure WireServer: a public-range address only reachable from inside Azure
        IPv6Address("fd00:ec2::254"),  # AWS IMDS over IPv6
    }
)

# Written out rather than taken from ipaddress's is_private/is_global, whose ranges changed between Python patch
# releases; the order puts the most telling name first.
_IPV4_REFUSED: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(net), kind)
    for net, kind in (
        ("0.0.0.0/8", "unspecified ('this network')"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("169.254.0.0/16", "link-local"),
        ("100.64.0.0/10", "shared (carrier-grade NAT)"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("192.0.0.0/24", "reserved (IETF protocol assignments)"),
        ("192.0.2.0/24", "reserved (documentation)"),
        ("198.51.100.0/24", "reserved (documentation)"),
        ("203.0.113.0/24", "reserved (documentation)"),
        ("198.18.0.0/15", "reserved (benchmarking)"),
        ("192.88.99.0/24", "reserved (6to4 relay anycast)"),
    )
)
_IPV6_REFUSED: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(net), kind)
    for net, kind in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "private (unique local)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "link-local (deprecated site-local)"),
        ("ff00::/8", "multicast"),
        ("64:ff9b:1::/48", "reserved (local-use NAT64)"),
        ("100::/64", "reserved (discard)"),
        ("2001::/23", "reserved (IETF protocol assignments, Teredo)"),
        ("2001:db8::/32", "reserved (documentation)"),
        ("3fff::/20", "reserved (documentation)"),
    )
)
_IPV6_GLOBAL_UNICAST = IPv6Network("2000::/3")
_NAT64 = IPv6Network("64:ff9b::/96")


# What a tenant is told of a host refused for where it leads. One message for every such refusal — a name that
# resolves to a private address, a metadata service, a name that does not resolve — so the answer tells nothing of
# the network behind the server (which internal names exist, what they resolve to) nor of its settings.
NOT_ALLOWED = "destination not allowed: private or internal address (the host must resolve to public addresses)"


class BlockedDestination(Exception):
    """A webhook URL that must not be requested. ``reason`` says why, naming the host and the address it
    resolved to: for the operator's log. ``public`` is what the tenant may be told."""

    def __init__(
        self, reason: str, *, host: str | None = None, address: IPAddress | None = None, public: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.host = host
        self.address = address
        # A URL refused for its form (scheme, no host) is the tenant's own text and says nothing of the network.
        self.public = public if public is not None else reason


def check_destination(url: str, *, allow_private: bool) -> list[IPv4Address | IPv6Address]:
    """Resolve the URL's host and return every address, or raise BlockedDestination.

    Only ``http`` and ``https`` URLs with a host pass. Every address the host resolves to must be publicly
    routable (not loopback, private, link-local, shared, multicast, reserved or unspecified, nor an IPv4-mapped,
    NAT64 or 6to4 form of one); ``allow_private`` lifts that for development and tests. Cloud metadata services
    are refused regardless. The caller should connect to exactly the returned addresses, never resolve again.
    """
    return _check(url, allow_private=allow_private, resolve=_getaddrinfo)[1]


def _check(
    url: str, *, allow_private: bool, resolve: Callable[[str, int], list[str]]
) -> tuple[httpx.URL, list[IPAddress]]:
    # Parsed by httpx itself, so the host checked is the host httpx would have connected to.
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise BlockedDestination(f"invalid URL: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise BlockedDestination(f"scheme {parsed.scheme or '(none)'!r} is not http or https")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise BlockedDestination("the URL has no host")
    if host.rstrip(".").lower() in _METADATA_HOSTS:
        raise BlockedDestination(f"{host} is a cloud metadata service", host=host, public=NOT_ALLOWED)
    port = parsed.port if parsed.port is not None else (443 if parsed.scheme == "https" else 80)

    try:
        found = resolve(host, port)
    except (OSError, UnicodeError):
        found = []
    addresses: list[IPAddress] = []
    for text in found:
        try:
            address = ip_address(text)
        except ValueError:
            continue  # only a replacement resolver could answer this; an answer we cannot read is no answer
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise BlockedDestination(f"{host} does not resolve", host=host, public=NOT_ALLOWED)

    for address in addresses:
        reason = _refusal(address, allow_private=allow_private)
        if reason is not None:
            # A literal needs no "resolves to"; a name does, since the address is what gets refused.
            subject = host if _is_literal(host, address) else f"{host} resolves to {address}, which"
            raise BlockedDestination(f"{subject} {reason}", host=host, address=address, public=NOT_ALLOWED)
    return parsed, addresses


def _is_literal(host: str, address: IPAddress) -> bool:
    try:
        return ip_address(host) == address
    except ValueError:
        return False


def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _refusal(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why this address must not be contacted, or None."""
    embedded: tuple[str, IPv4Address] | None = None
    if isinstance(address, IPv6Address):
        embedded = _embedded_ipv4(address)
        # Scope ids ("%eth0") would defeat the comparison with the metadata addresses.
        if IPv6Address(int(address)) in _METADATA_ADDRESSES:
            return "is a cloud metadata service"
    elif address in _METADATA_ADDRESSES:
        return "is a cloud metadata service"
    if embedded is not None:
        form, inner = embedded
        if inner in _METADATA_ADDRESSES:
            return f"is the {form} form of {inner}, a cloud metadata service"
    if allow_private:
        return None
    if embedded is not None:
        # The translation prefixes themselves are public; what matters is where the packet ends up.
        form, inner = embedded
        kind = _ipv4_kind(inner)
        return None if kind is None else f"is the {form} form of {inner}, {_article(kind)} {kind} address"
    kind = _ipv4_kind(address) if isinstance(address, IPv4Address) else _ipv6_kind(address)
    return None if kind is None else f"is {_article(kind)} {kind} address"


def _embedded_ipv4(address: IPv6Address) -> tuple[str, IPv4Address] | None:
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address in _NAT64:
        return "NAT64", IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    return None


def _ipv4_kind(address: IPv4Address) -> str | None:
    for network, kind in _IPV4_REFUSED:
        if address in network:
            return kind
    return None


def _ipv6_kind(address: IPv6Address) -> str | None:
    for network, kind in _IPV6_REFUSED:
        if address in network:
            return kind
    if address not in _IPV6_GLOBAL_UNICAST:
        # Outside 2000::/3 nothing is allocated for public unicast (this includes IPv4-compatible ::a.b.c.d).
        return "reserved"
    return None


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"
