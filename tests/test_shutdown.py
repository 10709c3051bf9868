"""A graceful stop: SIGTERM lets requests in flight finish, within a time limit."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import multipart, payload
from tests.support import Server


class Servers:
    """Starts `python server.py` on one data folder; stops what is left at the end."""

    def __init__(self, data_dir: Path, spool_dir: Path) -> None:
        self.data_dir = data_dir
        self.spool_dir = spool_dir
        self.started: list[Server] = []

    def start(self, **env: str) -> Server:
        server = Server(self.data_dir, IMGYX_SPOOL_DIR=str(self.spool_dir), **env)
        self.started.append(server)
        return server

    def close(self) -> None:
        for server in self.started:
            if server.process.poll() is None:
                server.process.kill()
                server.process.wait()
            server.log.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    servers = Servers(tmp_path / "data", spool_dir)
    yield servers
    servers.close()


def wait_for(check: Callable[[], object], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


def spool_files(spool_dir: Path) -> list[Path]:
    return list(spool_dir.glob("imgyx-*"))


def begin_upload(server: Server, content: bytes) -> tuple[socket.socket, bytes]:
    """Send the headers and half the body of an upload; returns the socket and the
    rest of the body."""
    body, headers = multipart([("file", "slow.bin", content)])
    host, port = server.base.split("//")[1].split(":")
    head = (
        f"POST /api/upload HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: {headers['Content-Type']}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    connection = socket.create_connection((host, int(port)), timeout=10)
    half = len(body) // 2
    connection.sendall(head + body[:half])
    return connection, body[half:]


def read_answer(connection: socket.socket) -> tuple[int, dict]:
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def stop_signal(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    wait_for(lambda: "stopping:" in server.log_path.read_text(), "the stop")


def file_count(data_dir: Path) -> int:
    with contextlib.closing(sqlite3.connect(data_dir / "imgyx.db")) as database:
        return int(database.execute("SELECT count(*) FROM files").fetchone()[0])


def test_an_upload_in_flight_at_the_stop_signal_completes(servers):
    server = servers.start()
    content = payload(150_000, seed=40)
    connection, rest = begin_upload(server, content)
    with connection:
        wait_for(lambda: spool_files(servers.spool_dir), "the spool")
        stop_signal(server)
        connection.sendall(rest)
        status, document = read_answer(connection)

    assert status == 201
    assert server.process.wait(timeout=10) == 0
    restarted = servers.start()
    assert restarted.request(document["url"]) == (200, content)
    restarted.stop()


def test_an_upload_that_never_ends_is_cut_at_the_shutdown_timeout(servers):
    server = servers.start(IMGYX_SHUTDOWN_TIMEOUT="1")
    connection, _ = begin_upload(server, payload(150_000, seed=41))
    with connection:
        wait_for(lambda: spool_files(servers.spool_dir), "the spool")
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=10)
        elapsed = time.monotonic() - started

    assert code == 0
    assert elapsed < 4
    assert spool_files(servers.spool_dir) == []
    objects = servers.data_dir / "objects"
    assert [path for path in objects.rglob("*") if path.is_file()] == []
    assert file_count(servers.data_dir) == 0


def test_views_counted_just_before_the_stop_signal_are_kept(servers):
    server = servers.start()
    file = server.upload(payload(500, seed=42), "seen.bin")
    for _ in range(3):
        assert server.request(file["url"])[0] == 200
    server.stop()

    restarted = servers.start()
    status, answer = restarted.request(f"/api/info?id={file['id']}")
    restarted.stop()

    assert status == 200
    assert json.loads(answer)["views"] == 3
