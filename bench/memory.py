"""Server memory under concurrent large uploads and downloads.

Starts imgyx on a throwaway data folder, has N clients upload N different files of
the same size at once, then download them all at once, and samples the server's
VmRSS from /proc/PID/status every 10 ms during each phase. Prints a table and one
JSON line per phase, and appends the lines to bench/results/memory.jsonl.

    .venv/bin/python bench/memory.py                 # 20 clients x 20 MiB
    .venv/bin/python bench/memory.py --clients 5     # compare: fewer clients
    .venv/bin/python bench/memory.py --file-mib 5    # compare: smaller files

Standard library only; Linux only (it reads /proc). Not a test: run it by hand.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "memory.jsonl"
MIB = 1024 * 1024
DEFAULT_LIMIT = 20 * MIB  # the server's default IMGYX_MAX_UPLOAD_BYTES
SEND_CHUNK = 256 * 1024
READ_CHUNK = 64 * 1024
LISTENING = re.compile(r"imgyx listening on http://([^:\s]+):(\d+)")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
REQUEST_TIMEOUT = 300.0


class BenchError(Exception):
    """The benchmark could not run: the server did not start, or a request failed."""


# --- the server under test -------------------------------------------------------


class Server:
    """imgyx as a subprocess; its log is drained by a thread, the tail kept."""

    def __init__(self, data_dir: Path, spool_dir: Path, max_upload: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGYX_")}
        env.update(
            IMGYX_HOST="127.0.0.1",
            IMGYX_PORT="0",
            IMGYX_PROCESSES="1",  # one process, so its PID is the one to watch
            IMGYX_DATA_DIR=str(data_dir),
            IMGYX_SPOOL_DIR=str(spool_dir),
            IMGYX_MAX_UPLOAD_BYTES=str(max_upload),
            IMGYX_RATE_LIMIT_PER_HOUR="0",
            PYTHONUNBUFFERED="1",
        )
        self.log: collections.deque[str] = collections.deque(maxlen=40)
        self._port: int | None = None
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "server.py"), "--log-level", "info"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            # Own session: a Ctrl-C in the terminal reaches only this script, which
            # then stops the server with SIGTERM like everything else.
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self._drain = threading.Thread(target=self._read_log, daemon=True)
        self._drain.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read_log(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line.rstrip())
            if self._port is None:
                match = LISTENING.search(line)
                if match:
                    self._port = int(match.group(2))
                    self._ready.set()
        self._ready.set()  # the server exited: stop waiting

    def wait_ready(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self._ready.wait(0.1)
            if self._port is not None:
                break
            if self.process.poll() is not None:
                raise BenchError(f"server exited with {self.process.returncode}")
        if self._port is None:
            raise BenchError(f"server did not start within {START_TIMEOUT:.0f} s")
        # The log line comes before the IO loop runs: wait until it answers.
        while time.monotonic() < deadline:
            try:
                status, _ = request("GET", self._port, "/nonexistent0")
                if status in (200, 404):
                    return self._port
            except OSError:
                if self.process.poll() is not None:
                    raise BenchError(
                        f"server exited with {self.process.returncode}"
                    ) from None
                time.sleep(0.05)
        raise BenchError("server logged its port but does not answer")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print("server ignored SIGTERM; killing it", file=sys.stderr)
                self.process.kill()
                self.process.wait()
        self._drain.join(5)


def request(method: str, port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# --- memory sampling -------------------------------------------------------------


def status_kib(pid: int, name: str) -> int | None:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM), or None once pid is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def reset_peak(pid: int) -> bool:
    """Reset the kernel's VmHWM for pid (Linux 4.0+); False where not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


class Sampler(threading.Thread):
    """Reads VmRSS of pid every `interval` seconds until stopped."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self._stop_event.is_set():
            kib = status_kib(self.pid, "VmRSS")
            if kib is None:
                return
            self.samples.append(kib)
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (busy machine): do not try to catch up
                next_at = time.monotonic()
                delay = 0
            self._stop_event.wait(delay)

    def stop(self) -> list[int]:
        self._stop_event.set()
        self.join()
        return self.samples


def settled_rss(pid: int) -> int:
    """VmRSS in KiB as the median of a few readings over a quiet quarter second."""
    readings = []
    for _ in range(5):
        kib = status_kib(pid, "VmRSS")
        if kib is None:
            raise BenchError("server exited")
        readings.append(kib)
        time.sleep(0.05)
    return sorted(readings)[len(readings) // 2]


# --- test files ------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    path: Path
    size: int
    sha256: str


def make_files(folder: Path, count: int, size: int) -> list[Source]:
    """`count` files of `size` random bytes each, so no two are alike (no dedup)."""
    sources = []
    for index in range(count):
        path = folder / f"file-{index:02d}.bin"
        digest = hashlib.sha256()
        with open(path, "wb") as handle:
            remaining = size
            while remaining > 0:
                block = os.urandom(min(MIB, remaining))
                digest.update(block)
                handle.write(block)
                remaining -= len(block)
        sources.append(Source(path, size, digest.hexdigest()))
    return sources


# --- clients ---------------------------------------------------------------------


@dataclass
class Outcome:
    status: int | None = None
    url: str | None = None
    error: str | None = None


def upload(port: int, source: Source, start: Callable[[], None]) -> Outcome:
    """POST the file as multipart/form-data, streamed from disk with Content-Length."""
    boundary = "imgyx-bench-" + secrets.token_hex(12)
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{source.path.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        with open(source.path, "rb") as handle:
            start()
            connection.putrequest("POST", "/api/upload")
            connection.putheader(
                "Content-Type", f"multipart/form-data; boundary={boundary}"
            )
            connection.putheader(
                "Content-Length", str(len(head) + source.size + len(tail))
            )
            connection.endheaders()
            connection.send(head)
            while chunk := handle.read(SEND_CHUNK):
                connection.send(chunk)
            connection.send(tail)
        response = connection.getresponse()
        body = response.read()
        outcome = Outcome(status=response.status)
        if response.status != 201:
            outcome.error = f"HTTP {response.status}: {body[:200]!r}"
            return outcome
        outcome.url = json.loads(body)["url"]
        return outcome
    finally:
        connection.close()


def download(port: int, url: str, source: Source, start: Callable[[], None]) -> Outcome:
    """GET the file, read it in 64 KiB chunks and compare size and sha256."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        start()
        connection.request("GET", url)
        response = connection.getresponse()
        outcome = Outcome(status=response.status, url=url)
        digest = hashlib.sha256()
        received = 0
        while chunk := response.read(READ_CHUNK):
            digest.update(chunk)
            received += len(chunk)
        if response.status != 200:
            outcome.error = f"HTTP {response.status}"
        elif received != source.size:
            outcome.error = f"got {received} bytes, expected {source.size}"
        elif digest.hexdigest() != source.sha256:
            outcome.error = "sha256 differs from the original"
        return outcome
    finally:
        connection.close()


# --- phases ----------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    clients: int
    file_bytes: int
    baseline_kib: int = 0
    peak_kib: int = 0
    end_kib: int = 0
    hwm_kib: int | None = None
    samples: int = 0
    seconds: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [
            f"client {i}: {o.error}" for i, o in enumerate(self.outcomes) if o.error
        ]

    def record(self) -> dict[str, object]:
        total_mib = self.clients * self.file_bytes / MIB
        return {
            "phase": self.name,
            "clients": self.clients,
            "file_mib": round(self.file_bytes / MIB, 3),
            "peak_rss_mib": round(self.peak_kib / 1024, 1),
            "baseline_rss_mib": round(self.baseline_kib / 1024, 1),
            "seconds": round(self.seconds, 3),
            "mib_per_s": round(total_mib / self.seconds, 1) if self.seconds else None,
            # Extras: RSS once the phase is over, the kernel's own peak (catches
            # spikes between samples), and how many samples the peak is taken from.
            "end_rss_mib": round(self.end_kib / 1024, 1),
            "vmhwm_mib": None
            if self.hwm_kib is None
            else round(self.hwm_kib / 1024, 1),
            "samples": self.samples,
        }


def run_phase(
    phase: Phase,
    pid: int,
    interval: float,
    jobs: list[tuple[object, ...]],
    work: Callable[..., Outcome],
) -> Phase:
    """Run `work(*job, start)` in one thread per job; `start()` releases all at once."""
    outcomes: list[Outcome] = [Outcome() for _ in jobs]
    barrier = threading.Barrier(len(jobs) + 1)

    def client(index: int, job: tuple[object, ...]) -> None:
        released = False

        def start() -> None:
            nonlocal released
            barrier.wait()
            released = True

        try:
            outcomes[index] = work(*job, start)
        except Exception as error:
            if not released:  # failed before the start: do not leave the rest waiting
                barrier.abort()
            outcomes[index] = Outcome(error=f"{type(error).__name__}: {error}")

    threads = [
        threading.Thread(target=client, args=(i, job), daemon=True)
        for i, job in enumerate(jobs)
    ]
    for thread in threads:
        thread.start()
    phase.baseline_kib = settled_rss(pid)
    can_reset = reset_peak(pid)
    sampler = Sampler(pid, interval)
    sampler.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    phase.seconds = time.perf_counter() - started
    samples = sampler.stop()
    if can_reset:
        phase.hwm_kib = status_kib(pid, "VmHWM")
    phase.samples = len(samples)
    phase.peak_kib = max(samples, default=0)
    phase.end_kib = status_kib(pid, "VmRSS") or 0
    phase.outcomes = outcomes
    return phase


# --- reporting -------------------------------------------------------------------


def print_table(phases: list[Phase]) -> None:
    columns = (
        ("phase", "{:<8}"),
        ("clients", "{:>7}"),
        ("file_mib", "{:>8}"),
        ("baseline_rss_mib", "{:>16}"),
        ("peak_rss_mib", "{:>12}"),
        ("vmhwm_mib", "{:>9}"),
        ("end_rss_mib", "{:>11}"),
        ("seconds", "{:>8}"),
        ("mib_per_s", "{:>9}"),
        ("samples", "{:>7}"),
    )
    print(" ".join(fmt.format(name) for name, fmt in columns))
    for phase in phases:
        row = phase.record()
        print(" ".join(fmt.format(str(row[name])) for name, fmt in columns))


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20, help="default 20")
    parser.add_argument(
        "--file-mib", type=float, default=20.0, help="size of each file (default 20)"
    )
    parser.add_argument(
        "--interval-ms", type=float, default=10.0, help="RSS sampling (default 10)"
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"JSON lines file ({RESULTS})"
    )
    parser.add_argument(
        "--tmp", type=Path, default=None, help="where to put temporary folders"
    )
    arguments = parser.parse_args()
    if arguments.clients < 1 or arguments.file_mib <= 0:
        parser.error("--clients and --file-mib must be positive")
    return arguments


def interrupted(signal_number: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal_number}")


def main() -> int:
    arguments = parse_arguments()
    signal.signal(signal.SIGTERM, interrupted)
    file_bytes = int(arguments.file_mib * MIB)
    interval = arguments.interval_ms / 1000
    root = Path(tempfile.mkdtemp(prefix="imgyx-bench-", dir=arguments.tmp))
    server: Server | None = None
    phases: list[Phase] = []
    try:
        for name in ("files", "data", "spool"):
            (root / name).mkdir(mode=0o700)
        print(
            f"making {arguments.clients} files of {file_bytes} bytes in {root}",
            file=sys.stderr,
        )
        sources = make_files(root / "files", arguments.clients, file_bytes)
        server = Server(root / "data", root / "spool", max(file_bytes, DEFAULT_LIMIT))
        port = server.wait_ready()
        print(f"server pid {server.pid} on port {port}", file=sys.stderr)

        up = run_phase(
            Phase("upload", arguments.clients, file_bytes),
            server.pid,
            interval,
            [(port, source) for source in sources],
            upload,
        )
        phases.append(up)
        if up.errors or any(o.status != 201 for o in up.outcomes):
            raise BenchError("upload failed:\n  " + "\n  ".join(up.errors))

        down = run_phase(
            Phase("download", arguments.clients, file_bytes),
            server.pid,
            interval,
            [(port, o.url, s) for o, s in zip(up.outcomes, sources, strict=True)],
            download,
        )
        phases.append(down)
        if down.errors:
            raise BenchError("download failed:\n  " + "\n  ".join(down.errors))
    except BenchError as error:
        if phases:
            print_table(phases)
        print(f"memory benchmark failed: {error}", file=sys.stderr)
        if server is not None and server.log:
            print("server log (tail):\n  " + "\n  ".join(server.log), file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:
        print(
            f"memory benchmark interrupted ({str(error) or 'Ctrl-C'})", file=sys.stderr
        )
        return 130
    finally:
        # Cleanup runs to the end: a second Ctrl-C must not leave the server behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)

    print_table(phases)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    with open(arguments.output, "a") as output:
        for phase in phases:
            line = json.dumps({**phase.record(), "at": stamp})
            print(line)
            output.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
