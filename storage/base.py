"""The Store interface: where objects (ciphertext only) live. Backends implement it."""

from __future__ import annotations

import abc
import datetime
import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class StoreError(Exception):
    """The store failed or could not be reached. Handlers answer 502 STORAGE_ERROR."""


class ObjectNotFound(StoreError):
    """The store answered, and the object is not there."""


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime.datetime


OBJECT_KEY_PATTERN = re.compile(r"\A[0-9a-f]{32}\Z")


def new_object_key() -> str:
    """A random object key: 128 bits, hex. It says nothing about the file it holds."""
    return secrets.token_hex(16)


def check_object_key(key: str) -> str:
    """Refuse anything but our own key shape, so no key can walk out of the store."""
    if not OBJECT_KEY_PATTERN.match(key):
        raise ValueError(f"not an object key: {key!r}")
    return key


# Bytes a backend reads per chunk unless asked otherwise.
READ_CHUNK = 256 * 1024
Buffer = bytes | bytearray | memoryview
# Runs on each chunk read, in a worker thread (decryption, in practice).
Transform = Callable[[Buffer], Buffer]


class Store(abc.ABC):
    """An asynchronous object store.

    Contract shared by every backend (the same test suite runs against each):

    - Keys are `new_object_key()` strings; a backend refuses any other shape.
    - `put` stores exactly `length` bytes read from `source` (a blocking reader, read
      from the backend's worker threads) under `key`, atomically: until `put`
      returns, `get`/`stat` see either nothing or the previous object, never a part.
      A failed `put` leaves nothing behind and raises StoreError.
    - `get` yields the bytes offset..offset+length-1 in order, in chunks of about
      `chunk_size` bytes, and reads only those bytes from the backing storage. With
      a `transform`, each chunk is passed through it, in order, and what it returns
      is yielded instead (empty results are yielded too); what it raises
      propagates. The transform runs in the backend's worker thread, or on the loop
      for a chunk that was read without waiting (the local store's page cache):
      never after a wait on the disk or network. The chunk it is given is only
      valid during the call (a backend may read the next chunk into the same
      buffer). A backend may read and transform the next chunk as soon as one is
      yielded, before it is asked for: the transform then runs while the caller
      still holds the chunk it got last (a transform reusing output buffers needs
      two). It raises ObjectNotFound when the key is absent, StoreError on any
      other failure (also mid-stream). Fewer bytes than asked means the object is
      shorter; callers detect that.
    - `delete` removes the object; deleting an absent key is not an error.
    - `stat` returns ObjectInfo or raises ObjectNotFound.
    - `list` yields ObjectInfo for every object, in no particular order.
    - Blocking work never runs on the IO loop.
    """

    @abc.abstractmethod
    async def put(self, key: str, source: Readable, length: int) -> None: ...

    async def put_file(self, key: str, path: Path, length: int) -> None:
        """`put` of the first `length` bytes of the local file at `path`.

        The file stays where it is, and must not change afterwards: a backend may
        store it by sharing its blocks (a hard link) instead of copying them.
        """
        with open(path, "rb") as source:
            await self.put(key, source, length)

    @abc.abstractmethod
    def get(
        self,
        key: str,
        offset: int,
        length: int,
        chunk_size: int = READ_CHUNK,
        transform: Transform | None = None,
    ) -> AsyncGenerator[Buffer, None]: ...

    @abc.abstractmethod
    async def delete(self, key: str) -> None: ...

    @abc.abstractmethod
    async def stat(self, key: str) -> ObjectInfo: ...

    @abc.abstractmethod
    def list(self) -> AsyncIterator[ObjectInfo]: ...

    def release_idle(self) -> None:
        """Let go of what is kept for reuse and went unused since the last call
        (the server calls it every housekeeping round)."""

    async def prepare(self) -> None:
        """Make the store ready (e.g. create its bucket); safe to call repeatedly."""

    async def close(self) -> None:
        """Release threads and connections. The store is unusable afterwards."""
