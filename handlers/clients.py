"""Who the client is, for rate limiting: an address, normalised, never stored in clear."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from config import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]
) -> IPAddress | None:
    """The client's address: the socket peer, unless the peer is a trusted proxy.

    Behind trusted proxies, X-Forwarded-For is read from the right; the first hop
    that is not itself a trusted proxy is the client. A hop that does not parse ends
    the walk at the last trusted address, as nothing left of it can be believed.
    """
    address = _parse(peer)
    if address is None or not _is_trusted(address, trusted) or not forwarded_for:
        return address
    for hop in reversed(forwarded_for.split(",")):
        parsed = _parse(hop.strip())
        if parsed is None:
            return address
        address = parsed
        if not _is_trusted(address, trusted):
            return address
    return address


def client_key(address: IPAddress | None) -> str:
    """The rate-limit identity of an address: IPv4 as is, IPv6 by its /64."""
    if address is None:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        network = ipaddress.IPv6Network((address, 64), strict=False)
        return str(network)
    return str(address)


def _parse(value: str | None) -> IPAddress | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("[") and "]" in value:
        value = value[1 : value.index("]")]
    elif value.count(":") == 1 and "." in value:
        value = value.split(":", 1)[0]  # "192.0.2.1:4711": a proxy that adds the port
    value = value.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)
