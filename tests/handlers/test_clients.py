"""Client addresses behind trusted proxies, and the rate-limit key made from them."""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv6Address, ip_network

import pytest

from handlers.clients import client_address, client_key

PROXIES = (ip_network("10.0.0.0/8"), ip_network("fd00::/8"))


@pytest.mark.parametrize(
    "forwarded_for", [None, "", "198.51.100.7", "198.51.100.7, 10.0.0.2"]
)
def test_client_address_without_trusted_proxies_is_the_peer(
    forwarded_for: str | None,
) -> None:
    assert client_address("203.0.113.5", forwarded_for, ()) == IPv4Address(
        "203.0.113.5"
    )


def test_client_address_ignores_forwarded_for_from_an_untrusted_peer() -> None:
    address = client_address("203.0.113.5", "198.51.100.7", PROXIES)

    assert address == IPv4Address("203.0.113.5")


@pytest.mark.parametrize(
    ("forwarded_for", "expected"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("198.51.100.7, 203.0.113.9", "203.0.113.9"),
        ("198.51.100.7, 203.0.113.9, 10.0.0.2", "203.0.113.9"),
        ("198.51.100.7,203.0.113.9,10.0.0.3,10.0.0.2", "203.0.113.9"),
        ("10.0.0.9, 198.51.100.7, 10.0.0.2", "198.51.100.7"),
    ],
)
def test_client_address_behind_trusted_proxies_is_the_rightmost_untrusted_hop(
    forwarded_for: str, expected: str
) -> None:
    address = client_address("10.0.0.1", forwarded_for, PROXIES)

    assert address == ipaddress.ip_address(expected)


def test_client_address_when_every_hop_is_trusted_is_the_leftmost() -> None:
    address = client_address("10.0.0.1", "10.0.0.4, 10.0.0.3, 10.0.0.2", PROXIES)

    assert address == IPv4Address("10.0.0.4")


@pytest.mark.parametrize("forwarded_for", [None, "", " "])
def test_client_address_behind_a_trusted_proxy_without_header_is_the_proxy(
    forwarded_for: str | None,
) -> None:
    assert client_address("10.0.0.1", forwarded_for, PROXIES) == IPv4Address("10.0.0.1")


@pytest.mark.parametrize(
    ("forwarded_for", "expected"),
    [
        ("198.51.100.7, garbage, 10.0.0.2", "10.0.0.2"),
        ("198.51.100.7, unknown", "10.0.0.1"),
        ("198.51.100.7, , 10.0.0.2", "10.0.0.2"),
        ("198.51.100.7, 999.1.1.1", "10.0.0.1"),
    ],
)
def test_client_address_stops_at_a_hop_that_does_not_parse(
    forwarded_for: str, expected: str
) -> None:
    address = client_address("10.0.0.1", forwarded_for, PROXIES)

    assert address == ipaddress.ip_address(expected)


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("::ffff:192.0.2.1", IPv4Address("192.0.2.1")),
        ("[::ffff:192.0.2.1]", IPv4Address("192.0.2.1")),
        ("192.0.2.1", IPv4Address("192.0.2.1")),
        ("192.0.2.1:4711", IPv4Address("192.0.2.1")),
        ("[2001:db8::1]", IPv6Address("2001:db8::1")),
        ("[2001:db8::1]:443", IPv6Address("2001:db8::1")),
        ("2001:db8::1", IPv6Address("2001:db8::1")),
        ("fe80::1%eth0", IPv6Address("fe80::1")),
        (" 192.0.2.1 ", IPv4Address("192.0.2.1")),
    ],
)
def test_client_address_parses_peer_forms(
    peer: str, expected: IPv4Address | IPv6Address
) -> None:
    assert client_address(peer, None, ()) == expected


@pytest.mark.parametrize(
    ("hop", "expected"),
    [
        ("::ffff:192.0.2.1", IPv4Address("192.0.2.1")),
        ("192.0.2.1:4711", IPv4Address("192.0.2.1")),
        ("[2001:db8::1]", IPv6Address("2001:db8::1")),
        ("[2001:db8::1]:443", IPv6Address("2001:db8::1")),
    ],
)
def test_client_address_parses_forwarded_hop_forms(
    hop: str, expected: IPv4Address | IPv6Address
) -> None:
    assert client_address("10.0.0.1", hop, PROXIES) == expected


def test_client_address_trusts_an_ipv4_mapped_proxy_as_ipv4() -> None:
    address = client_address("::ffff:10.0.0.1", "198.51.100.7", PROXIES)

    assert address == IPv4Address("198.51.100.7")


def test_client_address_trusts_ipv6_proxies() -> None:
    address = client_address("fd00::1", "2001:db8::5, fd00::2", PROXIES)

    assert address == IPv6Address("2001:db8::5")


@pytest.mark.parametrize("peer", [None, "", "not an address", "[]"])
def test_client_address_of_an_unparsable_peer_is_none(peer: str | None) -> None:
    assert client_address(peer, "198.51.100.7", PROXIES) is None


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff"),
        ("2001:db8::1", "2001:db8::abcd:1234"),
    ],
)
def test_client_key_groups_ipv6_by_its_64(first: str, second: str) -> None:
    assert client_key(IPv6Address(first)) == client_key(IPv6Address(second))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("2001:db8:1:2::1", "2001:db8:1:3::1"),
        ("2001:db8::1", "2001:db9::1"),
    ],
)
def test_client_key_separates_different_ipv6_64s(first: str, second: str) -> None:
    assert client_key(IPv6Address(first)) != client_key(IPv6Address(second))


def test_client_key_of_ipv6_names_the_64() -> None:
    assert client_key(IPv6Address("2001:db8:1:2:3:4:5:6")) == "2001:db8:1:2::/64"


def test_client_key_keeps_ipv4_whole() -> None:
    assert client_key(IPv4Address("192.0.2.1")) == "192.0.2.1"
    assert client_key(IPv4Address("192.0.2.1")) != client_key(IPv4Address("192.0.2.2"))


def test_client_key_of_an_unknown_address_is_shared() -> None:
    assert client_key(None) == "unknown"
