"""Server memory and speed while streaming one large file to many clients at once.

Starts imgyx on a throwaway data folder, uploads one file, then runs three phases
while sampling the server's VmRSS every 10 ms: full downloads, rounds of random
range requests, and slow readers that stall. Prints a table and one JSON line per
phase, and appends the lines to bench/results/streaming.jsonl.

    .venv/bin/python bench/streaming.py                  # 100 clients, 20 MiB file
    .venv/bin/python bench/streaming.py --rounds 50      # longer range phase

Reuses the server, sampler and client helpers of bench/memory.py. Standard library
only; Linux only (it reads /proc). Not a test: run it by hand.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from memory import (
    DEFAULT_LIMIT,
    MIB,
    REQUEST_TIMEOUT,
    BenchError,
    Outcome,
    Phase,
    Server,
    Source,
    download,
    interrupted,
    make_files,
    run_phase,
    upload,
)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "streaming.jsonl"
SLOW_RECEIVE_BUFFER = 16 * 1024
COLUMNS = (
    ("phase", "{:<8}"),
    ("clients", "{:>7}"),
    ("requests", "{:>8}"),
    ("baseline_rss_mib", "{:>16}"),
    ("peak_rss_mib", "{:>12}"),
    ("vmhwm_mib", "{:>9}"),
    ("end_rss_mib", "{:>11}"),
    ("seconds", "{:>8}"),
    ("mib_per_s", "{:>9}"),
    ("requests_per_s", "{:>14}"),
)


# --- clients ---------------------------------------------------------------------


def fetch_ranges(
    port: int,
    url: str,
    content: bytes,
    rounds: int,
    length: int,
    seed: int,
    start: Callable[[], None],
) -> Outcome:
    """`rounds` GETs of `length` bytes at random offsets on one keep-alive connection,
    each compared with the original."""
    rng = random.Random(seed)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        start()
        for _ in range(rounds):
            first = rng.randrange(len(content) - length + 1)
            last = first + length - 1
            connection.request("GET", url, headers={"Range": f"bytes={first}-{last}"})
            response = connection.getresponse()
            body = response.read()
            if response.status != 206:
                return Outcome(status=response.status, error=f"HTTP {response.status}")
            if body != content[first : last + 1]:
                return Outcome(status=206, error=f"bytes {first}-{last} differ")
        return Outcome(status=206, url=url)
    finally:
        connection.close()


def read_slowly(port: int, url: str, hold: float, start: Callable[[], None]) -> Outcome:
    """Ask for the whole file with a small receive buffer, read nothing for `hold`
    seconds, then read the status line and hang up."""
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Before connect, so the advertised window is small from the handshake on.
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RECEIVE_BUFFER)
        connection.settimeout(REQUEST_TIMEOUT)
        start()
        connection.connect(("127.0.0.1", port))
        connection.sendall(f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        time.sleep(hold)
        head = connection.recv(12)
    finally:
        connection.close()
    if not head.startswith(b"HTTP/1.1 "):
        return Outcome(error=f"no status line: {head!r}")
    status = int(head.split()[1])
    return Outcome(
        status=status, url=url, error=None if status == 200 else head.decode()
    )


# --- phases ----------------------------------------------------------------------


def record(phase: Phase, requests: int, moved_bytes: int | None) -> dict[str, object]:
    """memory.py's fields, with throughput from what actually moved (none for
    stalled readers, which move what the kernel buffers)."""
    fields = phase.record()
    seconds = phase.seconds
    fields["requests"] = requests
    fields["mib_per_s"] = fields["requests_per_s"] = None
    if moved_bytes is not None and seconds > 0:
        fields["mib_per_s"] = round(moved_bytes / MIB / seconds, 1)
        fields["requests_per_s"] = round(requests / seconds, 1)
    return fields


def check(phase: Phase) -> Phase:
    if phase.errors:
        shown = phase.errors[:10]
        raise BenchError(f"{phase.name} failed:\n  " + "\n  ".join(shown))
    return phase


def run_phases(
    arguments: argparse.Namespace, server: Server, port: int, source: Source, url: str
) -> list[dict[str, object]]:
    pid, interval = server.pid, arguments.interval_ms / 1000
    clients, size = arguments.clients, source.size
    content = source.path.read_bytes()
    length = min(arguments.range_kib * 1024, size)
    records = []

    print(f"A: {clients} full downloads", file=sys.stderr)
    downloads = check(
        run_phase(
            Phase("download", clients, size),
            pid,
            interval,
            [(port, url, source)] * clients,
            download,
        )
    )
    records.append(record(downloads, clients, clients * size))

    print(f"B: {clients} clients x {arguments.rounds} ranges", file=sys.stderr)
    jobs: list[tuple[object, ...]] = [
        (port, url, content, arguments.rounds, length, arguments.seed + index)
        for index in range(clients)
    ]
    ranges = check(
        run_phase(Phase("ranges", clients, size), pid, interval, jobs, fetch_ranges)
    )
    requests = clients * arguments.rounds
    records.append(record(ranges, requests, requests * length))

    readers = arguments.slow_readers
    print(f"C: {readers} slow readers for {arguments.hold:g} s", file=sys.stderr)
    slow = check(
        run_phase(
            Phase("slow", readers, size),
            pid,
            interval,
            [(port, url, arguments.hold)] * readers,
            read_slowly,
        )
    )
    records.append(record(slow, readers, None))
    return records


# --- reporting -------------------------------------------------------------------


def print_table(records: list[dict[str, object]]) -> None:
    print(" ".join(fmt.format(name) for name, fmt in COLUMNS))
    for row in records:
        print(" ".join(fmt.format(str(row[name])) for name, fmt in COLUMNS))


def save(records: list[dict[str, object]], output: Path) -> None:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "a") as lines:
        for row in records:
            line = json.dumps({**row, "at": stamp})
            print(line)
            lines.write(line + "\n")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100, help="default 100")
    parser.add_argument(
        "--file-mib", type=float, default=20.0, help="size of the file (default 20)"
    )
    parser.add_argument(
        "--rounds", type=int, default=10, help="range requests per client (default 10)"
    )
    parser.add_argument(
        "--range-kib", type=int, default=64, help="bytes per range (default 64 KiB)"
    )
    parser.add_argument(
        "--slow-readers", type=int, default=32, help="stalled clients (default 32)"
    )
    parser.add_argument(
        "--hold", type=float, default=3.0, help="seconds they stall (default 3)"
    )
    parser.add_argument("--seed", type=int, default=1, help="range offsets (default 1)")
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
    counts = (arguments.clients, arguments.rounds, arguments.slow_readers)
    if min(counts) < 1 or arguments.file_mib <= 0 or arguments.range_kib < 1:
        parser.error("counts and sizes must be positive")
    return arguments


def main() -> int:
    arguments = parse_arguments()
    signal.signal(signal.SIGTERM, interrupted)
    file_bytes = int(arguments.file_mib * MIB)
    root = Path(tempfile.mkdtemp(prefix="imgyx-bench-", dir=arguments.tmp))
    server: Server | None = None
    try:
        for name in ("files", "data", "spool"):
            (root / name).mkdir(mode=0o700)
        (source,) = make_files(root / "files", 1, file_bytes)
        server = Server(root / "data", root / "spool", max(file_bytes, DEFAULT_LIMIT))
        port = server.wait_ready()
        print(f"server pid {server.pid} on port {port}", file=sys.stderr)
        stored = upload(port, source, lambda: None)
        if stored.error or stored.url is None:
            raise BenchError(f"upload failed: {stored.error}")
        records = run_phases(arguments, server, port, source, stored.url)
    except BenchError as error:
        print(f"streaming benchmark failed: {error}", file=sys.stderr)
        if server is not None and server.log:
            print("server log (tail):\n  " + "\n  ".join(server.log), file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:
        reason = str(error) or "Ctrl-C"
        print(f"streaming benchmark interrupted ({reason})", file=sys.stderr)
        return 130
    finally:
        # Cleanup runs to the end: a second Ctrl-C must not leave the server behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)

    print_table(records)
    save(records, arguments.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
