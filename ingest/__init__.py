"""Turning an uploaded byte stream into a stored file: spool, fingerprint, type, dedup,
encrypt, record."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import metrics
from config import Settings
from ingest.spool import BUFFER_SIZE, Spool
from ingest.thumbnails import ALLOWED_TYPES, Thumbnailer
from models import Database
from models import files as catalog
from models.records import FileView, metadata_context, open_record
from storage.buffers import BufferPool
from storage.crypto import new_data_key
from storage.keys import DeploymentKeys
from storage.sealed import SealedObject, SealedStore, seal_metadata

logger = logging.getLogger(__name__)

T = TypeVar("T")

SPOOL_THREADS = 4
# About 1.2 MB each; uploads beyond this many at once allocate their own.
SPOOL_BUFFERS_KEPT = 8


@dataclass(frozen=True)
class Stored:
    file: FileView
    created: bool
    # The secret that deletes the file: only in the answer that created it.
    delete_token: str | None = None


class Blocked(Exception):
    """The content was banned by an operator."""


def delete_token_hash(token: str) -> str:
    """What the record keeps of a delete token: the token itself is never stored."""
    return hashlib.sha256(token.encode()).hexdigest()


class Ingestor:
    """Stores spooled uploads: one object and one record per distinct content."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        store: SealedStore,
        keys: DeploymentKeys,
        thumbnailer: Thumbnailer,
    ) -> None:
        self._settings = settings
        self._database = database
        self._store = store
        self._keys = keys
        self._thumbnailer = thumbnailer
        self._id_length = catalog.IdLength()
        # Hashing, sealing and writing spools, off the IO loop.
        self._pool = ThreadPoolExecutor(SPOOL_THREADS, thread_name_prefix="spool")
        self._buffers = BufferPool(keep_bytes=SPOOL_BUFFERS_KEPT * BUFFER_SIZE)

    def release_idle_buffers(self) -> None:
        """Give back spool buffers no upload used lately (housekeeping calls it)."""
        self._buffers.release_if_idle()

    def close(self) -> None:
        self._thumbnailer.close()
        self._pool.shutdown(wait=True)

    def open_spool(self) -> Spool:
        """A spool that seals the upload as it arrives, keeping the plaintext of
        images only (for their thumbnails)."""
        return Spool(
            self._settings.spool_folder,
            self._settings.max_upload_bytes,
            self._keys.fingerprinter(),
            new_data_key(),
            ALLOWED_TYPES,
            self._buffers,
        )

    async def drain(self, spool: Spool) -> None:
        """Seal what the spool has buffered, if a batch is ready, off the IO loop."""
        if spool.ready():
            await self._blocking(spool.seal_pending)

    async def _blocking(self, function: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function)

    async def store(self, spool: Spool, file_name: str) -> Stored:
        """Store the finished spool under `file_name`, or find the record that has it.

        The spool is left for the caller to discard. On any failure after the object
        was put, the object is deleted again before the error propagates.
        """
        fingerprint = await self._blocking(spool.finish)
        mimetype = spool.mimetype
        known = await self._database.run(catalog.look_up, fingerprint)
        if known.banned:
            raise Blocked("this content was banned")
        if known.existing is not None:
            metrics.dedup_hit()
            return Stored(open_record(known.existing, self._store), created=False)

        put: list[SealedObject] = []
        try:
            put.append(await self._put(spool))
            thumbnail = None
            if spool.plaintext_path is not None:
                thumbnail = await self._thumbnailer.make(spool.plaintext_path, mimetype)
            if thumbnail is not None:
                put.append(await self._store.put_bytes(thumbnail.data))
            fields = {"name": file_name, "type": mimetype}
            if thumbnail is not None:
                fields["thumbnail_type"] = thumbnail.mimetype
            return await self._record(put, fingerprint, fields)
        except BaseException:
            await self._forget(put)
            raise

    async def _put(self, spool: Spool) -> SealedObject:
        if spool.data_key is None:
            return await self._store.put_file(spool.path, spool.size)
        return await self._store.put_sealed(spool.path, spool.size, spool.data_key)

    async def _record(
        self, put: list[SealedObject], fingerprint: str, fields: dict[str, str]
    ) -> Stored:
        # Wrapped again now, under the current master key: a key rotation may have
        # begun while this upload was being stored.
        put[:] = [self._store.rewrap(item) for item in put]
        sealed = put[0]
        data_key = self._store.data_key(sealed)
        thumbnail = put[1] if len(put) > 1 else None
        token = secrets.token_urlsafe(24)
        new = catalog.NewFile(
            sealed.size,
            fingerprint,
            sealed.key,
            sealed.wrapped_key,
            thumbnail,
            delete_token_hash(token),
        )
        while True:
            file_id = catalog.new_file_id(self._id_length.length)
            metadata = seal_metadata(
                data_key, metadata_context(file_id, sealed.key), fields
            )
            try:
                record = await self._database.run(
                    catalog.create, new, file_id, metadata
                )
            except catalog.IdTaken:
                self._id_length.collided()
                continue
            except catalog.DuplicateContent as duplicate:
                # Another upload of the same bytes won the race: use its record.
                metrics.dedup_hit()
                await self._forget(put)
                return Stored(
                    open_record(duplicate.existing, self._store), created=False
                )
            self._id_length.succeeded()
            return Stored(open_record(record, self._store), True, token)

    async def _forget(self, put: list[SealedObject]) -> None:
        for sealed in put:
            try:
                await self._store.delete(sealed.key)
            except Exception:
                # gc removes objects no record references; nothing is lost here.
                logger.exception("could not delete an unrecorded object")
        put.clear()
