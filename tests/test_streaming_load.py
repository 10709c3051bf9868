"""Raw downloads under load against a real server: many at once, many ranges at once,
and clients that read slowly, on one 20 MiB file at the default upload limit."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from tests.conftest import payload
from tests.support import Server

MIB = 1024 * 1024
FILE_SIZE = 20 * MIB  # the default IMGYX_MAX_UPLOAD_BYTES
SEGMENT = 64 * 1024  # plaintext bytes per sealed segment
CLIENTS = 100
SLOW_READERS = 16
SLOW_RECEIVE_BUFFER = 16 * 1024
STALL_SECONDS = 2.0
# Buffering whole files for the slow readers would take 16 x 20 MiB = 320 MiB.
MAX_STALL_GROWTH_MIB = 64
TIMEOUT = 60.0


@dataclass(frozen=True)
class Served:
    server: Server
    host: str
    port: int
    path: str
    content: bytes


@dataclass(frozen=True)
class Answer:
    """What a client saw: status, two headers, and the body's length and sha256."""

    status: int
    content_range: str | None
    content_length: str | None
    length: int
    sha256: str


def unrepeating_payload(size: int, seed: int) -> bytes:
    """payload()'s text prefix, then bytes that never repeat.

    payload() repeats every 4 KiB, so a segment served from the wrong offset would
    still compare equal; these bytes would not.
    """
    head = payload(64, seed)
    return head + random.Random(seed).randbytes(size - len(head))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    content = unrepeating_payload(FILE_SIZE, seed=5)
    server = Server(tmp_path_factory.mktemp("streaming") / "data")
    try:
        path = server.upload(content, "large.bin")["url"]
        address = urlsplit(server.base)
        assert address.hostname is not None and address.port is not None
        yield Served(server, address.hostname, address.port, path, content)
    finally:
        server.stop()


def request_head(served: Served, range_spec: str | None = None) -> bytes:
    lines = [
        f"GET {served.path} HTTP/1.1",
        f"Host: {served.host}:{served.port}",
        "Connection: close",
    ]
    if range_spec is not None:
        lines.append(f"Range: {range_spec}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def fetch(served: Served, range_spec: str | None = None) -> Answer:
    """One GET on its own connection, the body hashed as it arrives, never kept."""
    reader, writer = await asyncio.open_connection(served.host, served.port)
    try:
        writer.write(request_head(served, range_spec))
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in filter(None, header_lines):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        digest = hashlib.sha256()
        length = 0
        # Connection: close, so the body ends where the server closes.
        while chunk := await reader.read(SEGMENT):
            digest.update(chunk)
            length += len(chunk)
        return Answer(
            int(status_line.split()[1]),
            headers.get("content-range"),
            headers.get("content-length"),
            length,
            digest.hexdigest(),
        )
    finally:
        writer.close()
        await writer.wait_closed()


async def fetch_all(served: Served, range_specs: list[str | None]) -> list[Answer]:
    async with asyncio.timeout(TIMEOUT):
        return await asyncio.gather(*(fetch(served, spec) for spec in range_specs))


def expected_range(content: bytes, start: int, end: int) -> Answer:
    wanted = content[start : end + 1]
    return Answer(
        206,
        f"bytes {start}-{end}/{len(content)}",
        str(len(wanted)),
        len(wanted),
        hashlib.sha256(wanted).hexdigest(),
    )


def range_cases(size: int, count: int, seed: int) -> list[tuple[str, int, int]]:
    """(Range header, first byte, last byte): the edges, then seeded random ranges."""
    last = size - 1
    cases = [
        ("bytes=0-0", 0, 0),
        (f"bytes={last}-{last}", last, last),
        ("bytes=-1", last, last),
        (f"bytes={SEGMENT - 1}-{SEGMENT}", SEGMENT - 1, SEGMENT),
        (f"bytes={SEGMENT}-{2 * SEGMENT - 1}", SEGMENT, 2 * SEGMENT - 1),
        (f"bytes={SEGMENT - 7}-{3 * SEGMENT + 7}", SEGMENT - 7, 3 * SEGMENT + 7),
        (f"bytes={last - SEGMENT}-", last - SEGMENT, last),
        (f"bytes=0-{SEGMENT}", 0, SEGMENT),
    ]
    rng = random.Random(seed)
    while len(cases) < count:
        start = rng.randrange(size)
        length = rng.choice(
            (1, rng.randrange(2, SEGMENT), rng.randrange(2, 5 * SEGMENT))
        )
        end = min(start + length - 1, last)
        cases.append((f"bytes={start}-{end}", start, end))
    return cases


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def highest_rss_kib(pid: int, seconds: float) -> int:
    """The highest VmRSS of pid, read every 10 ms for `seconds`."""
    highest = rss_kib(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)
        highest = max(highest, rss_kib(pid))
    return highest


def stalled_reader(served: Served) -> socket.socket:
    """A connection that asks for the whole file, then reads nothing."""
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Before connect, so the advertised window is small from the handshake on.
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RECEIVE_BUFFER)
        connection.settimeout(TIMEOUT)
        connection.connect((served.host, served.port))
        connection.sendall(request_head(served))
    except BaseException:
        connection.close()
        raise
    return connection


def test_concurrent_downloads_are_byte_exact(served):
    answers = asyncio.run(fetch_all(served, [None] * CLIENTS))

    original = hashlib.sha256(served.content).hexdigest()
    whole = Answer(200, None, str(FILE_SIZE), FILE_SIZE, original)
    wrong = [
        (client, answer) for client, answer in enumerate(answers) if answer != whole
    ]
    assert wrong == []


def test_concurrent_ranges_are_byte_exact(served):
    cases = range_cases(FILE_SIZE, CLIENTS, seed=11)

    answers = asyncio.run(fetch_all(served, [spec for spec, _, _ in cases]))

    wrong = [
        (spec, answer)
        for (spec, start, end), answer in zip(cases, answers, strict=True)
        if answer != expected_range(served.content, start, end)
    ]
    assert wrong == []


def test_slow_readers_do_not_make_the_server_buffer_the_file(served):
    pid = served.server.process.pid
    before = rss_kib(pid)
    with contextlib.ExitStack() as stack:
        readers = [
            stack.enter_context(stalled_reader(served)) for _ in range(SLOW_READERS)
        ]
        highest = highest_rss_kib(pid, STALL_SECONDS)
        # Flow control must not block the server: others are still served meanwhile.
        during = asyncio.run(fetch_all(served, [f"bytes={SEGMENT - 1}-{SEGMENT}"]))
        heads = [reader.recv(12) for reader in readers]

    growth_mib = (highest - before) / 1024
    assert growth_mib < MAX_STALL_GROWTH_MIB, f"RSS grew by {growth_mib:.1f} MiB"
    assert during == [expected_range(served.content, SEGMENT - 1, SEGMENT)]
    assert heads == [b"HTTP/1.1 200"] * SLOW_READERS
