"""SealedStore: encryption over any Store. Plaintext goes in, ciphertext is stored."""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import metrics
from storage.base import READ_CHUNK, Buffer, Store, new_object_key
from storage.crypto import (
    SEALED_SEGMENT_SIZE,
    EncryptingReader,
    IntegrityError,
    RangeOpener,
    locate,
    new_data_key,
    opened,
    sealed_size,
)
from storage.keys import Keyring, derive

# Small objects (thumbnails, files kept in memory) are read in one go.
READ_ALL_CHUNK = 16 * SEALED_SEGMENT_SIZE + 16
# About 100 bytes each.
DATA_KEYS_KEPT = 8192


@dataclass(frozen=True)
class SealedObject:
    """What a record keeps to read an object back: its key and its wrapped data key."""

    key: str
    wrapped_key: bytes
    size: int


class SealedStore:
    """Puts plaintext files as sealed objects and reads plaintext ranges back.

    Every object gets a fresh random data key, wrapped under the master key with the
    object key as context, so a wrapped key moved to another record does not unwrap.
    """

    def __init__(self, store: Store, master: Keyring) -> None:
        self.store = store
        self.master = master
        # Unwrapped data keys by object key. A data key never changes for its
        # object, while its wrapping does (rotate-key): records kept in memory from
        # before a rotation still read once the old master key is retired.
        self._data_keys: OrderedDict[str, bytes] = OrderedDict()
        self._data_keys_lock = threading.Lock()

    async def put_file(self, path: Path, size: int) -> SealedObject:
        """Encrypt the `size` bytes of the file at `path` into a new object."""
        key = new_object_key()
        data_key = new_data_key()
        with open(path, "rb") as plaintext, measured("put"):
            reader = EncryptingReader(plaintext, size, data_key)
            await self.store.put(key, reader, reader.length)
        return SealedObject(key, self.master.wrap(data_key, key.encode()), size)

    async def put_sealed(self, path: Path, size: int, data_key: bytes) -> SealedObject:
        """Store the file at `path`, already sealed under `data_key` (a sealing
        Spool's), that holds `size` bytes of plaintext. The file must not change
        afterwards (the local store links it in)."""
        key = new_object_key()
        with measured("put"):
            await self.store.put_file(key, path, sealed_size(size))
        return SealedObject(key, self.master.wrap(data_key, key.encode()), size)

    async def put_bytes(self, data: bytes) -> SealedObject:
        """Encrypt a small in-memory payload (a thumbnail) into a new object."""
        key = new_object_key()
        data_key = new_data_key()
        reader = EncryptingReader(io.BytesIO(data), len(data), data_key)
        with measured("put"):
            await self.store.put(key, reader, reader.length)
        return SealedObject(key, self.master.wrap(data_key, key.encode()), len(data))

    async def read_all(self, sealed: SealedObject) -> bytes:
        """The whole plaintext of a small object."""
        if sealed.size == 0:
            return b""
        reader = self.read(sealed, 0, sealed.size - 1, chunk_size=READ_ALL_CHUNK)
        chunks = [chunk async for chunk in reader]
        return b"".join(chunks)

    def rewrap(self, sealed: SealedObject) -> SealedObject:
        """The same object with its data key wrapped under the current master key."""
        context = sealed.key.encode()
        wrapped = self.master.wrap(
            self.master.unwrap(sealed.wrapped_key, context), context
        )
        return SealedObject(sealed.key, wrapped, sealed.size)

    def data_key(self, sealed: SealedObject) -> bytes:
        with self._data_keys_lock:
            known = self._data_keys.get(sealed.key)
            if known is not None:
                self._data_keys.move_to_end(sealed.key)
                return known
        data_key = self.master.unwrap(sealed.wrapped_key, sealed.key.encode())
        with self._data_keys_lock:
            self._data_keys[sealed.key] = data_key
            if len(self._data_keys) > DATA_KEYS_KEPT:
                self._data_keys.popitem(last=False)
        return data_key

    def read(
        self,
        sealed: SealedObject,
        start: int,
        end: int,
        chunk_size: int = READ_CHUNK,
        reuse_buffers: bool = False,
    ) -> AsyncGenerator[Buffer, None]:
        """Plaintext bytes start..end inclusive, in chunks of about `chunk_size`.

        Each chunk is decrypted where the store runs its transform (never after a
        wait on IO on the loop; see Store.get), and authenticated in full before it
        is yielded. With `reuse_buffers` a yielded chunk
        is only valid until the next one is asked for (a streaming reader that sends
        each chunk before asking again allocates nothing per chunk).
        Raises ObjectNotFound/StoreError from the store and IntegrityError when the
        object does not authenticate or is shorter than `sealed.size` says.
        """
        where = locate(sealed.size, start, end)
        opener = RangeOpener(
            self.data_key(sealed), sealed.size, start, end, reuse_buffers
        )
        chunks = self.store.get(
            sealed.key,
            where.offset,
            where.length,
            chunk_size=chunk_size,
            transform=opener.feed,
        )
        return opened(chunks, opener)

    async def delete(self, key: str) -> None:
        with measured("delete"):
            await self.store.delete(key)


@contextlib.contextmanager
def measured(operation: str) -> Iterator[None]:
    """Time a store call for the metrics, and count it if it fails."""
    started = time.monotonic()
    failed = True
    try:
        yield
        failed = False
    finally:
        metrics.store_call(operation, time.monotonic() - started, failed)


def seal_metadata(data_key: bytes, context: bytes, fields: dict[str, Any]) -> bytes:
    """Encrypt a record's private fields (name, type) under a key derived from its
    data key, so the database holds no file names or types in clear."""
    nonce = os.urandom(12)
    aead = AESGCM(derive(data_key, "imgyx/v1/metadata"))
    return nonce + aead.encrypt(nonce, json.dumps(fields).encode(), context)


def open_metadata(data_key: bytes, context: bytes, sealed: bytes) -> dict[str, Any]:
    aead = AESGCM(derive(data_key, "imgyx/v1/metadata"))
    try:
        plain = aead.decrypt(sealed[:12], sealed[12:], context)
    except InvalidTag:
        raise IntegrityError("record metadata failed authentication") from None
    fields: dict[str, Any] = json.loads(plain)
    return fields
