"""Queries on file records and totals. Blocking; call them through Database.run()."""

from __future__ import annotations

import datetime
import os
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass

import peewee

from models import BannedContent, File, RetiredId, Secret, Totals
from storage.sealed import SealedObject

ID_ALPHABET = string.ascii_letters + string.digits
ID_MIN_LENGTH = 5
ID_MAX_LENGTH = 16

# IDs that would shadow a route (compared case-insensitively); never issued.
RESERVED_IDS = frozenset(
    {
        "api",
        "docs",
        "static",
        "healthz",
        "readyz",
        "metrics",
        "favicon",
        "robots",
        "sharex",
        "index",
        "about",
        "admin",
        "upload",
        "login",
    }
)


class DuplicateContent(Exception):
    """The fingerprint is already stored; `existing` is the record that holds it."""

    def __init__(self, existing: File) -> None:
        super().__init__("content already stored")
        self.existing = existing


@dataclass(frozen=True)
class NewFile:
    size: int
    fingerprint: str
    object_key: str
    wrapped_key: bytes
    thumbnail: SealedObject | None = None
    delete_token_hash: str | None = None


def new_file_id(length: int) -> str:
    """A random ID from [A-Za-z0-9], drawn with `secrets`, never a route name."""
    while True:
        candidate = "".join(secrets.choice(ID_ALPHABET) for _ in range(length))
        if candidate.lower() not in RESERVED_IDS:
            return candidate


class IdLength:
    """The length new IDs are drawn at; grows when collisions get frequent.

    Starting at 5 characters (62**5, about 9e8 IDs), a collision means the space is
    filling up; two in a row at one length move every later draw one character up.
    """

    def __init__(self, length: int = ID_MIN_LENGTH) -> None:
        self.length = length
        self._collisions = 0

    def collided(self) -> None:
        self._collisions += 1
        if self._collisions >= 2 and self.length < ID_MAX_LENGTH:
            self.length += 1
            self._collisions = 0

    def succeeded(self) -> None:
        self._collisions = 0


def find(file_id: str) -> File | None:
    return File.get_or_none(File.id == file_id)


def find_by_fingerprint(fingerprint: str) -> File | None:
    return File.get_or_none(File.fingerprint == fingerprint)


# The queries of every upload are written as SQL: peewee takes ~50 times longer to
# build one than the database to run it. `{p}` is the driver's placeholder.
LOOK_UP_SQL = (
    "SELECT EXISTS (SELECT 1 FROM banned_content WHERE fingerprint = {p}),"
    " (SELECT id FROM files WHERE fingerprint = {p})"
)
RETIRED_SQL = "SELECT 1 FROM retired_ids WHERE id = {p}"
INSERT_SQL = "INSERT INTO files ({columns}) VALUES ({values})"
TOTALS_SQL = (
    "UPDATE totals SET files = files + 1, storage_bytes = storage_bytes + {p}"
    " WHERE id = 1"
)


@dataclass(frozen=True)
class Known:
    """What the catalog knows of a fingerprint."""

    banned: bool
    existing: File | None


def look_up(fingerprint: str) -> Known:
    """Whether the content is banned, and the record that holds it, in one query."""
    database = File._meta.database
    sql = LOOK_UP_SQL.format(p=database.param)
    cursor = database.execute_sql(sql, (fingerprint, fingerprint))
    banned, file_id = cursor.fetchone()
    existing = None if file_id is None else find(str(file_id))
    return Known(bool(banned), existing)


def create(new: NewFile, file_id: str, metadata: bytes) -> File:
    """Insert the record and bump the totals in one transaction.

    Raises DuplicateContent when another upload stored the same fingerprint first,
    and IdTaken when the ID is in use; nothing is written in either case.
    """
    database = File._meta.database
    param = database.param
    record = _new_record(new, file_id, metadata)
    fields = File._meta.sorted_fields
    values = [field.db_value(record.__data__.get(field.name)) for field in fields]
    insert = INSERT_SQL.format(
        columns=", ".join(field.column_name for field in fields),
        values=", ".join([param] * len(fields)),
    )
    try:
        with database.atomic():
            taken = database.execute_sql(RETIRED_SQL.format(p=param), (file_id,))
            if taken.fetchone() is not None:
                raise IdTaken(file_id)
            database.execute_sql(insert, values)
            database.execute_sql(TOTALS_SQL.format(p=param), (new.size,))
    except peewee.IntegrityError:
        existing = find_by_fingerprint(new.fingerprint)
        if existing is not None:
            raise DuplicateContent(existing) from None
        raise IdTaken(file_id) from None
    return record


def _new_record(new: NewFile, file_id: str, metadata: bytes) -> File:
    """The record as it will be stored, built in memory (no query)."""
    thumbnail = new.thumbnail
    return File(
        id=file_id,
        size=new.size,
        views=0,
        created_at=_now(),
        fingerprint=new.fingerprint,
        object_key=new.object_key,
        wrapped_key=new.wrapped_key,
        metadata=metadata,
        thumbnail_key=thumbnail.key if thumbnail else None,
        thumbnail_wrapped_key=thumbnail.wrapped_key if thumbnail else None,
        thumbnail_size=thumbnail.size if thumbnail else None,
        delete_token_hash=new.delete_token_hash,
    )


class IdTaken(Exception):
    """The drawn ID is already a record's, or was one; draw another."""


def retired_reason(file_id: str) -> str | None:
    """Why an ID no longer names a file ("deleted", "taken_down"), or None."""
    row = RetiredId.get_or_none(RetiredId.id == file_id)
    return None if row is None else str(row.reason)


def remove(file_id: str, reason: str) -> File | None:
    """Delete the record, retire its ID and update the totals, in one transaction.

    Returns the removed record (its objects are the caller's to delete), or None
    when there was no such record.
    """
    database = File._meta.database
    with database.atomic():
        record = find(file_id)
        if record is None:
            return None
        File.delete().where(File.id == file_id).execute()
        now = _now()
        RetiredId.insert(id=file_id, reason=reason, retired_at=now).on_conflict(
            conflict_target=[RetiredId.id],
            update={RetiredId.reason: reason, RetiredId.retired_at: now},
        ).execute()
        Totals.update(
            files=Totals.files - 1,
            storage_bytes=Totals.storage_bytes - record.size,
            views=Totals.views - record.views,
            removals=Totals.removals + 1,
        ).where(Totals.id == 1).execute()
    return record


def removals() -> int:
    """How many files were ever removed (see FileCache)."""
    cursor = File._meta.database.execute_sql("SELECT removals FROM totals WHERE id = 1")
    row = cursor.fetchone()
    return int(row[0]) if row else 0


def take_down(file_id: str, ban_content: bool, reason: str) -> File | None:
    """Remove the file as taken down and, if asked, ban its content, atomically."""
    with File._meta.database.atomic():
        record = remove(file_id, "taken_down")
        if record is not None and ban_content:
            ban(str(record.fingerprint), reason)
    return record


def ban(fingerprint: str, reason: str) -> None:
    now = _now()
    BannedContent.insert(
        fingerprint=fingerprint, reason=reason[:200], banned_at=now
    ).on_conflict(
        conflict_target=[BannedContent.fingerprint],
        update={BannedContent.reason: reason[:200], BannedContent.banned_at: now},
    ).execute()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def add_views(counts: dict[str, int]) -> None:
    """Add batched view counts to their records and to the totals, in one transaction."""
    if not counts:
        return
    database = File._meta.database
    with database.atomic():
        added = 0
        for file_id, count in sorted(counts.items()):
            query = File.update(views=File.views + count).where(File.id == file_id)
            if query.execute():
                added += count
        Totals.update(views=Totals.views + added).where(Totals.id == 1).execute()


def totals() -> Totals:
    return Totals.get_by_id(1)


def deployment_secret(
    wrap: Callable[[bytes], bytes], unwrap: Callable[[bytes], bytes]
) -> bytes:
    """The deployment secret, made and stored (wrapped) on first start."""
    row = Secret.get_or_none(Secret.name == "deployment")
    if row is None:
        wrapped = wrap(os.urandom(32))
        Secret.insert(name="deployment", wrapped=wrapped).on_conflict_ignore().execute()
        row = Secret.get(Secret.name == "deployment")
    return unwrap(bytes(row.wrapped))
