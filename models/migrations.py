"""Schema migrations, run in order on start; each runs once, in its own transaction."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import peewee
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as run_migrations

from models import (
    BannedContent,
    File,
    RateWindow,
    RetiredId,
    SchemaVersion,
    Secret,
    Totals,
)

logger = logging.getLogger(__name__)

# An arbitrary constant naming imgyx's migration lock among PostgreSQL advisory locks.
MIGRATION_LOCK = 0x1A6C5


def _initial(database: peewee.Database) -> None:
    # Creates the tables as the models are now; later steps add only what is missing,
    # so a new database and an upgraded one end with the same schema.
    database.create_tables([File, Totals, Secret, RateWindow])
    Totals.insert(id=1).on_conflict_ignore().execute()


def _add_missing_columns(
    database: peewee.Database,
    table: str,
    *fields: str,
    model: type[peewee.Model] = File,
) -> None:
    migrator = SchemaMigrator.from_database(database)
    present = {column.name for column in database.get_columns(table)}
    model_fields = model._meta.fields
    run_migrations(
        *(migrator.add_column(table, name, model_fields[name]) for name in fields
          if name not in present)
    )  # fmt: skip


def _thumbnails(database: peewee.Database) -> None:
    _add_missing_columns(
        database, "files", "thumbnail_key", "thumbnail_wrapped_key", "thumbnail_size"
    )


def _deletion(database: peewee.Database) -> None:
    database.create_tables([RetiredId, BannedContent], safe=True)
    _add_missing_columns(database, "files", "delete_token_hash")


def _removal_count(database: peewee.Database) -> None:
    _add_missing_columns(database, "totals", "removals", model=Totals)


# Append only; never edit a migration that has shipped.
MIGRATIONS: list[tuple[int, Callable[[peewee.Database], None]]] = [
    (1, _initial),
    (2, _thumbnails),
    (3, _deletion),
    (4, _removal_count),
]


def migrate(database: peewee.Database) -> int:
    """Bring the schema up to date; returns the version it is at."""
    database.connect(reuse_if_open=True)
    with _migration_lock(database):
        return _migrate(database)


@contextlib.contextmanager
def _migration_lock(database: peewee.Database) -> Iterator[None]:
    """One migrating process at a time: on PostgreSQL even CREATE TABLE IF NOT EXISTS
    races with itself. (SQLite serialises writers already.)"""
    if not isinstance(database, peewee.PostgresqlDatabase):
        yield
        return
    execute = database.execute_sql
    execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))  # type: ignore[no-untyped-call]


def _migrate(database: peewee.Database) -> int:
    database.create_tables([SchemaVersion], safe=True)
    current = SchemaVersion.select(peewee.fn.MAX(SchemaVersion.version)).scalar() or 0
    for version, step in MIGRATIONS:
        if version <= current:
            continue
        with database.atomic():
            # Another process may have migrated while we waited for the lock.
            if SchemaVersion.get_or_none(SchemaVersion.version == version) is not None:
                continue
            step(database)
            SchemaVersion.create(version=version)
        logger.info("database schema migrated to version %d", version)
        current = version
    return current
