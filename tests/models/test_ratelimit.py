"""The upload rate limit over a sliding hour, against a real SQLite database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import peewee
import pytest

from config import Settings
from models import RateWindow, open_database
from models.migrations import migrate
from models.ratelimit import Verdict, purge, take

# The start of a minute, so bucket edges fall on whole seconds from here.
T0 = 60 * 28_000_000
HOUR = 3600


@pytest.fixture
def database(tmp_path: Path) -> Iterator[peewee.Database]:
    database = open_database(Settings(data_dir=tmp_path))
    migrate(database)
    yield database
    database.close()


def fill(client: str, limit: int, now: float) -> list[Verdict]:
    return [take(client, limit, now=now) for _ in range(limit)]


@pytest.mark.usefixtures("database")
@pytest.mark.parametrize("limit", [1, 3, 10])
def test_take_allows_limit_uploads_then_refuses(limit: int) -> None:
    verdicts = fill("client", limit, T0)
    refused = take("client", limit, now=T0 + 5)

    assert [verdict.allowed for verdict in verdicts] == [True] * limit
    assert [verdict.remaining for verdict in verdicts] == list(range(limit))[::-1]
    assert not refused.allowed
    assert refused.remaining == 0
    assert refused.limit == limit
    assert 1 <= refused.reset_seconds <= HOUR


@pytest.mark.usefixtures("database")
def test_take_keeps_refusing_without_counting_refusals() -> None:
    fill("client", 2, T0)
    refusals = [take("client", 2, now=T0 + offset) for offset in range(1, 6)]

    uploads = RateWindow.select(peewee.fn.SUM(RateWindow.uploads)).scalar()

    assert not any(verdict.allowed for verdict in refusals)
    assert uploads == 2


@pytest.mark.usefixtures("database")
def test_take_counts_clients_independently() -> None:
    fill("first", 2, T0)

    other = take("second", 2, now=T0)

    assert not take("first", 2, now=T0).allowed
    assert other.allowed
    assert other.remaining == 1


@pytest.mark.usefixtures("database")
def test_take_with_a_zero_limit_refuses_everything() -> None:
    verdict = take("client", 0, now=T0)

    assert not verdict.allowed
    assert verdict.remaining == 0
    assert 1 <= verdict.reset_seconds <= HOUR


@pytest.mark.usefixtures("database")
@pytest.mark.parametrize("later", [HOUR + 1, HOUR, 2 * HOUR])
def test_take_forgets_buckets_older_than_an_hour(later: int) -> None:
    fill("client", 3, T0)

    verdict = take("client", 3, now=T0 + later)

    assert verdict.allowed
    assert verdict.remaining == 2


@pytest.mark.usefixtures("database")
@pytest.mark.parametrize("later", [1, 60, HOUR - 60, HOUR - 1])
def test_take_counts_buckets_within_the_hour(later: int) -> None:
    fill("client", 3, T0)

    assert not take("client", 3, now=T0 + later).allowed


@pytest.mark.usefixtures("database")
def test_take_slides_the_window_one_bucket_at_a_time() -> None:
    take("client", 2, now=T0)
    take("client", 2, now=T0 + 600)

    assert not take("client", 2, now=T0 + HOUR - 1).allowed
    assert take("client", 2, now=T0 + HOUR).allowed
    assert not take("client", 2, now=T0 + HOUR + 1).allowed
    assert take("client", 2, now=T0 + 600 + HOUR).allowed


@pytest.mark.usefixtures("database")
@pytest.mark.parametrize("asked_at", [1200, 1230, 3599])
def test_reset_seconds_points_to_when_the_oldest_bucket_leaves(asked_at: int) -> None:
    take("client", 2, now=T0)
    take("client", 2, now=T0 + 600)

    refused = take("client", 2, now=T0 + asked_at)

    assert not refused.allowed
    assert refused.reset_seconds == HOUR - asked_at
    assert take("client", 2, now=T0 + asked_at + refused.reset_seconds).allowed


@pytest.mark.usefixtures("database")
def test_reset_seconds_waits_for_enough_buckets_after_the_limit_was_lowered() -> None:
    take("client", 3, now=T0)
    take("client", 3, now=T0 + 600)
    take("client", 3, now=T0 + 600)

    refused = take("client", 2, now=T0 + 1200)

    # Three uploads against a limit of two: the first bucket's one is not enough.
    assert refused.reset_seconds == HOUR + 600 - 1200
    assert not take("client", 2, now=T0 + HOUR).allowed
    assert take("client", 2, now=T0 + 1200 + refused.reset_seconds).allowed


@pytest.mark.usefixtures("database")
def test_reset_seconds_of_an_allowed_take_is_when_its_oldest_bucket_leaves() -> None:
    take("client", 5, now=T0)

    verdict = take("client", 5, now=T0 + 900)

    assert verdict.allowed
    assert verdict.reset_seconds == HOUR - 900


@pytest.mark.usefixtures("database")
def test_purge_deletes_only_expired_buckets() -> None:
    take("old", 5, now=T0)
    take("old", 5, now=T0 + 1800)
    take("new", 5, now=T0 + 1800)

    deleted = purge(now=T0 + HOUR)

    assert deleted == 1
    assert RateWindow.select().count() == 2
    assert RateWindow.select().where(RateWindow.minute == T0 // 60).count() == 0


@pytest.mark.usefixtures("database")
def test_purge_keeps_buckets_still_in_the_window() -> None:
    take("client", 5, now=T0)

    assert purge(now=T0 + HOUR - 1) == 0
    assert RateWindow.select().count() == 1


@pytest.mark.usefixtures("database")
def test_purge_agrees_with_take_on_what_has_expired() -> None:
    fill("client", 2, T0)
    purge(now=T0 + HOUR)

    # What purge deleted no longer counted; what is left still does.
    assert take("client", 2, now=T0 + HOUR).remaining == 1
    assert RateWindow.select().count() == 1


@pytest.mark.usefixtures("database")
def test_purge_of_an_empty_table_deletes_nothing() -> None:
    assert purge(now=T0) == 0
