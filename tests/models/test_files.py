"""File IDs, record creation with dedup, and view counts, on a real SQLite database."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import peewee
import pytest

from config import Settings
from models import File, open_database
from models import files as catalog
from models.files import (
    ID_ALPHABET,
    ID_MAX_LENGTH,
    ID_MIN_LENGTH,
    RESERVED_IDS,
    DuplicateContent,
    IdLength,
    IdTaken,
    NewFile,
    new_file_id,
)
from models.migrations import migrate


@pytest.fixture
def database(tmp_path: Path) -> Iterator[peewee.Database]:
    database = open_database(Settings(data_dir=tmp_path))
    migrate(database)
    yield database
    database.close()


def new_file(fingerprint: str, size: int = 1000) -> NewFile:
    return NewFile(
        size=size,
        fingerprint=fingerprint,
        object_key=fingerprint[:32],
        wrapped_key=b"wrapped " + fingerprint.encode(),
    )


def totals() -> tuple[int, int, int]:
    row = catalog.totals()
    return (row.files, row.views, row.storage_bytes)


@pytest.mark.parametrize("length", [ID_MIN_LENGTH, 8, ID_MAX_LENGTH])
def test_new_file_id_has_the_asked_length_and_alphabet(length: int) -> None:
    file_id = new_file_id(length)

    assert len(file_id) == length
    assert set(file_id) <= set(ID_ALPHABET)


def test_id_alphabet_is_letters_and_digits() -> None:
    assert sorted(ID_ALPHABET) == sorted(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    )


def test_new_file_id_draws_differ() -> None:
    drawn = {new_file_id(ID_MIN_LENGTH) for _ in range(200)}

    assert len(drawn) > 190


@pytest.mark.parametrize("reserved", ["admin", "ADMIN", "Api", "Upload"])
def test_new_file_id_never_issues_a_reserved_id(
    monkeypatch: pytest.MonkeyPatch, reserved: str
) -> None:
    # The only fake: a scripted draw that yields a route name first.
    assert reserved.lower() in RESERVED_IDS
    safe = "z" * len(reserved)
    draws = iter(reserved + safe)
    monkeypatch.setattr(secrets, "choice", lambda alphabet: next(draws))

    assert new_file_id(len(reserved)) == safe


def test_id_length_starts_at_the_minimum() -> None:
    assert IdLength().length == ID_MIN_LENGTH


def test_id_length_grows_after_two_collisions() -> None:
    id_length = IdLength()

    id_length.collided()
    after_one = id_length.length
    id_length.collided()

    assert after_one == ID_MIN_LENGTH
    assert id_length.length == ID_MIN_LENGTH + 1


def test_id_length_needs_two_fresh_collisions_to_grow_again() -> None:
    id_length = IdLength()
    id_length.collided()
    id_length.collided()

    id_length.collided()

    assert id_length.length == ID_MIN_LENGTH + 1


def test_id_length_forgets_a_collision_after_a_success() -> None:
    id_length = IdLength()

    id_length.collided()
    id_length.succeeded()
    id_length.collided()

    assert id_length.length == ID_MIN_LENGTH


def test_id_length_never_grows_past_the_maximum() -> None:
    id_length = IdLength(ID_MAX_LENGTH)

    id_length.collided()
    id_length.collided()

    assert id_length.length == ID_MAX_LENGTH


@pytest.mark.usefixtures("database")
def test_create_inserts_the_record() -> None:
    record = catalog.create(new_file("a" * 64, size=1234), "abcde", b"sealed")

    stored = File.get_by_id("abcde")

    assert record.id == "abcde"
    assert stored.size == 1234
    assert stored.views == 0
    assert stored.fingerprint == "a" * 64
    assert stored.object_key == "a" * 32
    assert bytes(stored.wrapped_key) == b"wrapped " + b"a" * 64
    assert bytes(stored.metadata) == b"sealed"
    assert catalog.find("abcde") == stored
    assert catalog.find_by_fingerprint("a" * 64) == stored


@pytest.mark.usefixtures("database")
def test_create_bumps_files_and_storage_totals() -> None:
    catalog.create(new_file("a" * 64, size=1000), "first", b"m")
    catalog.create(new_file("b" * 64, size=250), "secnd", b"m")

    assert totals() == (2, 0, 1250)


@pytest.mark.usefixtures("database")
def test_create_same_fingerprint_raises_duplicate_with_the_first_record() -> None:
    catalog.create(new_file("a" * 64, size=1000), "first", b"m")

    with pytest.raises(DuplicateContent) as raised:
        catalog.create(new_file("a" * 64, size=1000), "other", b"m")

    assert raised.value.existing.id == "first"
    assert totals() == (1, 0, 1000)
    assert File.select().count() == 1
    assert catalog.find("other") is None


@pytest.mark.usefixtures("database")
def test_create_same_id_other_fingerprint_raises_id_taken() -> None:
    catalog.create(new_file("a" * 64, size=1000), "first", b"m")

    with pytest.raises(IdTaken):
        catalog.create(new_file("b" * 64, size=500), "first", b"m")

    assert totals() == (1, 0, 1000)
    assert File.get_by_id("first").fingerprint == "a" * 64
    assert catalog.find_by_fingerprint("b" * 64) is None


@pytest.mark.usefixtures("database")
def test_add_views_adds_to_records_and_totals() -> None:
    catalog.create(new_file("a" * 64), "first", b"m")
    catalog.create(new_file("b" * 64), "secnd", b"m")

    catalog.add_views({"first": 3, "secnd": 2})
    catalog.add_views({"first": 4})

    assert File.get_by_id("first").views == 7
    assert File.get_by_id("secnd").views == 2
    assert totals()[1] == 9


@pytest.mark.usefixtures("database")
def test_add_views_leaves_unknown_ids_out_of_the_total() -> None:
    catalog.create(new_file("a" * 64), "first", b"m")

    catalog.add_views({"first": 3, "gone1": 100, "never": 5})

    assert File.get_by_id("first").views == 3
    assert totals()[1] == 3
    assert File.select().count() == 1


@pytest.mark.usefixtures("database")
def test_add_views_with_nothing_to_add_changes_nothing() -> None:
    catalog.create(new_file("a" * 64), "first", b"m")

    catalog.add_views({})

    assert totals() == (1, 0, 1000)
