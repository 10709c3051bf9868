"""Upload rate limit per client over a sliding hour, kept in the database.

Windows live in the database so every process (and, on PostgreSQL, every machine)
shares them. Clients are stored only as keyed hashes, in one-minute buckets, and the
buckets are deleted once they leave the hour.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import peewee

from models import RateWindow

WINDOW_MINUTES = 60


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int


def take(client: str, limit: int, now: float | None = None) -> Verdict:
    """Count one upload for `client` unless the last hour already holds `limit`.

    Blocking; run through Database.run().
    """
    now = time.time() if now is None else now
    minute = int(now // 60)
    database = RateWindow._meta.database
    with database.atomic():
        if isinstance(database, peewee.PostgresqlDatabase):
            # Serialise one client's checks across processes and machines.
            lock = "SELECT pg_advisory_xact_lock(hashtext(%s))"
            database.execute_sql(lock, (client,))  # type: ignore[no-untyped-call]
        buckets = _buckets(client, minute)
        used = sum(uploads for _, uploads in buckets)
        allowed = used < limit
        if allowed:
            RateWindow.insert(client=client, minute=minute, uploads=1).on_conflict(
                conflict_target=[RateWindow.client, RateWindow.minute],
                update={RateWindow.uploads: RateWindow.uploads + 1},
            ).execute()
            used += 1
            buckets.append((minute, 1))
    return Verdict(
        allowed, limit, max(limit - used, 0), _reset(buckets, used, limit, now)
    )


def _buckets(client: str, minute: int) -> list[tuple[int, int]]:
    query = (
        RateWindow.select(RateWindow.minute, RateWindow.uploads)
        .where(
            (RateWindow.client == client)
            & (RateWindow.minute > minute - WINDOW_MINUTES)
        )
        .order_by(RateWindow.minute)
        .tuples()
    )
    rows: list[tuple[int, int]] = list(query)  # type: ignore[arg-type]
    return rows


def _reset(buckets: list[tuple[int, int]], used: int, limit: int, now: float) -> int:
    """Seconds until one more upload fits: when enough old buckets leave the hour."""
    if used < limit:
        expiry = buckets[0][0] if buckets else int(now // 60)
        return max(1, int((expiry + WINDOW_MINUTES) * 60 - now))
    excess = used - limit + 1
    for minute, uploads in sorted(buckets):
        excess -= uploads
        if excess <= 0:
            return max(1, int((minute + WINDOW_MINUTES) * 60 - now))
    return WINDOW_MINUTES * 60


def purge(now: float | None = None) -> int:
    """Delete buckets that have left the window; returns how many went."""
    now = time.time() if now is None else now
    oldest = int(now // 60) - WINDOW_MINUTES
    return int(RateWindow.delete().where(RateWindow.minute <= oldest).execute())
