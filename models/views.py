"""View counts: added in memory per request, written to the database in batches."""

from __future__ import annotations

import logging
from collections import Counter

import metrics
from models import Database
from models import files as catalog

logger = logging.getLogger(__name__)


class ViewCounter:
    """Counts views in memory; `flush()` adds them to the records in one transaction.

    A failed flush keeps its counts for the next one, so a database hiccup loses no
    views; only a crash between flushes (at most one interval) does.
    """

    def __init__(self, database: Database) -> None:
        self._database = database
        self._pending: Counter[str] = Counter()

    def add(self, file_id: str) -> None:
        self._pending[file_id] += 1

    def forget(self, file_id: str) -> None:
        """Drop the pending views of a file that is gone."""
        self._pending.pop(file_id, None)

    def pending(self, file_id: str) -> int:
        return self._pending.get(file_id, 0)

    def pending_total(self) -> int:
        return sum(self._pending.values())

    async def flush(self) -> None:
        if not self._pending:
            metrics.views_flushed()  # nothing waits to be written: no lag
            return
        batch, self._pending = self._pending, Counter()
        try:
            await self._database.run(catalog.add_views, dict(batch))
            metrics.views_flushed()
        except Exception:
            logger.exception("could not write %d view counts; keeping them", len(batch))
            batch.update(self._pending)
            self._pending = batch
