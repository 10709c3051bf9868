"""POST /api/upload with {"url": ...} over real HTTP, against origins started here."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tornado import httpclient, httpserver, iostream, tcpserver, testing, web

from handlers import Services
from tests.conftest import TEST_LIMIT, multipart, payload
from tests.support import ROOT

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + payload(300)
CHUNK = 16 * 1024


def allow_loopback(**values: Any) -> pytest.MarkDecorator:
    """Settings that let fetches reach origins on 127.0.0.1 (and only there)."""
    return pytest.mark.settings(fetch_allow_networks=LOOPBACK, **values)


class OriginLog:
    """What an origin saw: each request's path and headers, and how its answers went."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.cut_off = asyncio.Event()
        self.written = 0

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


class OriginHandler(web.RequestHandler):
    def initialize(self, log: OriginLog) -> None:
        self.log = log

    def prepare(self) -> None:
        self.log.requests.append((self.request.path, dict(self.request.headers)))


class FileHandler(OriginHandler):
    """PNG bytes sent as text/html; ?cd= sets the Content-Disposition."""

    def get(self, *_: str) -> None:
        disposition = self.get_query_argument("cd", None)
        if disposition is not None:
            self.set_header("Content-Disposition", disposition)
        self.set_header("Content-Type", "text/html")
        self.write(PNG)


class PayloadHandler(OriginHandler):
    def get(self, size: str) -> None:
        self.write(payload(int(size), seed=5))


class RedirectHandler(OriginHandler):
    """/redirect/<n>: n hops, each setting a cookie, before the file."""

    def get(self, hops: str) -> None:
        if int(hops) == 0:
            self.write(PNG)
            return
        self.set_cookie("session", "origin-secret")
        self.redirect(f"/redirect/{int(hops) - 1}")


class TargetHandler(OriginHandler):
    def get(self) -> None:
        self.redirect(self.get_query_argument("target"))


class LoopHandler(OriginHandler):
    def get(self, side: str) -> None:
        self.redirect("/loop/pong" if side == "ping" else "/loop/ping")


class StatusHandler(OriginHandler):
    def get(self, code: str) -> None:
        self.set_status(int(code))
        self.write(b"the origin says no\n")


class EmptyHandler(OriginHandler):
    def get(self) -> None:
        self.finish()


class StreamHandler(OriginHandler):
    """Streams 3x the limit slowly, with or without declaring its length first."""

    async def get(self, framing: str) -> None:
        total = 3 * TEST_LIMIT
        if framing == "declared":
            self.set_header("Content-Length", str(total))
        try:
            while self.log.written < total:
                self.write(payload(CHUNK, seed=self.log.written % 7))
                await self.flush()
                self.log.written += CHUNK
                await asyncio.sleep(0.02)
        except iostream.StreamClosedError:
            self.log.cut_off.set()


class HoldHandler(OriginHandler):
    """Answers only once the test releases it, or never if the client gives up."""

    def prepare(self) -> None:
        super().prepare()
        self.closed = asyncio.Event()

    async def get(self) -> None:
        self.log.arrived.set()
        waiters = [
            asyncio.ensure_future(event.wait())
            for event in (self.log.release, self.closed)
        ]
        await asyncio.wait(waiters, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        if not self.closed.is_set():
            self.write(PNG)

    def on_connection_close(self) -> None:
        self.closed.set()


def origin_app(log: OriginLog) -> web.Application:
    routes = [
        (r"/", FileHandler),
        (r"/file/(.*)", FileHandler),
        (r"/payload/(\d+)", PayloadHandler),
        (r"/redirect/(\d+)", RedirectHandler),
        (r"/to", TargetHandler),
        (r"/loop/(ping|pong)", LoopHandler),
        (r"/status/(\d+)", StatusHandler),
        (r"/empty", EmptyHandler),
        (r"/stream/(declared|chunked)", StreamHandler),
        (r"/hold", HoldHandler),
    ]
    return web.Application([(path, handler, {"log": log}) for path, handler in routes])


class Origin:
    """An origin web server on 127.0.0.1, in the test's IOLoop."""

    def __init__(self, ssl_options: ssl.SSLContext | None = None) -> None:
        self.log = OriginLog()
        sock, self.port = testing.bind_unused_port()
        self.server = httpserver.HTTPServer(
            origin_app(self.log), ssl_options=ssl_options
        )
        self.server.add_socket(sock)
        self.scheme = "https" if ssl_options else "http"

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    async def close(self) -> None:
        self.server.stop()
        await self.server.close_all_connections()


class RawOrigin(tcpserver.TCPServer):
    """Answers every request with the same hand-written bytes, then closes."""

    def __init__(self, answer: bytes) -> None:
        super().__init__()
        self.answer = answer
        sock, self.port = testing.bind_unused_port()
        self.add_socket(sock)

    async def handle_stream(self, stream: iostream.IOStream, address: Any) -> None:
        try:
            await stream.read_until(b"\r\n\r\n")
            await stream.write(self.answer)
        except iostream.StreamClosedError:
            pass
        finally:
            stream.close()


class Listener:
    """A bare listening socket that never accepts: shows whether anyone connected."""

    def __init__(self, host: str = "127.0.0.1", backlog: int = 8) -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(backlog)
        self.sock.setblocking(False)
        self.host = host
        self.port = self.sock.getsockname()[1]

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def connected(self) -> bool:
        try:
            peer, _ = self.sock.accept()
        except BlockingIOError:
            return False
        peer.close()
        return True


@pytest.fixture
def origin(io_loop: Any) -> Iterator[Origin]:
    server = Origin()
    yield server
    io_loop.run_sync(server.close)


@pytest.fixture
def listener() -> Iterator[Listener]:
    sock = Listener()
    yield sock
    sock.sock.close()


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that nobody vouches for: (cert file, key file)."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imgyx test origin")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "origin.crt", folder / "origin.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def allow_port(services: Services, port: int) -> None:
    """Lift the port rule for one test port, so only the address rule can refuse."""
    policy = services.fetcher.policy
    services.fetcher.policy = dataclasses.replace(
        policy, allow_ports=policy.allow_ports | {port}
    )


async def upload_url(
    http_client: Any, base_url: str, url: str
) -> httpclient.HTTPResponse:
    return await http_client.fetch(
        base_url + "/api/upload",
        method="POST",
        body=json.dumps({"url": url}),
        headers={"Content-Type": "application/json"},
        raise_error=False,
        request_timeout=20,
    )


def record_of(response: httpclient.HTTPResponse) -> dict[str, Any]:
    assert response.code in (200, 201), response.body
    return dict(json.loads(response.body))


def error_of(response: httpclient.HTTPResponse) -> tuple[int, str, str]:
    """(status, code, message) of an error answer."""
    document = json.loads(response.body)
    assert set(document) == {"code", "error"}
    return response.code, str(document["code"]), str(document["error"])


@allow_loopback()
@pytest.mark.gen_test
async def test_remote_upload_returns_201_with_the_record(http_client, base_url, origin):
    response = await upload_url(http_client, base_url, origin.url("/file/logo.png"))
    assert response.code == 201
    document = record_of(response)
    assert (document["size"], document["duplicate"]) == (len(PNG), False)
    raw = await http_client.fetch(base_url + document["url"])
    assert raw.body == PNG


@pytest.mark.parametrize(
    ("disposition", "name"),
    [
        ('attachment; filename="report.pdf"', "report.pdf"),
        (
            "attachment; filename*=UTF-8''na%C3%AFve%20r%C3%A9sum%C3%A9.txt",
            "naïve résumé.txt",
        ),
        (
            "attachment; filename=\"fallback.txt\"; filename*=UTF-8''na%C3%AFve.txt",
            "naïve.txt",
        ),
        ('inline; filename="../../etc/passwd"', "passwd"),
    ],
    ids=["quoted", "rfc5987", "rfc5987-preferred-over-fallback", "path-stripped"],
)
@allow_loopback()
@pytest.mark.gen_test
async def test_name_comes_from_content_disposition(
    http_client, base_url, origin, disposition, name
):
    url = origin.url(f"/file/ignored.bin?cd={quote(disposition)}")
    response = await upload_url(http_client, base_url, url)
    assert record_of(response)["file_name"] == name


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/file/holiday%20photo.png?size=large", "holiday photo.png"),
        ("/file/%E6%97%A5%E6%9C%AC.png", "日本.png"),
    ],
)
@allow_loopback()
@pytest.mark.gen_test
async def test_name_is_the_last_path_segment_percent_decoded(
    http_client, base_url, origin, path, name
):
    response = await upload_url(http_client, base_url, origin.url(path))
    assert record_of(response)["file_name"] == name


@pytest.mark.parametrize("path", ["/", "/file/"])
@allow_loopback()
@pytest.mark.gen_test
async def test_name_defaults_to_file_without_a_segment(
    http_client, base_url, origin, path
):
    response = await upload_url(http_client, base_url, origin.url(path))
    assert record_of(response)["file_name"] == "file"


@allow_loopback()
@pytest.mark.gen_test
async def test_mime_type_comes_from_content_not_origin_header(
    http_client, base_url, origin
):
    response = await upload_url(http_client, base_url, origin.url("/file/page.html"))
    assert record_of(response)["mimetype"] == "image/png"


@allow_loopback()
@pytest.mark.gen_test
async def test_same_bytes_as_a_direct_upload_share_its_id(
    http_client, base_url, origin
):
    body, headers = multipart([("file", "direct.bin", payload(3000, seed=5))])
    direct = await http_client.fetch(
        base_url + "/api/upload", method="POST", body=body, headers=headers
    )
    response = await upload_url(http_client, base_url, origin.url("/payload/3000"))
    assert response.code == 200
    document = record_of(response)
    assert document["id"] == record_of(direct)["id"]
    assert document["duplicate"] is True


@allow_loopback()
@pytest.mark.gen_test
async def test_fetch_asks_for_identity_and_sends_no_cookie_after_redirects(
    http_client, base_url, origin
):
    response = await upload_url(http_client, base_url, origin.url("/redirect/2"))
    assert response.code == 201
    assert origin.log.paths == ["/redirect/2", "/redirect/1", "/redirect/0"]
    for _, headers in origin.log.requests:
        assert headers.get("Accept-Encoding") == "identity"
        assert "Cookie" not in headers
        assert "Authorization" not in headers


@allow_loopback()
@pytest.mark.gen_test
async def test_redirect_to_url_with_credentials_is_refused(
    http_client, base_url, origin
):
    target = f"http://user:secret@127.0.0.1:{origin.port}/file/a.png"
    response = await upload_url(
        http_client, base_url, origin.url(f"/to?target={quote(target)}")
    )
    assert error_of(response)[:2] == (400, "INVALID_URL")
    assert origin.log.paths == ["/to"]


@allow_loopback()
@pytest.mark.gen_test
async def test_remote_file_of_exactly_the_limit_is_stored(
    http_client, base_url, origin
):
    response = await upload_url(
        http_client, base_url, origin.url(f"/payload/{TEST_LIMIT}")
    )
    assert record_of(response)["size"] == TEST_LIMIT


@allow_loopback()
@pytest.mark.gen_test(timeout=10)
async def test_declared_length_over_the_limit_returns_413(
    http_client, base_url, origin
):
    response = await upload_url(http_client, base_url, origin.url("/stream/declared"))
    assert error_of(response)[:2] == (413, "FILE_TOO_LARGE")


@allow_loopback()
@pytest.mark.gen_test(timeout=10)
async def test_declared_length_over_the_limit_is_not_downloaded(
    http_client, base_url, origin
):
    await upload_url(http_client, base_url, origin.url("/stream/declared"))
    # The origin paces its chunks, so a client that hangs up on the headers makes
    # one of the first writes fail; one that reads on would let all 3x pass.
    await asyncio.wait_for(origin.log.cut_off.wait(), timeout=3)
    assert origin.log.written < TEST_LIMIT


@allow_loopback()
@pytest.mark.gen_test(timeout=10)
async def test_chunked_body_passing_the_limit_returns_413(
    http_client, base_url, origin
):
    response = await upload_url(http_client, base_url, origin.url("/stream/chunked"))
    assert error_of(response)[:2] == (413, "FILE_TOO_LARGE")
    await asyncio.wait_for(origin.log.cut_off.wait(), timeout=3)
    assert origin.log.written < 2 * TEST_LIMIT


@allow_loopback()
@pytest.mark.gen_test(timeout=10)
async def test_body_without_length_passing_the_limit_returns_413(http_client, base_url):
    raw = RawOrigin(b"HTTP/1.0 200 OK\r\n\r\n" + payload(TEST_LIMIT + 1))
    try:
        response = await upload_url(
            http_client, base_url, f"http://127.0.0.1:{raw.port}/"
        )
    finally:
        raw.stop()
    assert error_of(response)[:2] == (413, "FILE_TOO_LARGE")


@allow_loopback()
@pytest.mark.gen_test
async def test_body_longer_than_its_length_is_cut_at_the_declared_length(
    http_client, base_url
):
    # HTTP frames the body by Content-Length: the extra bytes are not part of it,
    # so they can neither be stored nor push the file past the limit.
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n"
    raw = RawOrigin(head + payload(2 * TEST_LIMIT))
    try:
        response = await upload_url(
            http_client, base_url, f"http://127.0.0.1:{raw.port}/"
        )
    finally:
        raw.stop()
    document = record_of(response)
    assert document["size"] == 10
    stored = await http_client.fetch(base_url + document["url"])
    assert stored.body == payload(10)


@allow_loopback()
@pytest.mark.gen_test
async def test_body_shorter_than_its_length_fails_the_fetch(http_client, base_url):
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"
    raw = RawOrigin(head + payload(100))
    try:
        response = await upload_url(
            http_client, base_url, f"http://127.0.0.1:{raw.port}/"
        )
    finally:
        raw.stop()
    assert error_of(response)[:2] == (400, "FETCH_FAILED")


@pytest.mark.parametrize("status", [403, 404, 500])
@allow_loopback()
@pytest.mark.gen_test
async def test_non_2xx_answer_fails_the_fetch(http_client, base_url, origin, status):
    response = await upload_url(http_client, base_url, origin.url(f"/status/{status}"))
    code, error, message = error_of(response)
    assert (code, error) == (400, "FETCH_FAILED")
    assert str(status) in message


@allow_loopback()
@pytest.mark.gen_test
async def test_empty_remote_file_fails_the_fetch(http_client, base_url, origin):
    response = await upload_url(http_client, base_url, origin.url("/empty"))
    assert error_of(response)[:2] == (400, "FETCH_FAILED")


@allow_loopback()
@pytest.mark.gen_test
async def test_refused_connection_fails_the_fetch(http_client, base_url):
    closed = Listener()
    url = closed.url("/a.png")
    closed.sock.close()
    code, error, message = error_of(await upload_url(http_client, base_url, url))
    assert (code, error) == (400, "FETCH_FAILED")
    assert "refused" in message


@pytest.mark.gen_test
async def test_unresolvable_host_fails_the_fetch(http_client, base_url):
    url = "http://no-such-host.invalid/a.png"
    code, error, message = error_of(await upload_url(http_client, base_url, url))
    assert (code, error) == (400, "FETCH_FAILED")
    assert "resolve" in message


@allow_loopback(fetch_timeout=1.0)
@pytest.mark.gen_test(timeout=10)
async def test_slow_origin_times_out_after_fetch_timeout(http_client, base_url, origin):
    started = time.monotonic()
    response = await upload_url(http_client, base_url, origin.url("/hold"))
    elapsed = time.monotonic() - started
    code, error, message = error_of(response)
    assert (code, error) == (400, "FETCH_FAILED")
    assert "timed out" in message
    assert 0.9 < elapsed < 3


@allow_loopback(fetch_connect_timeout=0.5)
@pytest.mark.gen_test(timeout=10)
async def test_origin_that_never_accepts_times_out_after_connect_timeout(
    http_client, base_url
):
    # A full backlog makes the kernel drop further connection attempts unanswered.
    full = Listener(backlog=0)
    waiting = []
    try:
        while True:
            probe = socket.socket()
            probe.settimeout(0.2)
            waiting.append(probe)
            try:
                probe.connect((full.host, full.port))
            except TimeoutError:
                break
        started = time.monotonic()
        response = await upload_url(http_client, base_url, full.url("/a.png"))
        elapsed = time.monotonic() - started
    finally:
        for probe in waiting:
            probe.close()
        full.sock.close()
    code, error, message = error_of(response)
    assert (code, error) == (400, "FETCH_FAILED")
    assert "timed out" in message
    assert elapsed < 2


@allow_loopback()
@pytest.mark.gen_test
async def test_five_redirects_are_followed(http_client, base_url, origin):
    response = await upload_url(http_client, base_url, origin.url("/redirect/5"))
    assert response.code == 201
    assert len(origin.log.requests) == 6


@allow_loopback()
@pytest.mark.gen_test
async def test_sixth_redirect_fails_the_fetch(http_client, base_url, origin):
    response = await upload_url(http_client, base_url, origin.url("/redirect/6"))
    assert error_of(response)[:2] == (400, "FETCH_FAILED")
    assert "/redirect/0" not in origin.log.paths


@allow_loopback()
@pytest.mark.gen_test
async def test_redirect_loop_ends_in_400(http_client, base_url, origin):
    response = await upload_url(http_client, base_url, origin.url("/loop/ping"))
    assert error_of(response)[:2] == (400, "FETCH_FAILED")
    assert origin.log.paths == ["/loop/ping", "/loop/pong"]


@allow_loopback()
@pytest.mark.gen_test
async def test_redirect_outside_the_allowed_network_is_refused_unconnected(
    http_client, base_url, origin, services
):
    other = Listener("127.0.0.2")
    try:
        allow_port(services, other.port)
        target = other.url("/secret")
        response = await upload_url(
            http_client, base_url, origin.url(f"/to?target={quote(target)}")
        )
        assert error_of(response)[:2] == (400, "INVALID_URL")
        assert origin.log.paths == ["/to"]
        assert not other.connected()
    finally:
        other.sock.close()


@pytest.mark.gen_test
async def test_own_machine_is_refused_unconnected_without_allowed_networks(
    http_client, base_url, services, listener
):
    allow_port(services, listener.port)
    response = await upload_url(http_client, base_url, listener.url("/secret"))
    assert error_of(response)[:2] == (400, "INVALID_URL")
    assert not listener.connected()


@pytest.mark.gen_test
async def test_unlisted_port_is_refused_at_once(http_client, base_url):
    started = time.monotonic()
    response = await upload_url(http_client, base_url, "http://8.8.8.8:22/")
    code, error, message = error_of(response)
    assert (code, error) == (400, "INVALID_URL")
    assert "port 22" in message
    assert time.monotonic() - started < 1


@allow_loopback()
@pytest.mark.gen_test
async def test_self_signed_certificate_fails_the_fetch(
    http_client, base_url, self_signed
):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*self_signed)
    tls_origin = Origin(ssl_options=context)
    try:
        response = await upload_url(
            http_client, base_url, tls_origin.url("/file/a.png")
        )
    finally:
        await tls_origin.close()
    code, error, message = error_of(response)
    assert (code, error) == (400, "FETCH_FAILED")
    assert "TLS" in message
    assert tls_origin.log.requests == []


@allow_loopback(fetch_max_per_client=1)
@pytest.mark.gen_test(timeout=10)
async def test_second_concurrent_fetch_of_a_client_returns_429(
    http_client, base_url, origin
):
    first = asyncio.ensure_future(
        upload_url(http_client, base_url, origin.url("/hold"))
    )
    await asyncio.wait_for(origin.log.arrived.wait(), timeout=3)
    second = await upload_url(http_client, base_url, origin.url("/file/b.png"))
    origin.log.release.set()
    assert error_of(second)[:2] == (429, "RATE_LIMITED")
    assert (await first).code == 201


@allow_loopback(fetch_max_per_client=1)
@pytest.mark.gen_test
async def test_finished_fetch_frees_its_slot(http_client, base_url, origin):
    first = await upload_url(http_client, base_url, origin.url("/status/404"))
    second = await upload_url(http_client, base_url, origin.url("/file/b.png"))
    assert error_of(first)[:2] == (400, "FETCH_FAILED")
    assert second.code == 201


@allow_loopback(rate_limit_per_hour=1)
@pytest.mark.gen_test
async def test_fetch_counts_against_the_upload_rate_limit(
    http_client, base_url, origin
):
    fetched = await upload_url(http_client, base_url, origin.url("/file/a.png"))
    body, headers = multipart([("file", "b.bin", payload(100))])
    direct = await http_client.fetch(
        base_url + "/api/upload",
        method="POST",
        body=body,
        headers=headers,
        raise_error=False,
    )
    assert fetched.code == 201
    assert error_of(direct)[:2] == (429, "RATE_LIMITED")


@pytest.mark.parametrize("value", ["10.0.0.0/33", "intranet"])
def test_invalid_allow_networks_stops_the_server(tmp_path, value):
    result = subprocess.run(
        [sys.executable, "server.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "IMGYX_DATA_DIR": str(tmp_path / "data"),
            "IMGYX_PORT": "0",
            "IMGYX_FETCH_ALLOW_NETWORKS": value,
        },
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"imgyx: IMGYX_FETCH_ALLOW_NETWORKS: {value!r} is not an IP address or CIDR "
        "network"
    ]
