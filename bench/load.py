"""Load benchmark: imgyx against nginx serving the same files on the same machine.

    .venv/bin/python bench/load.py                  # 3 rounds, local store + SQLite
    .venv/bin/python bench/load.py --quick          # a short smoke run (one round)
    .venv/bin/python bench/load.py --backend s3     # SeaweedFS (S3) + PostgreSQL
    .venv/bin/python bench/load.py --only hotlink --processes 0

Starts imgyx (`server.py`, default settings but rate limit off, throwaway data and
spool folders) and nginx (Debian's package, on loopback, sendfile on, access log
off) serving the same plaintext files, and measures the two in alternation, round
after round (imgyx, nginx, imgyx, nginx, ...), because absolute figures on shared
machines drift between runs far more than the ratio between two servers measured
a few seconds apart. Phases (see bench/README.md): hotlink, download, ranges,
upload, lookup. Prints a table and appends JSON lines to bench/results/load.jsonl.

Needs `nginx` and `wrk` on PATH (apt-get install -y nginx wrk). Linux only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import io
import itertools
import json
import math
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for folder in (str(BENCH), str(REPO)):
    if folder not in sys.path:
        sys.path.insert(0, folder)

from memory import BenchError, interrupted  # noqa: E402

RESULTS = BENCH / "results" / "load.jsonl"
WRK_SCRIPTS = BENCH / "wrk"
MIB = 1024 * 1024
MB = 1_000_000
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
LISTENING = re.compile(r"imgyx listening on http://([^:\s]+):(\d+)")
IMAGE_BYTES = 50_000
BIG_BYTES = 20 * MIB
RANGE_BYTES = 64 * 1024
UPLOAD_CLIENTS = 8
BLOCK = MIB  # the download client reads and compares 1 MiB at a time
PHASES = ("hotlink", "download", "ranges", "upload", "lookup")
SMALL_DB = 10_000


@dataclass(frozen=True)
class Plan:
    """How long and how much each phase runs; --quick shortens everything."""

    rounds: int
    wrk_seconds: float
    download_seconds: float
    upload_1_seconds: float
    upload_20_per_client: int
    lookup_seconds: float
    large_db: int

    @classmethod
    def make(cls, arguments: argparse.Namespace) -> Plan:
        if arguments.quick:
            plan = cls(1, 1.5, 1.5, 1.5, 1, 1.0, 50_000)
        else:
            plan = cls(3, 5.0, 4.0, 5.0, 3, 4.0, 1_000_000)
        changes: dict[str, Any] = {}
        if arguments.rounds is not None:
            changes["rounds"] = arguments.rounds
        if arguments.large_db is not None:
            changes["large_db"] = arguments.large_db
        return cls(**{**plan.__dict__, **changes})


# --- processes ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """pid's child processes, their children, ... (from /proc/PID/task/*/children)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = [task.name for task in Path(f"/proc/{parent}/task").iterdir()]
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as children:
                    kids = [int(word) for word in children.read().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
            found.extend(kids)
            pending.extend(kids)
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes, in seconds (from /proc/PID/stat)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return total / TICKS


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * PAGE
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def pss_bytes(pids: list[int]) -> int:
    """Proportional set size: shared pages (a forked worker's) counted once."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                for line in rollup:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


class RssSampler(threading.Thread):
    """Sums the RSS of a server's processes every `interval` seconds (and, every
    `pss_every` samples, their PSS, which costs the kernel more to compute)."""

    def __init__(
        self, pids: list[int], interval: float = 0.01, pss_every: int = 2
    ) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.interval = interval
        self.pss_every = pss_every
        self.peak = 0
        self.peak_pss = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self._stop_event.is_set():
            self.peak = max(self.peak, rss_bytes(self.pids))
            if self.samples % self.pss_every == 0:
                self.peak_pss = max(self.peak_pss, pss_bytes(self.pids))
            self.samples += 1
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:
                next_at, delay = time.monotonic(), 0
            self._stop_event.wait(delay)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


class Target:
    """A server under test: a name, a port, and the processes to watch."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def pids(self) -> list[int]:
        return [self.process.pid, *descendants(self.process.pid)]

    def stop(self, signal_number: int = signal.SIGTERM, grace: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal_number)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                print(f"{self.name} ignored the signal; killing it", file=sys.stderr)
                # Its own session and process group (start_new_session): only the
                # processes this benchmark started are in it.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n  ".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def wait_until_answers(target: Target, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if target.process.poll() is not None:
            raise BenchError(
                f"{target.name} exited with {target.process.returncode}:\n  "
                + target.log_tail()
            )
        try:
            status, _, _ = fetch(target.port, "GET", path)
            if status < 500:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise BenchError(f"{target.name} does not answer:\n  " + target.log_tail())


class Nginx(Target):
    """nginx with a generated minimal configuration, in the foreground."""

    def __init__(self, root: Path, prefix: Path) -> None:
        self.name = "nginx"
        self.port = free_port()
        prefix.mkdir(parents=True, exist_ok=True)
        for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / name).mkdir(exist_ok=True)
        # Workers of a root master run as `user`; the temporary folders are private.
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = prefix / "nginx.conf"
        conf.write_text(
            f"worker_processes auto;\n{user}pid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/error.log warn;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            "    include /etc/nginx/mime.types;\n"
            "    default_type application/octet-stream;\n"
            "    sendfile on;\n"
            "    access_log off;\n"
            # Tornado keeps a connection for any number of requests; so does this.
            "    keepalive_requests 1000000;\n"
            f"    client_body_temp_path {prefix}/body;\n"
            f"    proxy_temp_path {prefix}/proxy;\n"
            f"    fastcgi_temp_path {prefix}/fastcgi;\n"
            f"    uwsgi_temp_path {prefix}/uwsgi;\n"
            f"    scgi_temp_path {prefix}/scgi;\n"
            f"    server {{ listen 127.0.0.1:{self.port}; root {root}; }}\n"
            "}\n"
        )
        self.log_path = prefix / "nginx.out"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                ["nginx", "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until_answers(self, "/hotlink.jpg", 15)


class Imgyx(Target):
    """`python server.py` on a free port, its log in a file (not a pipe we drain)."""

    def __init__(
        self, name: str, folder: Path, extra_env: dict[str, str], processes: int | None
    ) -> None:
        self.name = name
        folder.mkdir(parents=True, exist_ok=True)
        for sub in ("data", "spool"):
            (folder / sub).mkdir(mode=0o700, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGYX_")}
        env.update(
            IMGYX_HOST="127.0.0.1",
            IMGYX_PORT="0",
            IMGYX_DATA_DIR=str(folder / "data"),
            IMGYX_SPOOL_DIR=str(folder / "spool"),
            IMGYX_RATE_LIMIT_PER_HOUR="0",
            PYTHONUNBUFFERED="1",
            **extra_env,
        )
        if processes is not None:
            env["IMGYX_PROCESSES"] = str(processes)
        self.env = env
        from config import Settings

        configured = Settings.from_environ(env).processes
        self.workers = configured or os.cpu_count() or 1
        self.log_path = folder / "server.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / "server.py")],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.port = self._wait_for_port()
        wait_until_answers(self, "/nonexistent0")
        if self.workers > 1:  # every worker runs its IO loop once it has forked
            deadline = time.monotonic() + 15
            while len(descendants(self.process.pid)) < self.workers:
                if time.monotonic() > deadline:
                    raise BenchError(f"{name}: workers did not start")
                time.sleep(0.05)
            time.sleep(1.0)

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = LISTENING.search(self.log_path.read_text(errors="replace"))
            if match:
                return int(match.group(2))
            if self.process.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with {self.process.returncode}:\n  "
                    + self.log_tail()
                )
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not start")


# --- HTTP clients ----------------------------------------------------------------


def fetch(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def upload(port: int, name: str, parts: list[bytes | memoryview], size: int) -> dict:
    """POST one multipart upload whose file bytes are `parts`; the answer's JSON.

    Raises BenchError unless the server stored it as new (201)."""
    boundary = "imgyx-load-" + secrets.token_hex(8)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        connection.putrequest("POST", "/api/upload")
        connection.putheader(
            "Content-Type", f"multipart/form-data; boundary={boundary}"
        )
        connection.putheader("Content-Length", str(len(head) + size + len(tail)))
        connection.endheaders()
        connection.send(head)
        for part in parts:
            connection.send(part)
        connection.send(tail)
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    if response.status != 201:
        raise BenchError(f"upload of {name}: HTTP {response.status} {answer[:200]!r}")
    result: dict = json.loads(answer)
    return result


class Payloads:
    """Upload bodies of one size, each different (so none is a duplicate): a unique
    first line, then shared random bytes. Nothing is copied per upload."""

    counter = itertools.count()

    def __init__(self, size: int) -> None:
        self.size = size
        self.body = memoryview(os.urandom(size))

    def next(self) -> list[bytes | memoryview]:
        line = b"IMGYX-LOAD-BENCH %012d %s\n" % (
            next(self.counter),
            secrets.token_hex(8).encode(),
        )
        return [line, self.body[len(line) :]]


class Downloader:
    """GETs one path over a raw keep-alive socket and compares every byte with the
    original (1 MiB at a time, with memcmp), so the client costs little per byte."""

    def __init__(self, port: int, path: str, expected: bytes) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        self.blocks = [expected[i : i + BLOCK] for i in range(0, len(expected), BLOCK)]
        self.size = len(expected)
        self.buffer = bytearray(BLOCK)
        self.view = memoryview(self.buffer)

    def get(self) -> int:
        self.socket.sendall(self.request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.socket.recv(65536)
            if not chunk:
                raise BenchError("connection closed before the headers")
            head += chunk
        header, _, rest = head.partition(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        if lines[0].split()[1] != "200":
            raise BenchError(f"download: {lines[0]}")
        length = next(
            int(line.split(":", 1)[1])
            for line in lines[1:]
            if line.lower().startswith("content-length:")
        )
        if length != self.size:
            raise BenchError(f"download: Content-Length {length}, not {self.size}")
        self.buffer[: len(rest)] = rest
        filled = len(rest)
        for block in self.blocks:
            want = len(block)
            while filled < want:
                got = self.socket.recv_into(self.view[filled:want])
                if not got:
                    raise BenchError("download: connection closed mid-body")
                filled += got
            if (self.buffer if want == BLOCK else self.buffer[:want]) != block:
                raise BenchError("download: bytes differ from the original")
            filled = 0
        return length

    def close(self) -> None:
        self.socket.close()


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (share in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(math.ceil(share / 100 * len(ordered)), 1)
    return ordered[rank - 1]


# --- wrk ---------------------------------------------------------------------


def wrk(
    url: str,
    connections: int,
    seconds: float,
    script: str = "report.lua",
    script_args: tuple[str, ...] = (),
    threads: int = 2,
    timeout: float = 10,
) -> dict[str, Any]:
    command = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(round(seconds), 1)}s",
        f"--timeout={timeout:g}s",
        "-s",
        str(WRK_SCRIPTS / script),
        url,
    ]
    if script_args:
        command += ["--", *script_args]
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + timeout + 60
    )
    line = next(
        (x for x in finished.stdout.splitlines() if x.startswith("WRKJSON ")), None
    )
    if finished.returncode != 0 or line is None:
        raise BenchError(
            f"wrk failed: {finished.stdout[-500:]} {finished.stderr[-500:]}"
        )
    raw = json.loads(line[len("WRKJSON ") :])
    elapsed = raw["duration_us"] / 1e6
    errors = sum(
        raw[name]
        for name in ("connect_errors", "read_errors", "write_errors", "timeouts")
    )
    return {
        "requests": raw["requests"],
        "seconds": round(elapsed, 3),
        "requests_per_s": round(raw["requests"] / elapsed, 1),
        "mib_per_s": round(raw["bytes"] / MIB / elapsed, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 3),
        "p99_ms": round(raw["p99_us"] / 1000, 3),
        "errors": errors,
        "bad_status": raw["bad_status"],
    }


# --- measurements ------------------------------------------------------------


@contextlib.contextmanager
def observed(target: Target, result: dict[str, Any]) -> Iterator[None]:
    """Adds the server's CPU seconds and peak RSS and PSS (summed over all its
    processes) to `result`."""
    pids = target.pids()
    sampler = RssSampler(pids)
    before = cpu_seconds(pids)
    sampler.start()
    try:
        yield
    finally:
        sampler.stop()
        result["server_cpu_s"] = round(cpu_seconds(pids) - before, 3)
        result["peak_rss_mb"] = round(sampler.peak / MB, 1)
        result["peak_pss_mb"] = round(sampler.peak_pss / MB, 1)
        result["processes"] = len(pids)


def measure_wrk(
    target: Target, path: str, connections: int, seconds: float, **options: Any
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with observed(target, result):
        result.update(wrk(target.url(path), connections, seconds, **options))
    cpu = result["server_cpu_s"]
    if cpu > 0:
        result["requests_per_cpu_s"] = round(result["requests"] / cpu, 1)
        moved = result["mib_per_s"] * result["seconds"]
        result["mib_per_cpu_s"] = round(moved / cpu, 1)
    return result


def measure_download(
    target: Target, path: str, expected: bytes, connections: int, seconds: float
) -> dict[str, Any]:
    """`connections` clients GET the file back to back for `seconds`; all checked."""
    clients = [Downloader(target.port, path, expected) for _ in range(connections)]
    totals = [0] * connections
    failures: list[str] = []
    barrier = threading.Barrier(connections + 1)
    result: dict[str, Any] = {}

    def run(index: int, deadline_box: list[float]) -> None:
        barrier.wait()
        try:
            while True:
                totals[index] += clients[index].get()
                if time.perf_counter() >= deadline_box[0]:
                    return
        except (OSError, BenchError) as error:
            failures.append(f"{type(error).__name__}: {error}")

    deadline = [0.0]
    threads = [
        threading.Thread(target=run, args=(i, deadline), daemon=True)
        for i in range(connections)
    ]
    for thread in threads:
        thread.start()
    try:
        with observed(target, result):
            deadline[0] = time.perf_counter() + seconds
            started = time.perf_counter()
            barrier.wait()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
    finally:
        for client in clients:
            client.close()
    if failures:
        raise BenchError(f"{target.name} download: {failures[0]}")
    moved = sum(totals)
    cpu = result["server_cpu_s"]
    result.update(
        downloads=moved // len(expected),
        seconds=round(elapsed, 3),
        mib_per_s=round(moved / MIB / elapsed, 1),
        mib_per_cpu_s=round(moved / MIB / cpu, 1) if cpu > 0 else None,
        verified="byte-exact",
    )
    return result


def measure_uploads(
    target: Target,
    payloads: Payloads,
    clients: int,
    seconds: float | None,
    per_client: int | None,
) -> dict[str, Any]:
    """`clients` upload different files back to back, for `seconds` or `per_client`
    uploads each; every answer must be 201."""
    latencies: list[float] = []
    failures: list[str] = []
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]
    lock = threading.Lock()

    def run(index: int) -> None:
        barrier.wait()
        done = 0
        try:
            while True:
                parts = payloads.next()
                began = time.perf_counter()
                upload(target.port, f"load-{index}-{done}.bin", parts, payloads.size)
                with lock:
                    latencies.append(time.perf_counter() - began)
                done += 1
                if per_client is not None and done >= per_client:
                    return
                if per_client is None and time.perf_counter() >= stop_at[0]:
                    return
        except (OSError, BenchError) as error:
            failures.append(f"{type(error).__name__}: {error}")

    threads = [
        threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    result: dict[str, Any] = {}
    with observed(target, result):
        stop_at[0] = time.perf_counter() + (seconds or 0)
        started = time.perf_counter()
        barrier.wait()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    if failures:
        raise BenchError(f"{target.name} upload: {failures[0]}")
    moved = len(latencies) * payloads.size
    cpu = result["server_cpu_s"]
    result.update(
        uploads=len(latencies),
        seconds=round(elapsed, 3),
        mib_per_s=round(moved / MIB / elapsed, 1),
        mib_per_cpu_s=round(moved / MIB / cpu, 1) if cpu > 0 else None,
        p50_ms=round(percentile(latencies, 50) * 1000, 1),
        p99_ms=round(percentile(latencies, 99) * 1000, 1),
    )
    return result


# --- the run -----------------------------------------------------------------


@dataclass
class Context:
    arguments: argparse.Namespace
    plan: Plan
    root: Path
    image: bytes
    big: bytes
    nginx: Nginx
    imgyx: Imgyx
    image_id: str = ""
    big_id: str = ""
    lookup: list[tuple[str, Imgyx, Path]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    payloads: dict[int, Payloads] = field(default_factory=dict)

    def pair(self) -> list[tuple[Target, str, str]]:
        """(server, image path, big file path) in the order they are measured."""
        return [
            (self.imgyx, f"/{self.image_id}", f"/{self.big_id}"),
            (self.nginx, "/hotlink.jpg", "/big.bin"),
        ]

    def record(
        self,
        phase: str,
        case: str,
        server: str,
        round_number: int,
        result: dict[str, Any],
    ) -> None:
        row = {
            "phase": phase,
            "case": case,
            "server": server,
            "round": round_number,
            **result,
        }
        self.records.append(row)
        shown = {k: v for k, v in result.items() if k in SHOWN}
        print(
            f"  round {round_number} {case:<12} {server:<10} {shown}", file=sys.stderr
        )


SHOWN = (
    "requests_per_s",
    "mib_per_s",
    "p50_ms",
    "p99_ms",
    "peak_rss_mb",
    "peak_pss_mb",
    "server_cpu_s",
    "mib_per_cpu_s",
    "errors",
    "bad_status",
)


def phase_hotlink(context: Context, round_number: int) -> None:
    for target, image, _ in context.pair():
        result = measure_wrk(target, image, 32, context.plan.wrk_seconds)
        context.record("hotlink", "hotlink", target.name, round_number, result)


def phase_download(context: Context, round_number: int) -> None:
    plan = context.plan
    for connections in (1, 4):
        for target, _, big in context.pair():
            result = measure_download(
                target, big, context.big, connections, plan.download_seconds
            )
            context.record(
                "download", f"download-{connections}", target.name, round_number, result
            )
    for target, _, big in context.pair():
        result = measure_wrk(target, big, 32, plan.wrk_seconds, timeout=60)
        context.record("download", "download-32", target.name, round_number, result)


def phase_ranges(context: Context, round_number: int) -> None:
    for target, _, big in context.pair():
        result = measure_wrk(
            target,
            big,
            16,
            context.plan.wrk_seconds,
            script="ranges.lua",
            script_args=(str(len(context.big)), str(RANGE_BYTES)),
        )
        context.record("ranges", "ranges", target.name, round_number, result)


def phase_upload(context: Context, round_number: int) -> None:
    plan = context.plan
    for size_mib in (1, 20):
        payloads = context.payloads.setdefault(size_mib, Payloads(size_mib * MIB))
        if size_mib == 1:
            result = measure_uploads(
                context.imgyx, payloads, UPLOAD_CLIENTS, plan.upload_1_seconds, None
            )
        else:
            result = measure_uploads(
                context.imgyx, payloads, UPLOAD_CLIENTS, None, plan.upload_20_per_client
            )
        context.record("upload", f"upload-{size_mib}", "imgyx", round_number, result)


def phase_lookup(context: Context, round_number: int) -> None:
    """Latency at -c1 is what other load on the machine disturbs most, so the small
    and the large database alternate every second: `lookup_seconds` slices of 1 s
    each, per endpoint; a round's figure is the median over its slices."""
    slices = max(round(context.plan.lookup_seconds), 1)
    for case, script, prefix, path in (
        ("lookup-raw", "ids.lua", "/", ""),
        ("lookup-info", "ids.lua", "/api/info?id=", ""),
        ("lookup-stats", "report.lua", None, "/api/stats"),
    ):
        parts: dict[str, list[dict[str, Any]]] = {}
        for _ in range(slices):
            for label, server, ids in context.lookup:
                args = (str(ids), prefix) if prefix else ()
                parts.setdefault(label, []).append(
                    measure_wrk(
                        server, path, 1, 1, script=script, script_args=args, threads=1
                    )
                )
        for label, results in parts.items():
            context.record("lookup", case, label, round_number, combine(results))


def combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One figure from several short wrk runs: totals summed, rates recomputed,
    latency percentiles as the median over the runs."""
    requests = sum(r["requests"] for r in results)
    seconds = sum(r["seconds"] for r in results)
    cpu = sum(r["server_cpu_s"] for r in results)

    def median(name: str) -> float:
        return round(statistics.median(r[name] for r in results), 3)

    return {
        "requests": requests,
        "seconds": round(seconds, 3),
        "slices": len(results),
        "requests_per_s": round(requests / seconds, 1),
        "p50_ms": median("p50_ms"),
        "p99_ms": median("p99_ms"),
        "errors": sum(r["errors"] for r in results),
        "bad_status": sum(r["bad_status"] for r in results),
        "server_cpu_s": round(cpu, 3),
        "requests_per_cpu_s": round(requests / cpu, 1) if cpu > 0 else None,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        "peak_pss_mb": max(r["peak_pss_mb"] for r in results),
    }


PHASE_RUNNERS: dict[str, Callable[[Context, int], None]] = {
    "hotlink": phase_hotlink,
    "download": phase_download,
    "ranges": phase_ranges,
    "upload": phase_upload,
    "lookup": phase_lookup,
}


# --- setup -------------------------------------------------------------------


def make_image(target: int = IMAGE_BYTES) -> bytes:
    """A real JPEG (noise over a gradient) of about `target` bytes."""
    from PIL import Image

    noise = Image.effect_noise((480, 360), 40).convert("RGB")
    gradient = Image.linear_gradient("L").resize((480, 360)).convert("RGB")
    picture = Image.blend(noise, gradient, 0.6)
    best = b""
    for quality in range(40, 96):
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=quality)
        data = buffer.getvalue()
        if not best or abs(len(data) - target) < abs(len(best) - target):
            best = data
        if len(data) > target:
            break
    return best


def make_big(size: int = BIG_BYTES) -> bytes:
    """Random bytes behind a fixed text line, so libmagic never calls it a program."""
    line = b"IMGYX-LOAD-BENCH big file\n"
    return line + os.urandom(size - len(line))


def verify(context: Context) -> None:
    """Both servers serve the same bytes, whole and in ranges, before any timing."""
    chooser = random.Random(1)
    for target, image, big in context.pair():
        status, headers, body = fetch(target.port, "GET", image)
        if status != 200 or body != context.image:
            raise BenchError(f"{target.name}: the image does not come back intact")
        if headers.get("Content-Type", "").split(";")[0] != "image/jpeg":
            raise BenchError(
                f"{target.name}: image served as {headers['Content-Type']}"
            )
        for _ in range(16):
            start = chooser.randrange(len(context.big) - RANGE_BYTES)
            end = start + RANGE_BYTES - 1
            status, _, body = fetch(
                target.port, "GET", big, {"Range": f"bytes={start}-{end}"}
            )
            if status != 206 or body != context.big[start : end + 1]:
                raise BenchError(f"{target.name}: range {start}-{end} is wrong")


def backend_environment(
    arguments: argparse.Namespace, stack: contextlib.ExitStack
) -> Callable[[str], dict[str, str]]:
    """A function giving each imgyx server its store and database settings."""
    if arguments.backend == "local":
        return lambda name: {}
    from tests.services import postgresql, seaweedfs

    print("starting SeaweedFS and PostgreSQL", file=sys.stderr)
    s3 = stack.enter_context(seaweedfs())
    postgres = stack.enter_context(postgresql())

    def environment(name: str) -> dict[str, str]:
        database = f"bench_{name.replace('-', '_')}"
        postgres.execute(f"CREATE DATABASE {database}")
        return {
            "IMGYX_STORAGE": "s3",
            "IMGYX_S3_ENDPOINT": s3.endpoint,
            "IMGYX_S3_ACCESS_KEY": s3.access_key,
            "IMGYX_S3_SECRET_KEY": s3.secret_key,
            "IMGYX_S3_BUCKET": "imgyx-bench",
            "IMGYX_S3_PREFIX": f"{name}/",
            "IMGYX_S3_SECURE": "false",
            "IMGYX_DATABASE_URL": postgres.url(database),
        }

    return environment


def seed(server: Imgyx, total: int, ids: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        str(BENCH / "seed.py"),
        "--total",
        str(total),
        "--ids-out",
        str(ids),
        "--sample",
        "10000",
        "--seed",
        "1",
    ]
    finished = subprocess.run(
        command, cwd=REPO, env=server.env, stdout=subprocess.PIPE, text=True
    )
    if finished.returncode != 0:
        raise BenchError(f"seed.py failed ({finished.returncode}) for {server.name}")
    result: dict[str, Any] = json.loads(finished.stdout.strip().splitlines()[-1])
    return result


def start_lookup_servers(
    context: Context, environment: Callable[[str], dict[str, str]]
) -> None:
    for count in (SMALL_DB, context.plan.large_db):
        label = f"imgyx-{short_count(count)}"
        folder = context.root / label
        server = Imgyx(label, folder, environment(label), context.arguments.processes)
        context.lookup.append((label, server, folder / "ids.txt"))
        parts: list[bytes | memoryview] = [context.image]
        upload(server.port, "hotlink.jpg", parts, len(context.image))
        print(f"seeding {label} to {count} records", file=sys.stderr)
        made = seed(server, count, folder / "ids.txt")
        print(f"  {made}", file=sys.stderr)
        context.records.append({"phase": "seed", "server": label, **made})


def short_count(count: int) -> str:
    if count >= 1_000_000 and count % 1_000_000 == 0:
        return f"{count // 1_000_000}M"
    if count >= 1000 and count % 1000 == 0:
        return f"{count // 1000}k"
    return str(count)


def warm_up(context: Context, phases: list[str]) -> None:
    for target, image, big in context.pair():
        wrk(target.url(image), 32, 1)
        if "download" in phases or "ranges" in phases:
            wrk(target.url(big), 4, 1, timeout=30)
    for _, server, ids in context.lookup:
        wrk(
            server.url(""),
            1,
            1,
            script="ids.lua",
            script_args=(str(ids), "/"),
            threads=1,
        )


# --- report ------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    label: str
    case: str
    metric: str
    unit: str
    kind: str  # "ratio": imgyx/nginx; "absolute"; "peak"; "flat": large/small db
    target: float | None = None  # ratio >=, absolute >=, peak <, flat within
    local_only: bool = False


ROWS = (
    Row("hotlink 50 KB, 32 conn", "hotlink", "requests_per_s", "req/s", "ratio", 0.15),
    Row("hotlink 50 KB, 32 conn p99", "hotlink", "p99_ms", "ms", "ratio"),
    Row("hotlink per core", "hotlink", "requests_per_cpu_s", "req/CPU-s", "ratio"),
    Row("download 20 MiB, 1 conn", "download-1", "mib_per_s", "MiB/s", "ratio", 0.5),
    Row(
        "download 20 MiB, 1 conn per core",
        "download-1",
        "mib_per_cpu_s",
        "MiB/CPU-s",
        "ratio",
    ),
    Row("download 20 MiB, 4 conn", "download-4", "mib_per_s", "MiB/s", "ratio", 0.6),
    Row("download 20 MiB, 32 conn", "download-32", "mib_per_s", "MiB/s", "ratio"),
    Row("ranges 64 KiB, 16 conn", "ranges", "requests_per_s", "req/s", "ratio"),
    Row("ranges 64 KiB, 16 conn p99", "ranges", "p99_ms", "ms", "ratio"),
    Row("upload 1 MiB, 8 at once", "upload-1", "mib_per_s", "MiB/s", "absolute", 150),
    Row("upload 1 MiB p99", "upload-1", "p99_ms", "ms", "absolute"),
    Row("upload 1 MiB per core", "upload-1", "mib_per_cpu_s", "MiB/CPU-s", "absolute"),
    Row(
        "upload 20 MiB, 8 at once",
        "upload-20",
        "mib_per_s",
        "MiB/s",
        "absolute",
        290,
        local_only=True,
    ),
    Row("upload 20 MiB p99", "upload-20", "p99_ms", "ms", "absolute"),
    Row(
        "upload 20 MiB per core", "upload-20", "mib_per_cpu_s", "MiB/CPU-s", "absolute"
    ),
    Row(
        "peak memory, 8 x 20 MiB uploads", "upload-20", "peak_pss_mb", "MB", "peak", 150
    ),
    Row("peak memory, 1 MiB uploads", "upload-1", "peak_pss_mb", "MB", "peak"),
    Row(
        "peak memory, 32 x 20 MiB downloads",
        "download-32",
        "peak_pss_mb",
        "MB",
        "peak",
        150,
    ),
    Row("peak memory, hotlink 32 conn", "hotlink", "peak_pss_mb", "MB", "peak"),
    Row("GET /ID median", "lookup-raw", "p50_ms", "ms", "flat", 0.2),
    Row("GET /api/info median", "lookup-info", "p50_ms", "ms", "flat", 0.2),
    Row("GET /api/stats median", "lookup-stats", "p50_ms", "ms", "flat", 0.2),
)


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def summarise(context: Context) -> list[dict[str, Any]]:
    """One summary per table row: medians, per-round ratios, target met or not."""
    by_key: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for row in context.records:
        if "case" in row:
            by_key.setdefault((row["case"], row["server"]), {})[row["round"]] = row
    lookup_labels = [label for label, _, _ in context.lookup]
    summaries = []
    for spec in ROWS:
        if spec.kind == "flat":
            if len(lookup_labels) < 2:
                continue
            reference_name, subject_name = lookup_labels[0], lookup_labels[-1]
        else:
            subject_name = "imgyx"
            reference_name = "nginx" if spec.kind == "ratio" else ""
        subject = by_key.get((spec.case, subject_name), {})
        reference = by_key.get((spec.case, reference_name), {})
        values = {r: row.get(spec.metric) for r, row in subject.items()}
        values = {r: v for r, v in values.items() if v is not None}
        if not values:
            continue
        references = {r: row.get(spec.metric) for r, row in reference.items()}
        ratios = [
            round(values[r] / references[r], 3)
            for r in sorted(values)
            if references.get(r)
        ]
        summary: dict[str, Any] = {
            "kind": "summary",
            "label": spec.label,
            "case": spec.case,
            "metric": spec.metric,
            "unit": spec.unit,
            "server": subject_name,
            "median": round(statistics.median(values.values()), 3),
            "max": max(values.values()),
            "reference": reference_name or None,
            "reference_median": round(
                statistics.median(v for v in references.values() if v is not None), 3
            )
            if references
            else None,
            "ratios": ratios,
            "ratio_median": round(statistics.median(ratios), 3) if ratios else None,
            "target": None,
            "met": None,
        }
        errors = sum(
            row.get("errors", 0) + row.get("bad_status", 0)
            for table in (subject, reference)
            for row in table.values()
        )
        summary["errors"] = errors
        if spec.kind == "peak":
            summary["rss_max"] = max(
                (row.get("peak_rss_mb") or 0 for row in subject.values()), default=None
            )
        if spec.target is not None:
            summary.update(judge(spec, summary, context.arguments.backend))
        summaries.append(summary)
    return summaries


def judge(spec: Row, summary: dict[str, Any], backend: str) -> dict[str, Any]:
    if spec.local_only and backend != "local":
        return {"target": f">= {spec.target:g} {spec.unit} (local store)", "met": None}
    if spec.kind == "ratio":
        met = (
            summary["ratio_median"] is not None
            and summary["ratio_median"] >= spec.target
        )
        return {"target": f">= {spec.target:g}x nginx", "met": met}
    if spec.kind == "absolute":
        return {
            "target": f">= {spec.target:g} {spec.unit}",
            "met": summary["median"] >= spec.target,
        }
    if spec.kind == "peak":
        return {
            "target": f"< {spec.target:g} MB (worst round)",
            "met": summary["max"] < spec.target,
        }
    ratio = summary["ratio_median"]
    assert spec.target is not None
    return {
        "target": f"within {spec.target:.0%}",
        "met": ratio is not None and abs(ratio - 1) <= spec.target,
    }


def table(summaries: list[dict[str, Any]]) -> str:
    lines = [
        "| measurement | unit | imgyx | reference | ratio per round | ratio | target | met |",
        "| --- | --- | ---: | ---: | --- | ---: | --- | --- |",
    ]
    for s in summaries:
        imgyx = number(s["median"])
        reference = number(s["reference_median"]) if s["reference"] else ""
        if s["reference"] and s["reference"] != "nginx":
            imgyx += f" ({s['server'].removeprefix('imgyx-')})"
            reference += f" ({s['reference'].removeprefix('imgyx-')})"
        elif s["reference"]:
            reference += " (nginx)"
        if s["metric"] == "peak_pss_mb":
            imgyx = f"{number(s['median'])} (max {number(s['max'])}"
            imgyx += f"; RSS sum {number(s['rss_max'])})" if s.get("rss_max") else ")"
        ratios = " ".join(f"{r:.3g}" for r in s["ratios"])
        ratio = f"{s['ratio_median']:.3g}" if s["ratio_median"] is not None else ""
        met = {True: "met", False: "NOT met", None: ""}[s["met"]]
        if s["target"] and s["met"] is None:
            met = "n/a"
        if s["errors"]:
            met += f" ({s['errors']} errors)"
        lines.append(
            f"| {s['label']} | {s['unit']} | {imgyx} | {reference} | {ratios} | "
            f"{ratio} | {s['target'] or ''} | {met} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    def first(path: str, prefix: str, separator: str = ":") -> str:
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines():
                if line.startswith(prefix):
                    return line.split(separator, 1)[1].strip().strip('"')
        return ""

    def output(command: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(command, capture_output=True, text=True, timeout=10)
            lines = (done.stdout + done.stderr).strip().splitlines()
            return lines[0] if lines else ""
        return ""

    commit = output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = output(["git", "-C", str(REPO), "status", "--porcelain"])
    return {
        "cpu": first("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "memory": first("/proc/meminfo", "MemTotal"),
        "os": first("/etc/os-release", "PRETTY_NAME=", "="),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": output(["nginx", "-v"]),
        "wrk": " ".join(output(["wrk", "-v"]).split()[:2]),
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
    }


# --- main --------------------------------------------------------------------


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds of imgyx/nginx alternation (3; 1 with --quick)",
    )
    parser.add_argument(
        "--backend",
        choices=("local", "s3"),
        default="local",
        help="local store + SQLite (default) or S3 + PostgreSQL",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="PHASE",
        help=f"run only this phase ({', '.join(PHASES)}); "
        "repeat or separate with commas",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="IMGYX_PROCESSES for imgyx (default: its own default)",
    )
    parser.add_argument(
        "--large-db",
        type=int,
        default=None,
        help="records in the large lookup database (1000000; 50000 with --quick)",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"JSON lines file ({RESULTS})"
    )
    parser.add_argument(
        "--tmp",
        type=Path,
        default=None,
        help="where temporary folders go (needs a few GB)",
    )
    arguments = parser.parse_args()
    phases = [p.strip() for item in arguments.only or [] for p in item.split(",")]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown phase {unknown[0]!r}; choose from {', '.join(PHASES)}")
    arguments.phases = [p for p in PHASES if p in phases] if phases else list(PHASES)
    if arguments.rounds is not None and arguments.rounds < 1:
        parser.error("--rounds must be at least 1")
    if arguments.large_db is not None and arguments.large_db <= SMALL_DB:
        parser.error(f"--large-db must be more than {SMALL_DB}")
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found: apt-get install -y nginx wrk")
    return arguments


def main() -> int:
    arguments = parse_arguments()
    plan = Plan.make(arguments)
    signal.signal(signal.SIGTERM, interrupted)
    root = Path(tempfile.mkdtemp(prefix="imgyx-load-", dir=arguments.tmp))
    root.chmod(0o755)  # nginx workers read the shared files
    started = time.monotonic()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    targets: list[Target] = []
    context: Context | None = None
    try:
        with contextlib.ExitStack() as stack:
            try:
                environment = backend_environment(arguments, stack)
                files = root / "files"
                files.mkdir()
                image, big = make_image(), make_big()
                (files / "hotlink.jpg").write_bytes(image)
                (files / "big.bin").write_bytes(big)
                nginx = Nginx(files, root / "nginx")
                targets.append(nginx)
                imgyx = Imgyx(
                    "imgyx", root / "imgyx", environment("main"), arguments.processes
                )
                targets.append(imgyx)
                context = Context(arguments, plan, root, image, big, nginx, imgyx)
                context.image_id = upload(
                    imgyx.port, "hotlink.jpg", [image], len(image)
                )["id"]
                context.big_id = upload(imgyx.port, "big.bin", [big], len(big))["id"]
                print(
                    f"imgyx pid {imgyx.process.pid} port {imgyx.port} "
                    f"({imgyx.workers} worker(s)); nginx pid {nginx.process.pid} "
                    f"port {nginx.port}; image {len(image)} B, big {len(big)} B",
                    file=sys.stderr,
                )
                verify(context)
                if "lookup" in arguments.phases:
                    start_lookup_servers(context, environment)
                    targets.extend(server for _, server, _ in context.lookup)
                warm_up(context, arguments.phases)
                for round_number in range(1, plan.rounds + 1):
                    print(f"round {round_number}/{plan.rounds}", file=sys.stderr)
                    for phase in arguments.phases:
                        PHASE_RUNNERS[phase](context, round_number)
            finally:
                # Stop the servers before the services they use (the stack's exit).
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                for target in reversed(targets):
                    target.stop()
    except BenchError as error:
        print(f"load benchmark failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:
        print(f"load benchmark interrupted ({error or 'Ctrl-C'})", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        shutil.rmtree(root, ignore_errors=True)

    assert context is not None
    summaries = summarise(context)
    header = {
        "kind": "run",
        "at": stamp,
        "backend": arguments.backend,
        "quick": arguments.quick,
        "phases": arguments.phases,
        "rounds": plan.rounds,
        "imgyx_processes": context.imgyx.workers,
        "processes_option": arguments.processes,
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine(),
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    with open(arguments.output, "a") as output:
        for row in [header, *context.records, *summaries]:
            output.write(json.dumps({**row, "run_at": stamp}) + "\n")
    described = header["machine"]
    print()
    print(
        f"{stamp}, {arguments.backend} backend, {plan.rounds} round(s), imgyx with "
        f"{context.imgyx.workers} process(es), {header['seconds']} s; "
        f"{described['cpu']}, {described['cores']} cores, {described['os']}, "
        f"{described['nginx']}, {described['wrk']}, imgyx {described['commit']}"
    )
    print()
    print(table(summaries))
    print(f"\nJSON lines appended to {arguments.output}", file=sys.stderr)
    failed_errors = any(s["errors"] for s in summaries)
    return 1 if failed_errors else 0


if __name__ == "__main__":
    sys.exit(main())
