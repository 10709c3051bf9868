"""Schema migrations, run in order on start; each runs once, in its own transaction."""

from __future__ import annotations

import logging
from collections.abc import Callable

import peewee

from models import File, RateWindow, SchemaVersion, Secret, Totals

logger = logging.getLogger(__name__)


def _initial(database: peewee.Database) -> None:
    database.create_tables([File, Totals, Secret, RateWindow])
    Totals.insert(id=1).on_conflict_ignore().execute()


# Append only; never edit a migration that has shipped.
MIGRATIONS: list[tuple[int, Callable[[peewee.Database], None]]] = [
    (1, _initial),
]


def migrate(database: peewee.Database) -> int:
    """Bring the schema up to date; returns the version it is at."""
    database.connect(reuse_if_open=True)
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
