"""imgyx: `python server.py` serves; `python server.py --help` lists every setting."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import logging
import mmap
import os
import re
import shutil
import signal
import socket
import struct
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tornado import httpserver, ioloop, iostream, netutil

import commands
import config
import metrics
from config import Settings, SettingsError
from handlers import Services, make_app
from handlers.accesslog import ACCESS_LOG
from handlers.cache import FileCache
from ingest import Ingestor
from ingest.fetch import Fetcher, FetchPolicy, FetchSlots
from ingest.thumbnails import Thumbnailer
from models import Database, open_database, ratelimit
from models import files as catalog
from models.epoch import Epoch
from models.migrations import migrate
from models.views import ViewCounter
from storage import SealedStore, StoreError, buffers, make_store
from storage.keys import (
    DeploymentKeys,
    Keyring,
    UnwrapError,
    file_keyring_loader,
)

logger = logging.getLogger("imgyx.server")

FLUSH_SECONDS = 2.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Tornado's own body limit for routes that do not stream; the upload route raises it.
SMALL_BODY_LIMIT = 64 * 1024
# How long a worker busier than another waits before it takes a new connection.
BALANCE_DELAY = 0.005


# glibc's mallopt parameters (malloc.h).
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def parse_arguments(argv: Sequence[str]) -> tuple[dict[str, str], argparse.Namespace]:
    """Setting overrides from the options, and the parsed arguments (with .command)."""
    parser = argparse.ArgumentParser(
        prog="server.py",
        description="imgyx, an anonymous file host. Without a command it serves. Every "
        "option can also be set with its IMGYX_* environment variable; options win.",
    )
    for info in config.describe():
        parser.add_argument(
            "--" + info.name.replace("_", "-"),
            dest=info.name,
            metavar=info.name.upper(),
            help=f"{info.help} [{info.env}, default: {info.default or 'empty'}]",
        )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_commands(subparsers)
    arguments = parser.parse_args(list(argv))
    names = {info.name for info in config.describe()}
    overrides = {
        name: value
        for name, value in vars(arguments).items()
        if name in names and value is not None
    }
    return overrides, arguments


class RedactAddresses(logging.Filter):
    """Tornado names the peer in some of its messages; we keep no client address."""

    PATTERN = re.compile(
        r"\b\d{1,3}(?:\.\d{1,3}){3}\b|\b[0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{0,4}){2,7}\b"
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("tornado"):
            record.msg = self.PATTERN.sub("[client]", record.getMessage())
            record.args = ()
        return True


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler.addFilter(RedactAddresses())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level_number)
    ACCESS_LOG.write_to(handler)  # access lines in batches, in the same format


def open_keyring(settings: Settings) -> Keyring:
    """The configured master key (and older ones), else the key files in the data folder."""
    if settings.master_key is not None:
        configured = settings.master_key
        return Keyring(lambda: (configured, list(settings.old_master_keys)))
    return Keyring(file_keyring_loader(settings.data_dir))


def prepare_data(settings: Settings) -> tuple[Keyring, bytes]:
    """Make the data folder, the master key and the schema; once, before any fork.

    Returns the master key and the deployment secret. Raises SettingsError when the
    master key cannot open this database.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    master = open_keyring(settings)
    try:
        database = open_database(settings)
    except ValueError as error:
        raise SettingsError(f"IMGYX_DATABASE_URL: {error}") from None
    try:
        migrate(database)
        secret = catalog.deployment_secret(
            lambda key: master.wrap(key, b"deployment"),
            lambda wrapped: master.unwrap(wrapped, b"deployment"),
        )
    except UnwrapError:
        raise SettingsError(
            "IMGYX_MASTER_KEY: this is not the master key this database was made with"
        ) from None
    finally:
        database.close()
    return master, secret


def fetch_policy(settings: Settings) -> FetchPolicy:
    return FetchPolicy(
        allow_ports=settings.fetch_allow_ports,
        allow_networks=settings.fetch_allow_networks,
        connect_timeout=settings.fetch_connect_timeout,
        total_timeout=settings.fetch_timeout,
    )


def open_services(settings: Settings, master: Keyring, secret: bytes) -> Services:
    metrics.setup(None)  # no-op when main() already set up shared metrics
    database = Database(open_database(settings))
    store = SealedStore(make_store(settings), master)
    keys = DeploymentKeys(secret)
    return Services(
        settings=settings,
        database=database,
        store=store,
        keys=keys,
        ingestor=Ingestor(
            settings,
            database,
            store,
            keys,
            Thumbnailer(settings.thumbnail_timeout, settings.thumbnail_size),
        ),
        views=ViewCounter(database),
        fetcher=Fetcher(fetch_policy(settings)),
        fetch_slots=FetchSlots(settings.fetch_max_per_client),
        cache=FileCache(
            Epoch(settings.data_dir),
            settings.cache_bytes,
            database if settings.shared_database else None,
        ),
    )


async def close_services(services: Services) -> None:
    ACCESS_LOG.flush()
    await services.views.flush()
    services.ingestor.close()
    await services.store.store.close()
    services.database.close()
    services.cache.epoch.close()


async def prepare_store(services: Services) -> None:
    """Create the bucket if needed. A store that is down now is not fatal: uploads
    answer 502 until it is back, and the next housekeeping round tries again."""
    try:
        await services.store.store.prepare()
        services.store_ready = True
    except StoreError as error:
        logger.error("object store not ready: %s", error)


async def housekeeping(services: Services, malloc: Malloc | None = None) -> None:
    """Every couple of seconds: write view counts, drop expired rate windows, give
    freed memory back."""
    services.ingestor.release_idle_buffers()
    buffers.STREAMS.release_if_idle()
    services.store.store.release_idle()
    if malloc is not None:
        malloc.trim()
    await services.views.flush()
    services.store.master.refresh()  # pick up a master-key rotation in progress
    if not services.store_ready:
        await prepare_store(services)
    try:
        await services.database.run(ratelimit.purge)
    except Exception:
        logger.exception("could not purge expired rate-limit windows")


class HTTPServer(httpserver.HTTPServer):
    """Tornado's server, counting its open connections for `Balance`."""

    balance: Balance | None = None
    connections = 0

    def handle_stream(self, stream: iostream.IOStream, address: Any) -> None:
        self._count(+1)
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        self._count(-1)
        super().on_close(server_conn)

    def _count(self, change: int) -> None:
        self.connections += change
        if self.balance is not None:
            self.balance.publish(self.connections)


class Balance:
    """How many connections each worker has open, in memory the workers share
    (mapped before they fork), so a worker can leave a new connection to a less
    busy one."""

    SLOT = struct.Struct("q")

    def __init__(self, workers: int) -> None:
        self._counts = mmap.mmap(-1, self.SLOT.size * workers)
        self._workers = workers
        self.index = 0  # set in each worker after the fork

    def publish(self, connections: int) -> None:
        self.SLOT.pack_into(self._counts, self.SLOT.size * self.index, connections)

    def least_elsewhere(self) -> int:
        return min(
            int(self.SLOT.unpack_from(self._counts, self.SLOT.size * worker)[0])
            for worker in range(self._workers)
            if worker != self.index
        )


def make_http_server(services: Services) -> HTTPServer:
    """The HTTP server with our limits; the tests serve through it too."""
    return HTTPServer(
        make_app(services),
        max_body_size=SMALL_BODY_LIMIT,
        idle_connection_timeout=services.settings.idle_timeout,
        body_timeout=services.settings.body_timeout,
    )


def listen(server: HTTPServer, sockets: list[socket.socket]) -> Callable[[], None]:
    """Serve connections on `sockets`, accepting one per wakeup; returns the call
    that stops listening.

    Tornado accepts every connection waiting at once, so with workers sharing one
    socket the first awake takes a whole burst: four downloads starting together
    all landed in one worker while the other idled. Here a worker takes one at a
    time, and one with more connections open than another worker waits a moment
    (BALANCE_DELAY) before it takes one, so the less busy worker gets it first.
    """
    loop = asyncio.get_running_loop()
    waiting: set[int] = set()

    def accept(listener: socket.socket) -> None:
        try:
            connection, address = listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return  # another worker took it, or the client gave up
        except OSError as error:  # out of descriptors, say: the next wakeup retries
            logger.warning("could not accept a connection: %s", error)
            return
        stream = iostream.IOStream(
            connection,
            max_buffer_size=server.max_buffer_size,
            read_chunk_size=server.read_chunk_size,
        )
        server.handle_stream(stream, address)

    def ready(listener: socket.socket) -> None:
        balance = server.balance
        if balance is None or server.connections <= balance.least_elsewhere():
            accept(listener)
            return
        # Busier than another worker: give it the first chance.
        loop.remove_reader(listener.fileno())
        waiting.add(listener.fileno())
        loop.call_later(BALANCE_DELAY, resume, listener)

    def resume(listener: socket.socket) -> None:
        if listener.fileno() not in waiting:
            return  # stopped meanwhile
        waiting.discard(listener.fileno())
        accept(listener)  # still there: nobody else took it
        loop.add_reader(listener.fileno(), ready, listener)

    for listener in sockets:
        loop.add_reader(listener.fileno(), ready, listener)

    def stop() -> None:
        for listener in sockets:
            if listener.fileno() in waiting:
                waiting.discard(listener.fileno())
            else:
                loop.remove_reader(listener.fileno())
            listener.close()

    return stop


async def serve(
    settings: Settings,
    sockets: list[socket.socket],
    secrets: tuple[Keyring, bytes],
    malloc: Malloc | None = None,
    balance: Balance | None = None,
) -> None:
    services = open_services(settings, *secrets)
    await prepare_store(services)
    server = make_http_server(services)
    server.balance = balance
    stop_listening = listen(server, sockets)
    logger.info("worker ready: accepting connections")
    ticker = ioloop.PeriodicCallback(
        lambda: housekeeping(services, malloc), FLUSH_SECONDS * 1000
    )
    ticker.start()

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in STOP_SIGNALS:
        loop.add_signal_handler(signal_number, stopping.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    await stopping.wait()

    logger.info("stopping: no new connections; finishing requests in flight")
    stop_listening()
    await drain(services, settings.shutdown_timeout)
    await server.close_all_connections()
    ticker.stop()
    await close_services(services)
    logger.info("stopped")


async def drain(services: Services, timeout: float) -> None:
    """Wait until no request is in flight, or `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while services.in_flight and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    if services.in_flight:
        logger.warning("%d requests still running after %.0f s; cutting them",
                       len(services.in_flight), timeout)  # fmt: skip


class Malloc:
    """glibc's malloc, told to give freed memory back to the system.

    Streams allocate their buffers (128 KiB to 1 MiB) when they start and free them
    when they end. By default malloc raises its mmap threshold after such frees and
    then keeps later buffers in per-thread arenas, which hold on to freed memory: a
    worker's footprint then follows past peaks instead of current work. A fixed
    threshold and two arenas keep it following the transfers in flight, and
    `trim()` (every housekeeping round) returns what bursts left free.
    """

    def __init__(self) -> None:
        try:
            self._libc: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")
            self._libc.mallopt(M_MMAP_THRESHOLD, 256 * 1024)
            self._libc.mallopt(M_ARENA_MAX, 2)
        except (OSError, AttributeError):
            self._libc = None  # not glibc: nothing to tune

    def trim(self) -> None:
        if self._libc is not None:
            self._libc.malloc_trim(0)


def main(argv: Sequence[str] | None = None) -> int:
    overrides, arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings.from_environ(overrides=overrides)
        secrets = prepare_data(settings)
    except SettingsError as error:
        print(f"imgyx: {error}", file=sys.stderr)
        return 2
    configure_logging(settings)
    malloc = Malloc()
    if arguments.command:
        services = open_services(settings, *secrets)
        return commands.run(services, arguments, close_services)

    # A stop signal that arrives while we start is held until we can handle it.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    sockets = netutil.bind_sockets(settings.port, settings.host)
    port = sockets[0].getsockname()[1]
    logger.info("imgyx listening on http://%s:%d", settings.host, port)
    workers = settings.processes or os.cpu_count() or 1
    shared = Path(tempfile.mkdtemp(prefix="imgyx-metrics-")) if workers > 1 else None
    metrics.setup(shared)
    if workers > 1:
        # What was imported so far is never collected: the collector then never
        # writes to those pages, and the workers keep sharing them with us.
        gc.freeze()
    balance = Balance(workers) if workers > 1 else None
    if balance is not None:
        index = fork_workers(workers)
        if index is None:
            try:
                return supervise()
            finally:
                shutil.rmtree(shared or "", ignore_errors=True)
        balance.index = index
    asyncio.run(serve(settings, sockets, secrets, malloc, balance))
    return 0


_children: set[int] = set()


def fork_workers(count: int) -> int | None:
    """Fork `count` workers sharing the listening sockets: in a worker, its number
    (0 to count - 1); None in the parent."""
    for index in range(count):
        pid = os.fork()
        if pid == 0:
            _children.clear()
            return index
        _children.add(pid)
    return None


def supervise() -> int:
    """In the parent: pass SIGTERM/SIGINT on to the workers and wait for them all.

    A worker that dies on its own (not asked to stop) is logged; the others go on.
    """
    stopping = False

    def forward(signal_number: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in _children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    status = 0
    while _children:
        pid, wait_status = os.wait()
        _children.discard(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if code != 0:
            status = 1
            if not stopping:
                logger.error("worker %d exited with %d", pid, code)
    return status


if __name__ == "__main__":
    sys.exit(main())
