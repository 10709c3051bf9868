"""Opened records and small decrypted files, kept in memory per process.

What a raw answer needs (the opened record, its ETag, the headers of a plain 200
and, for small files, the plaintext) is the same for every request until the file
is removed. Entries are dropped, all at once, as soon as the count of removals
moves, and an entry read while it moved is not kept, so a removal that races a
fill cannot leave a stale entry behind. Only plaintext that authenticated in full
is kept.

Where the count lives depends on who can remove files. With SQLite every process
is on this host, and the count is the removal epoch in shared memory (see
models.epoch), read for free before each answer. With PostgreSQL other hosts
remove files too, so every answer from memory first reads the database's count
(`totals.removals`, bumped in the removing transaction): one small query instead
of a record lookup and a store read.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from tornado import httputil

from models import Database
from models import files as catalog
from models.epoch import Epoch
from models.records import FileView

# What an entry costs besides its bodies: the record, headers and bookkeeping.
ENTRY_OVERHEAD = 2048
# At most this share of the budget goes to one file's plaintext.
ITEM_SHARE = 32


@dataclass
class Cached:
    file: FileView
    etag: str
    # The headers of a plain 200 (no query, no conditions), without Date.
    headers: httputil.HTTPHeaders | None = None
    body: bytes | None = None
    thumbnail: bytes | None = None

    @property
    def cost(self) -> int:
        return ENTRY_OVERHEAD + len(self.body or b"") + len(self.thumbnail or b"")


class FileCache:
    """A least-recently-used map of file ID to `Cached`, within a byte budget."""

    def __init__(
        self, epoch: Epoch, budget: int, database: Database | None = None
    ) -> None:
        """`database`: count removals there (other hosts share it), not in `epoch`."""
        self.epoch = epoch
        self.budget = budget
        self.max_item = budget // ITEM_SHARE
        self.database = database
        self._entries: OrderedDict[str, Cached] = OrderedDict()
        self._used = 0
        self._seen = 0 if database is not None else epoch.value()
        self.fast_answers = 0  # answered by handlers.fast, for tests and profiling

    @property
    def shared(self) -> bool:
        """Whether answers from memory must first ask the database (`check`)."""
        return self.database is not None and self.enabled

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def token(self) -> int:
        """Take before reading what goes in the cache; give back to `put`. With a
        shared database, the count `check` read last."""
        return self._seen if self.database is not None else self.epoch.value()

    async def check(self) -> int:
        """The token to use now. With a shared database this reads the removal
        count, and drops every entry if it moved; call it before each answer."""
        if not self.shared:
            return self.token()
        assert self.database is not None
        count = await self.database.run(catalog.removals)
        if count != self._seen:
            self.clear(count)
        return count

    def get(self, file_id: str) -> Cached | None:
        if not self._entries:
            return None
        current = self.token()
        if current != self._seen:
            self.clear(current)
            return None
        entry = self._entries.get(file_id)
        if entry is not None:
            self._entries.move_to_end(file_id)
        return entry

    def put(self, file_id: str, entry: Cached, token: int) -> None:
        if not self.enabled or self.token() != token:
            return
        if token != self._seen:
            self.clear(token)
        old = self._entries.pop(file_id, None)
        if old is not None:
            self._used -= old.cost
        self._entries[file_id] = entry
        self._used += entry.cost
        self._evict()

    def keep_body(self, entry: Cached, body: bytes, token: int) -> None:
        """Add the plaintext of an entry that is (still) in the cache."""
        self._grow(entry, token, body=body)

    def keep_thumbnail(self, entry: Cached, data: bytes, token: int) -> None:
        self._grow(entry, token, thumbnail=data)

    def _grow(
        self,
        entry: Cached,
        token: int,
        body: bytes | None = None,
        thumbnail: bytes | None = None,
    ) -> None:
        if self.token() != token or token != self._seen:
            return
        if self._entries.get(entry.file.id) is not entry:
            return
        self._used -= entry.cost
        if body is not None and len(body) <= self.max_item:
            entry.body = body
        if thumbnail is not None and len(thumbnail) <= self.max_item:
            entry.thumbnail = thumbnail
        self._used += entry.cost
        self._evict()

    def forget(self, file_id: str) -> None:
        """Drop one entry, for a removal made by this process (which also bumps the
        epoch, so the others drop theirs)."""
        entry = self._entries.pop(file_id, None)
        if entry is not None:
            self._used -= entry.cost

    def removed(self, file_id: str) -> None:
        """A file was removed by this process: tell every process."""
        self.forget(file_id)
        self.epoch.bump()

    def clear(self, seen: int) -> None:
        self._entries.clear()
        self._used = 0
        self._seen = seen

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def used(self) -> int:
        return self._used

    def _evict(self) -> None:
        while self._used > self.budget and self._entries:
            _, oldest = self._entries.popitem(last=False)
            self._used -= oldest.cost
