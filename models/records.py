"""A file record opened for use: its sealed name and type decrypted."""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

from models import File
from storage.base import StoreError
from storage.sealed import SealedObject, SealedStore, open_metadata

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileView:
    """Everything the handlers need about one file, in clear."""

    id: str
    name: str
    mimetype: str
    size: int
    views: int
    created_at: datetime.datetime
    fingerprint: str
    sealed: SealedObject
    thumbnail: SealedObject | None = None
    thumbnail_type: str | None = None

    @property
    def has_thumbnail(self) -> bool:
        return self.thumbnail is not None


async def delete_objects(store: SealedStore, record: File) -> bool:
    """Delete a removed record's objects (file and thumbnail). Returns False if one
    could not be deleted: it is logged, and `gc` collects it later."""
    complete = True
    for key in (record.object_key, record.thumbnail_key):
        if not key:
            continue
        try:
            await store.delete(str(key))
        except StoreError as error:
            logger.error("object of removed file %s not deleted: %s", record.id, error)
            complete = False
    return complete


def metadata_context(file_id: str, object_key: str) -> bytes:
    """Binds sealed metadata to its record, so it cannot be moved to another one."""
    return f"imgyx file {file_id} {object_key}".encode()


def sealed_object(record: File) -> SealedObject:
    return SealedObject(
        str(record.object_key), bytes(record.wrapped_key), int(record.size)
    )


def open_record(record: File, store: SealedStore) -> FileView:
    """Decrypt a record's private fields. Raises UnwrapError/IntegrityError if tampered."""
    sealed = sealed_object(record)
    fields = open_metadata(
        store.data_key(sealed),
        metadata_context(record.id, sealed.key),
        bytes(record.metadata),
    )
    created = record.created_at.replace(tzinfo=datetime.UTC)
    thumbnail = None
    if record.thumbnail_key and record.thumbnail_wrapped_key:
        thumbnail = SealedObject(
            str(record.thumbnail_key),
            bytes(record.thumbnail_wrapped_key),
            int(record.thumbnail_size or 0),
        )
    return FileView(
        id=str(record.id),
        name=str(fields["name"]),
        mimetype=str(fields["type"]),
        size=int(record.size),
        views=int(record.views),
        created_at=created,
        fingerprint=str(record.fingerprint),
        thumbnail=thumbnail,
        thumbnail_type=fields.get("thumbnail_type"),
        sealed=sealed,
    )
