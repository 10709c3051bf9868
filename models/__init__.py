"""Peewee models, the database connection and the thread pool that runs queries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import peewee
from playhouse.shortcuts import ReconnectMixin

from config import Settings

logger = logging.getLogger(__name__)

database_proxy = peewee.DatabaseProxy()

T = TypeVar("T")


class BaseModel(peewee.Model):
    class Meta:
        database = database_proxy


class File(BaseModel):
    """The public record of one uploaded file.

    The name and type live in `metadata`, sealed under a key derived from the file's
    data key; the database holds neither in clear.
    """

    id = peewee.CharField(max_length=16, primary_key=True)
    size = peewee.BigIntegerField()
    views = peewee.BigIntegerField(default=0)
    created_at = peewee.DateTimeField()
    fingerprint = peewee.CharField(max_length=64, unique=True)
    object_key = peewee.CharField(max_length=32)
    wrapped_key = peewee.BlobField()
    metadata = peewee.BlobField()
    thumbnail_key = peewee.CharField(max_length=32, null=True)
    thumbnail_wrapped_key = peewee.BlobField(null=True)
    thumbnail_size = peewee.BigIntegerField(null=True)
    delete_token_hash = peewee.CharField(max_length=64, null=True)

    class Meta:
        table_name = "files"


class Totals(BaseModel):
    """One row of running totals, updated with every change, so stats never scan."""

    id = peewee.IntegerField(primary_key=True)
    files = peewee.BigIntegerField(default=0)
    views = peewee.BigIntegerField(default=0)
    storage_bytes = peewee.BigIntegerField(default=0)
    # Files removed (deleted or taken down) ever: memory caches compare it to tell
    # whether what they hold may have gone.
    removals = peewee.BigIntegerField(default=0)

    class Meta:
        table_name = "totals"


class Secret(BaseModel):
    """Deployment secrets, stored wrapped under the master key."""

    name = peewee.CharField(max_length=32, primary_key=True)
    wrapped = peewee.BlobField()

    class Meta:
        table_name = "secrets"


class RateWindow(BaseModel):
    """Uploads per client hash per minute; rows older than the window are purged."""

    client = peewee.CharField(max_length=32)
    minute = peewee.IntegerField()
    uploads = peewee.IntegerField(default=0)

    class Meta:
        table_name = "rate_windows"
        primary_key = peewee.CompositeKey("client", "minute")


class RetiredId(BaseModel):
    """IDs that once named a file: never issued again. A taken-down ID answers 451."""

    id = peewee.CharField(max_length=16, primary_key=True)
    reason = peewee.CharField(max_length=16)
    retired_at = peewee.DateTimeField()

    class Meta:
        table_name = "retired_ids"


class BannedContent(BaseModel):
    """Fingerprints an operator banned: the same bytes can never be uploaded again."""

    fingerprint = peewee.CharField(max_length=64, primary_key=True)
    reason = peewee.CharField(max_length=200)
    banned_at = peewee.DateTimeField()

    class Meta:
        table_name = "banned_content"


class SchemaVersion(BaseModel):
    version = peewee.IntegerField(primary_key=True)

    class Meta:
        table_name = "schema_version"


ALL_MODELS: list[type[BaseModel]] = [
    File,
    Totals,
    Secret,
    RateWindow,
    RetiredId,
    BannedContent,
    SchemaVersion,
]


def open_database(settings: Settings) -> peewee.Database:
    """The database that IMGYX_DATABASE_URL names (default: SQLite in the data folder).

    The models are bound to it: one database per process at a time.
    """
    url = settings.database_url or ""
    parts = urlsplit(url)
    database: peewee.Database
    if not url:
        database = _sqlite(settings.data_dir / "imgyx.db")
    elif parts.scheme == "sqlite":
        database = _sqlite(Path(unquote(parts.path)))
    elif parts.scheme in ("postgres", "postgresql"):
        database = _postgresql(url)
    else:
        raise ValueError(f"unsupported database URL scheme {parts.scheme!r}")
    database_proxy.initialize(database)
    return database


def _sqlite(path: Path) -> peewee.SqliteDatabase:
    path.parent.mkdir(parents=True, exist_ok=True)
    # IMMEDIATE: a write transaction takes the lock when it begins, so two writers
    # queue on busy_timeout instead of deadlocking on a lock upgrade.
    return peewee.SqliteDatabase(
        str(path),
        lock_type="IMMEDIATE",
        pragmas={
            "journal_mode": "wal",
            "synchronous": "normal",
            "busy_timeout": 10000,
            "foreign_keys": 1,
        },
    )


class ReconnectingPostgresql(ReconnectMixin, peewee.PostgresqlDatabase):  # type: ignore[misc]
    """Reconnects when the server went away, so a restarted PostgreSQL needs no
    restart of ours (a query inside a broken transaction still fails once)."""

    reconnect_errors = (
        (peewee.OperationalError, "server closed the connection"),
        (peewee.OperationalError, "terminating connection"),
        (peewee.OperationalError, "could not receive data"),
        (peewee.OperationalError, "connection not open"),
        (peewee.OperationalError, "ssl connection has been closed"),
        (peewee.InterfaceError, "connection already closed"),
    )


def _postgresql(url: str) -> peewee.Database:
    parts = urlsplit(url)
    options: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": parts.port or 5432,
        "user": unquote(parts.username or "") or None,
        "password": unquote(parts.password or "") or None,
        "connect_timeout": 5,
    }
    for name, values in parse_qs(parts.query).items():
        options[name] = values[-1]
    return ReconnectingPostgresql(parts.path.lstrip("/") or "imgyx", **options)


class Database:
    """Runs blocking queries in a small thread pool, off the IO loop."""

    def __init__(self, database: peewee.Database, threads: int = 4) -> None:
        self.database = database
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="database")
        self._connections: set[Any] = set()

    async def run(self, function: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, function, args)

    def _call(self, function: Callable[..., T], args: tuple[object, ...]) -> T:
        if self.database.connect(reuse_if_open=True):
            self._connections.add(self.database.connection())  # type: ignore[no-untyped-call]
        try:
            return function(*args)
        except (peewee.OperationalError, peewee.InterfaceError):
            self._drop_if_broken()
            raise

    def _drop_if_broken(self) -> None:
        """Forget this thread's connection if the server dropped it; the next call
        connects afresh."""
        connection = self.database.connection()  # type: ignore[no-untyped-call]
        if getattr(connection, "closed", 0):
            self.database.close()

    def close(self) -> None:
        """Stop the threads and close every connection they opened."""
        self._pool.shutdown(wait=True)
        for connection in self._connections:
            with contextlib.suppress(Exception):
                connection.close()
        self._connections.clear()
        self.database.close()
