"""The SSRF guard of remote uploads: which URLs and addresses a fetch may reach."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from pathlib import Path

import pytest
from tornado import httpserver, testing, web

from ingest.fetch import (
    MAX_URL_LENGTH,
    Fetcher,
    FetchFailed,
    FetchPolicy,
    FetchSlots,
    Hop,
    InvalidUrl,
    PinnedResolver,
    check_url,
    destination_allowed,
    embedded_addresses,
    system_resolve,
)
from ingest.spool import Spool

DEFAULT_PORTS = frozenset({80, 443, 8080, 8443})
POLICY = FetchPolicy(
    allow_ports=DEFAULT_PORTS,
    allow_networks=(),
    connect_timeout=5.0,
    total_timeout=5.0,
)
LOOPBACK_ALLOWED = FetchPolicy(
    allow_ports=DEFAULT_PORTS,
    allow_networks=(ipaddress.ip_network("127.0.0.1/32"),),
    connect_timeout=5.0,
    total_timeout=5.0,
)
# A Teredo address carries its client's IPv4 inverted in the last 32 bits:
# ~0x80fffffe == 0x7f000001, so this client is 127.0.0.1 (server 65.54.227.120).
TEREDO_OF_LOOPBACK = "2001:0:4136:e378:8000:63bf:80ff:fffe"
NUMERIC_LOOPBACK_FORMS = [
    "2130706433",
    "0177.0.0.1",
    "0x7f.0.0.1",
    "127.1",
    "0x7f000001",
    "017700000001",
]


class RecordingResolver:
    """Answers every lookup with chosen addresses and remembers each call."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return list(self.addresses)


class RebindingResolver(RecordingResolver):
    """A DNS server that answers with the checked address once, then another."""

    def __init__(self, first: str, later: str) -> None:
        super().__init__(first)
        self.later = later

    async def __call__(self, host: str, port: int) -> list[str]:
        answer = await super().__call__(host, port)
        self.addresses = [self.later]
        return answer


def address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::127.0.0.1",
        "2002:7f00:1::",
        TEREDO_OF_LOOPBACK,
        "64:ff9b::7f00:1",
        "64:ff9b::a00:1",
    ],
)
def test_destination_allowed_refuses_internal_address(text):
    assert destination_allowed(address(text), ()) is False


@pytest.mark.parametrize(
    ("text", "inside"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("::127.0.0.1", "127.0.0.1"),
        ("2002:7f00:1::", "127.0.0.1"),
        (TEREDO_OF_LOOPBACK, "127.0.0.1"),
        ("64:ff9b::7f00:1", "127.0.0.1"),
        ("64:ff9b::a00:1", "10.0.0.1"),
        ("64:ff9b:1::a00:1", "10.0.0.1"),
    ],
)
def test_embedded_addresses_unwraps_tunnelled_ipv4(text, inside):
    # Checked apart from destination_allowed: Python may already call some of these
    # wrappers non-global, which would hide a missing unwrap.
    assert address(inside) in embedded_addresses(address(text))


@pytest.mark.parametrize(
    "text", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808"]
)
def test_destination_allowed_accepts_globally_routable_address(text):
    assert destination_allowed(address(text), ()) is True


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("127.0.0.1", "127.0.0.1/32"),
        ("10.1.2.3", "10.0.0.0/8"),
        ("169.254.169.254", "169.254.169.254/32"),
        ("fc00::1", "fc00::/7"),
    ],
)
def test_allow_networks_let_the_chosen_internal_address_through(text, network):
    allowed = (ipaddress.ip_network(network),)
    assert destination_allowed(address(text), allowed) is True


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("127.0.0.2", "127.0.0.1/32"),
        ("10.1.2.3", "192.168.0.0/16"),
        ("::1", "127.0.0.0/8"),
    ],
)
def test_allow_networks_do_not_reach_beyond_themselves(text, network):
    allowed = (ipaddress.ip_network(network),)
    assert destination_allowed(address(text), allowed) is False


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/file.png",
        "file:///etc/passwd",
        "gopher://example.com/_GET",
        "javascript:alert(1)",
        "data:text/plain,hello",
    ],
)
@pytest.mark.gen_test
async def test_check_url_refuses_other_schemes_without_resolving(url):
    resolver = RecordingResolver("93.184.216.34")
    with pytest.raises(InvalidUrl):
        await check_url(url, POLICY, resolver)
    assert resolver.calls == []


@pytest.mark.parametrize("url", ["http:///path", "http://:80/", "https:"])
@pytest.mark.gen_test
async def test_check_url_refuses_url_without_host(url):
    resolver = RecordingResolver("93.184.216.34")
    with pytest.raises(InvalidUrl):
        await check_url(url, POLICY, resolver)
    assert resolver.calls == []


@pytest.mark.parametrize(
    "url",
    [
        "http://user:secret@example.com/a.png",
        "http://user@example.com/a.png",
        "http://:secret@example.com/a.png",
    ],
)
@pytest.mark.gen_test
async def test_check_url_refuses_credentials_without_resolving(url):
    resolver = RecordingResolver("93.184.216.34")
    with pytest.raises(InvalidUrl):
        await check_url(url, POLICY, resolver)
    assert resolver.calls == []


@pytest.mark.parametrize(
    "character", ["\x00", "\t", "\n", "\r", "\x1b", "\x1f", " ", "\x7f"]
)
@pytest.mark.gen_test
async def test_check_url_refuses_control_characters(character):
    resolver = RecordingResolver("93.184.216.34")
    with pytest.raises(InvalidUrl):
        await check_url(f"http://example.com/a{character}b.png", POLICY, resolver)
    assert resolver.calls == []


@pytest.mark.gen_test
async def test_check_url_refuses_over_long_url():
    url = "http://example.com/" + "a" * (MAX_URL_LENGTH - len("http://example.com/"))
    resolver = RecordingResolver("93.184.216.34")
    with pytest.raises(InvalidUrl):
        await check_url(url + "a", POLICY, resolver)
    assert resolver.calls == []
    assert (await check_url(url, POLICY, resolver)).url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com:22/",
        "https://example.com:6379/",
        "http://8.8.8.8:22/",
    ],
)
@pytest.mark.gen_test
async def test_check_url_refuses_unlisted_port_without_resolving(url):
    # With no network allowed, nothing can lift the port rule, so the refusal must
    # not depend on DNS (an unresolvable host would otherwise be FETCH_FAILED).
    resolver = RecordingResolver("93.184.216.34")
    with pytest.raises(InvalidUrl):
        await check_url(url, POLICY, resolver)
    assert resolver.calls == []


@pytest.mark.gen_test
async def test_check_url_refuses_unlisted_port_of_a_public_address():
    resolver = RecordingResolver("93.184.216.34")
    with pytest.raises(InvalidUrl, match="port 22"):
        await check_url("http://example.com:22/", POLICY, resolver)


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("http://example.com/a.png", 80),
        ("https://example.com/a.png", 443),
        ("http://example.com:8080/a.png", 8080),
        ("https://example.com:8443/a.png", 8443),
    ],
)
@pytest.mark.gen_test
async def test_check_url_accepts_listed_port_and_pins_the_address(url, port):
    resolver = RecordingResolver("93.184.216.34")
    hop = await check_url(url, POLICY, resolver)
    assert hop == Hop(url, "example.com", port, "93.184.216.34")


@pytest.mark.gen_test
async def test_check_url_resolves_the_host_exactly_once():
    resolver = RecordingResolver("93.184.216.34", "2606:2800:220:1::1")
    await check_url("https://example.com/a.png", POLICY, resolver)
    assert resolver.calls == [("example.com", 443)]


@pytest.mark.gen_test
async def test_allowed_network_lifts_the_port_rule():
    policy = FetchPolicy(DEFAULT_PORTS, (ipaddress.ip_network("10.0.0.0/8"),), 5.0, 5.0)
    resolver = RecordingResolver("10.0.0.5")
    hop = await check_url("http://cache.internal:6379/", policy, resolver)
    assert (hop.port, hop.address) == (6379, "10.0.0.5")


@pytest.mark.gen_test
async def test_port_rule_stays_when_only_some_addresses_are_in_allowed_network():
    policy = FetchPolicy(DEFAULT_PORTS, (ipaddress.ip_network("10.0.0.0/8"),), 5.0, 5.0)
    resolver = RecordingResolver("10.0.0.5", "93.184.216.34")
    with pytest.raises(InvalidUrl, match="port 6379"):
        await check_url("http://mixed.example:6379/", policy, resolver)


@pytest.mark.parametrize(
    "answer",
    [
        ["93.184.216.34", "10.0.0.1"],
        ["10.0.0.1", "93.184.216.34"],
        ["2606:2800:220:1::1", "::1"],
        ["93.184.216.34", "fe80::1%2"],
    ],
)
@pytest.mark.gen_test
async def test_host_with_one_internal_address_among_public_ones_is_refused(answer):
    resolver = RecordingResolver(*answer)
    with pytest.raises(InvalidUrl):
        await check_url("http://mixed.example/a.png", POLICY, resolver)
    assert len(resolver.calls) == 1


@pytest.mark.gen_test
async def test_host_that_resolves_to_nothing_fails_the_fetch():
    with pytest.raises(FetchFailed):
        await check_url("http://nothing.example/", POLICY, RecordingResolver())


@pytest.mark.parametrize("host", NUMERIC_LOOPBACK_FORMS)
@pytest.mark.gen_test
async def test_numeric_host_form_is_refused_as_loopback(host):
    with pytest.raises(InvalidUrl, match="destination"):
        await check_url(f"http://{host}/", POLICY, system_resolve)


@pytest.mark.parametrize("host", NUMERIC_LOOPBACK_FORMS)
@pytest.mark.gen_test
async def test_numeric_host_form_is_pinned_to_127_0_0_1(host):
    hop = await check_url(f"http://{host}/", LOOPBACK_ALLOWED, system_resolve)
    assert (hop.host, hop.address) == (host, "127.0.0.1")


@pytest.mark.gen_test
async def test_pinned_resolver_answers_only_with_the_checked_address():
    hop = Hop("http://example.com/", "example.com", 80, "93.184.216.34")
    resolver = PinnedResolver(hop=hop)
    try:
        answer = await resolver.resolve("example.com", 80)
        assert [entry[1] for entry in answer] == [("93.184.216.34", 80)]
        with pytest.raises(OSError):
            await resolver.resolve("other.example", 80)
    finally:
        resolver.close()


def test_fetch_slots_cap_each_client_separately():
    slots = FetchSlots(per_client=2)
    assert [slots.take("a"), slots.take("a"), slots.take("a")] == [True, True, False]
    assert slots.take("b") is True
    slots.give_back("a")
    assert slots.take("a") is True


class Origin(web.RequestHandler):
    """Serves a small file and counts the requests that reach it."""

    def initialize(self, seen: list[str]) -> None:
        self.seen = seen

    def get(self) -> None:
        self.seen.append(self.request.host)
        self.write(b"hello from the origin\n")


@pytest.fixture
def origin(io_loop):
    """A local origin server; yields (port, hosts of the requests it received)."""
    seen: list[str] = []
    sock, port = testing.bind_unused_port()
    server = httpserver.HTTPServer(web.Application([(r"/.*", Origin, {"seen": seen})]))
    server.add_socket(sock)
    yield port, seen
    server.stop()
    io_loop.run_sync(server.close_all_connections)


@pytest.fixture
def spool(tmp_path: Path):
    spool = Spool(tmp_path, 1000, hmac.new(b"test key", digestmod=hashlib.sha256))
    yield spool
    spool.discard()


@pytest.mark.gen_test
async def test_connection_goes_to_the_checked_address_without_second_lookup(
    origin, spool
):
    port, seen = origin
    # The second answer would be refused; it must never be asked for.
    resolver = RebindingResolver("127.0.0.1", "169.254.169.254")
    name = await Fetcher(LOOPBACK_ALLOWED, resolver).fetch(
        f"http://rebind.example:{port}/a.txt", spool
    )
    assert resolver.calls == [("rebind.example", port)]
    assert seen == [f"rebind.example:{port}"]
    assert (name, spool.size) == ("a.txt", len(b"hello from the origin\n"))


@pytest.mark.gen_test
async def test_host_name_in_capitals_reaches_the_pinned_address(origin, spool):
    port, seen = origin
    resolver = RecordingResolver("127.0.0.1")
    await Fetcher(LOOPBACK_ALLOWED, resolver).fetch(
        f"http://Files.Example:{port}/a.txt", spool
    )
    assert len(seen) == 1
    assert spool.size == len(b"hello from the origin\n")
