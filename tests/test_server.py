"""The server as a stranger runs it: a real process, restarted on the same data."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import payload
from tests.support import ROOT, Server


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


def run_server(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "server.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=30,
    )


def test_help_lists_every_option():
    result = run_server("--help")
    assert result.returncode == 0
    for option in (
        "--host",
        "--port",
        "--data-dir",
        "--master-key",
        "--max-upload-bytes",
        "--rate-limit-per-hour",
        "--trusted-proxies",
        "--public-url",
    ):
        assert option in result.stdout
    assert "IMGYX_DATABASE_URL" in result.stdout


def test_a_bad_setting_stops_the_server_with_one_line(tmp_path):
    result = run_server(IMGYX_PORT="http", IMGYX_DATA_DIR=str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "imgyx: IMGYX_PORT: expected a whole number, got 'http'"
    ]


def test_restart_keeps_every_file_name_count_and_view(data_dir):
    first = Server(data_dir)
    content = payload(150_000, seed=1)
    stored = first.upload(content, "holiday.bin")
    first.upload(payload(999, seed=2), "other.bin")
    for _ in range(3):
        assert first.request(stored["url"])[0] == 200
    first.stop()

    # One process: with several, the info could come from a worker that has not
    # yet written the view the other one counted (they flush every 2 s).
    second = Server(data_dir, IMGYX_PROCESSES="1")
    try:
        status, body = second.request(stored["url"])
        assert (status, body) == (200, content)
        info = json.loads(second.request(f"/api/info?id={stored['id']}")[1])
        assert (info["file_name"], info["views"]) == ("holiday.bin", 4)
        stats = json.loads(second.request("/api/stats")[1])
        assert stats == {
            "total_files": 2,
            "total_views": 4,
            "total_storage_bytes": 150_999,
        }
    finally:
        second.stop()


def test_master_key_file_is_private_and_reused(data_dir):
    Server(data_dir).stop()
    key_file = data_dir / "master.key"
    key = key_file.read_bytes()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    Server(data_dir).stop()
    assert key_file.read_bytes() == key


def test_another_master_key_is_refused_on_existing_data(data_dir):
    Server(data_dir).stop()
    other = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="
    result = run_server(IMGYX_DATA_DIR=str(data_dir), IMGYX_MASTER_KEY=other)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("imgyx: IMGYX_MASTER_KEY: ")


def test_data_folder_holds_no_plaintext_name_or_type(data_dir):
    server = Server(data_dir)
    marker = b"PLAINTEXT-MARKER-0123456789-" * 20
    png = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + marker * 20
    server.upload(png, "very-secret-name.png")
    text = server.upload(marker * 50 + b"\n", "another-secret-name.txt")
    server.request(text["url"])
    server.stop()
    everything = b"".join(
        path.read_bytes() for path in data_dir.rglob("*") if path.is_file()
    )
    assert len(everything) > 10_000
    for secret in (
        marker[:28],
        b"very-secret-name",
        b"another-secret-name",
        b"image/png",
        b"text/plain",
    ):
        assert secret not in everything


def test_logs_carry_no_client_address(data_dir):
    server = Server(data_dir)
    stored = server.upload(payload(100, seed=3), "a.bin")
    server.request(stored["url"], headers={"X-Forwarded-For": "203.0.113.77"})
    host, port = server.base.split("//")[1].split(":")
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(b"GARBAGE\r\n\r\n")
        connection.recv(1024)
    log = server.stop()
    access = [line for line in log.splitlines() if "imgyx.access" in line]
    assert len(access) >= 2
    assert "POST /api/upload 201" in log
    for line in log.splitlines():
        if "listening on" in line:
            continue
        assert "127.0.0.1" not in line, line
        assert "203.0.113.77" not in line, line


def worker_pids(parent: int) -> list[str]:
    """The parent's children, once both have forked (it logs before forking)."""
    found: list[str] = []
    for _ in range(100):
        found = subprocess.run(
            ["ps", "--ppid", str(parent), "-o", "pid="],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if len(found) >= 2:
            break
        time.sleep(0.1)
    return found


def test_worker_processes_serve_as_one_and_stop_together(data_dir):
    server = Server(data_dir, IMGYX_PROCESSES="2")
    workers = worker_pids(server.process.pid)
    assert len(workers) == 2
    stored = [
        server.upload(payload(500, seed=10 + index), "w.bin") for index in range(6)
    ]
    for file in stored:
        assert server.request(f"/api/info?id={file['id']}")[0] == 200
    stats = json.loads(server.request("/api/stats")[1])
    assert stats["total_files"] == 6
    server.stop()
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists()


def server_side_socket(port: int, client_port: int) -> int:
    """The inode of the server's end of the loopback connection from `client_port`."""
    wanted = (f"0100007F:{port:04X}", f"0100007F:{client_port:04X}")
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == wanted:
            return int(fields[9])
    raise AssertionError(f"no server socket for client port {client_port}")


def sockets_of(pid: int) -> set[int]:
    inodes = set()
    for descriptor in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = str(descriptor.readlink())
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def test_keep_alive_connections_are_spread_over_the_workers(data_dir):
    # Tornado alone lets the first worker awake accept a whole burst.
    server = Server(data_dir, IMGYX_PROCESSES="2")
    clients: list[socket.socket] = []
    try:
        workers = [int(pid) for pid in worker_pids(server.process.pid)]
        assert len(workers) == 2
        deadline = time.monotonic() + 15
        while server.log_path.read_text().count("worker ready") < 2:
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        host, port = server.base.removeprefix("http://").split(":")
        for _ in range(4):
            client = socket.create_connection((host, int(port)), timeout=10)
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: imgyx\r\n\r\n")
            assert client.recv(4096).startswith(b"HTTP/1.1 200")
            clients.append(client)  # kept open: keep-alive

        owners = []
        for client in clients:
            inode = server_side_socket(int(port), client.getsockname()[1])
            owners.append([pid for pid in workers if inode in sockets_of(pid)])
    finally:
        for client in clients:
            client.close()
        server.stop()

    assert all(len(owner) == 1 for owner in owners), owners
    per_worker = [sum(owner == [pid] for owner in owners) for pid in workers]
    assert per_worker == [2, 2]
