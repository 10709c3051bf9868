"""Remote-URL uploads that cannot be turned against our own network.

Every hop of a fetch is checked before any connection is opened: scheme, port, and
every address the host resolves to. The connection then goes to the address that
was checked (resolved once, pinned), so DNS rebinding cannot switch it. Redirects
are followed here, one checked hop at a time, without cookies or credentials.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.message import Message
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from tornado import httpclient, netutil
from tornado.httputil import HTTPHeaders, HTTPInputError, parse_response_start_line
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from config import IPNetwork
from ingest.spool import FileTooLarge, Spool

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
MAX_URL_LENGTH = 2048
USER_AGENT = "imgyx-fetch/1 (+remote upload)"
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str, int], Awaitable[list[str]]]

NAT64_PREFIXES = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
)
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class InvalidUrl(Exception):
    """Not a URL we fetch: bad scheme or port, or a destination that is not allowed."""


class FetchFailed(Exception):
    """The remote side failed: DNS, refused, timeout, TLS, non-2xx, too many hops."""


@dataclass(frozen=True)
class FetchPolicy:
    allow_ports: frozenset[int]
    allow_networks: tuple[IPNetwork, ...]
    connect_timeout: float
    total_timeout: float


@dataclass(frozen=True)
class HopResult:
    location: str | None
    file_name: str | None


class FetchSlots:
    """Caps concurrent fetches per client, in this process."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self._active: dict[str, int] = {}

    def take(self, client: str) -> bool:
        if self._active.get(client, 0) >= self.per_client:
            return False
        self._active[client] = self._active.get(client, 0) + 1
        return True

    def give_back(self, client: str) -> None:
        left = self._active.get(client, 0) - 1
        if left > 0:
            self._active[client] = left
        else:
            self._active.pop(client, None)


def embedded_addresses(address: IPAddress) -> list[IPAddress]:
    """The address and every IPv4 address tunnelled inside it."""
    found: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            found.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            found.append(address.sixtofour)
        if address.teredo is not None:
            found.extend(address.teredo)
        if address in IPV4_COMPATIBLE and int(address) > 1:
            found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if any(address in prefix for prefix in NAT64_PREFIXES):
            found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _is_public(address: IPAddress) -> bool:
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_unspecified
        and not address.is_loopback
        and not address.is_link_local
        and not address.is_private
    )


def _translated(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form merely carries (mapped, compatible, NAT64):
    for these only the IPv4 address says where the packets go."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if (address in IPV4_COMPATIBLE and int(address) > 1) or any(
        address in prefix for prefix in NAT64_PREFIXES
    ):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def destination_allowed(
    address: IPAddress, allow_networks: Sequence[IPNetwork]
) -> bool:
    """Globally routable (and so is anything tunnelled in it), or operator-allowed."""
    if in_allowed_network(address, allow_networks):
        return True
    translated = _translated(address)
    if translated is not None:
        return destination_allowed(translated, allow_networks)
    return all(_is_public(candidate) for candidate in embedded_addresses(address))


def in_allowed_network(address: IPAddress, allow_networks: Sequence[IPNetwork]) -> bool:
    return any(
        address.version == net.version and address in net for net in allow_networks
    )


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address the C library resolves `host` to (numeric forms included)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise FetchFailed(f"could not resolve {host}") from error
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class Hop:
    url: str
    host: str
    port: int
    address: str


async def check_url(
    url: str, policy: FetchPolicy, resolve: Resolve = system_resolve
) -> Hop:
    """Parse and check one URL; resolve its host once and return the pinned address.

    Raises InvalidUrl before any connection is opened when the URL or any of the
    addresses is not allowed, and FetchFailed when the host does not resolve.
    """
    if len(url) > MAX_URL_LENGTH or any(
        ord(char) < 33 or ord(char) == 127 for char in url
    ):
        raise InvalidUrl("not a valid URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidUrl("not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidUrl("only http and https URLs with a host can be fetched")
    if parts.username is not None or parts.password is not None:
        raise InvalidUrl("URLs with credentials are not fetched")
    port = port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname
    if port not in policy.allow_ports and not policy.allow_networks:
        # No network could open this port: refuse before even asking the DNS.
        raise InvalidUrl(f"port {port} is not allowed")

    addresses = [_parse_address(value) for value in await resolve(host, port)]
    if not addresses:
        raise FetchFailed(f"could not resolve {host}")
    for address in addresses:
        if not destination_allowed(address, policy.allow_networks):
            raise InvalidUrl("that destination is not allowed")
    inside = all(in_allowed_network(a, policy.allow_networks) for a in addresses)
    if port not in policy.allow_ports and not inside:
        raise InvalidUrl(f"port {port} is not allowed")
    return Hop(url, host, port, str(addresses[0]))


def _parse_address(value: str) -> IPAddress:
    return ipaddress.ip_address(value.split("%", 1)[0])


class PinnedResolver(netutil.Resolver):
    """Answers only for the hop's host and port, with the address that was checked."""

    def initialize(self, hop: Hop) -> None:
        self._hop = hop

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        if (host.lower(), port) != (self._hop.host, self._hop.port):
            raise OSError(f"unexpected resolution of {host}")
        address = ipaddress.ip_address(self._hop.address)
        if isinstance(address, ipaddress.IPv6Address):
            return [(socket.AF_INET6, (self._hop.address, port, 0, 0))]
        return [(socket.AF_INET, (self._hop.address, port))]


class Fetcher:
    """Fetches a URL into a spool, hop by hop, under a FetchPolicy."""

    def __init__(self, policy: FetchPolicy, resolve: Resolve = system_resolve) -> None:
        self.policy = policy
        self._resolve = resolve

    async def fetch(self, url: str, spool: Spool) -> str | None:
        """Fetch `url` into `spool`; returns the file name the server suggests.

        Raises InvalidUrl, FetchFailed, or FileTooLarge (as soon as a declared
        length or the stream itself passes the spool's limit).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.total_timeout
        seen: set[str] = set()
        for _ in range(MAX_REDIRECTS + 1):
            if url in seen:
                raise FetchFailed("redirect loop")
            seen.add(url)
            hop = await check_url(url, self.policy, self._resolve)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise FetchFailed("timed out")
            result = await self._fetch_hop(hop, spool, remaining)
            if result.location is None:
                return result.file_name
            url = urljoin(hop.url, result.location)
        raise FetchFailed(f"more than {MAX_REDIRECTS} redirects")

    async def _fetch_hop(self, hop: Hop, spool: Spool, time_left: float) -> HopResult:
        """One request to the pinned address: a redirect target, or the file's name."""
        reader = _ResponseReader(spool)
        client = SimpleAsyncHTTPClient(
            force_instance=True,
            resolver=PinnedResolver(hop=hop),
            # Above our own limit, so the spool's FileTooLarge is what stops a big body.
            max_body_size=spool.limit + 1024 * 1024,
        )
        request = httpclient.HTTPRequest(
            hop.url,
            headers={"Accept-Encoding": "identity", "User-Agent": USER_AGENT},
            follow_redirects=False,
            decompress_response=False,
            connect_timeout=min(self.policy.connect_timeout, time_left),
            request_timeout=time_left,
            validate_cert=True,
            header_callback=reader.header_line,
            streaming_callback=reader.body_chunk,
        )
        try:
            response = await client.fetch(request, raise_error=False)
        except (OSError, httpclient.HTTPClientError, HTTPInputError) as error:
            if reader.overflow is not None:
                raise reader.overflow from None
            # Refused, reset, timed out, TLS failed, or a malformed response.
            raise FetchFailed(_reason(error)) from None
        finally:
            client.close()
        if reader.overflow is not None:
            raise reader.overflow
        if response.code in REDIRECT_CODES and response.headers.get("Location"):
            return HopResult(str(response.headers["Location"]), None)
        if response.code == 599:
            raise FetchFailed(_reason(response.error))
        if not 200 <= response.code < 300:
            raise FetchFailed(f"the server answered {response.code}")
        return HopResult(None, reader.file_name(hop.url))


class _ResponseReader:
    """Watches the status and headers of a response; writes only 2xx bodies."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._headers = HTTPHeaders()
        self._status = 0
        self.overflow: FileTooLarge | None = None

    def header_line(self, line: str) -> None:
        try:
            self._header_line(line)
        except FileTooLarge as error:
            # Tornado swallows errors raised in its callbacks: keep ours to re-raise.
            self.overflow = error
            raise

    def _header_line(self, line: str) -> None:
        if not self._status and line.startswith("HTTP/"):
            self._status = parse_response_start_line(line.strip()).code
            return
        if line.strip():
            self._headers.parse_line(line)
            return
        declared = self._headers.get("Content-Length", "")
        if (
            self._is_success()
            and declared.isdigit()
            and int(declared) > self._spool.limit
        ):
            raise FileTooLarge(f"declared {declared} bytes")

    def body_chunk(self, chunk: bytes) -> None:
        if not self._is_success():
            return
        try:
            self._spool.write(chunk)
        except FileTooLarge as error:
            self.overflow = error
            raise

    def _is_success(self) -> bool:
        return 200 <= self._status < 300

    def file_name(self, url: str) -> str | None:
        disposition = self._headers.get("Content-Disposition")
        if disposition:
            name = _disposition_name(disposition)
            if name:
                return name
        last = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
        return last or None


def _disposition_name(header: str) -> str | None:
    """The file name of a Content-Disposition header; filename* (RFC 5987) wins."""
    message = Message()
    message["Content-Disposition"] = header
    params = message.get_params(header="content-disposition") or []
    plain: str | None = None
    for key, value in params[1:]:
        if str(key).lower() != "filename" or not value:
            continue
        if isinstance(value, tuple):  # the RFC 2231 / 5987 form, filename*=
            return str(email.utils.collapse_rfc2231_value(value))
        plain = plain or str(value)
    return plain


def _reason(error: BaseException | None) -> str:
    """A short, safe reason: never the remote's text, never an address."""
    text = str(error).lower()
    if isinstance(error, ssl.SSLError) or "certificate" in text:
        return "TLS failed (certificate not valid?)"
    if "timeout" in text or isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ConnectionResetError) or "closed" in text:
        return "connection closed by the server"
    return "the connection failed"
