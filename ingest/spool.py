"""Spool: the local temporary file an upload streams into, counted, hashed and, given a
data key, sealed as it arrives, so the finished spool is the object to store."""

from __future__ import annotations

import hmac
import os
import tempfile
import threading
from collections.abc import Collection
from pathlib import Path
from typing import BinaryIO

from ingest import mime
from storage.buffers import BufferPool
from storage.crypto import SEGMENT_SIZE, StreamSealer, sealed_size

HEAD_SIZE = 8192
# Plaintext sealed at once by `seal_pending()`, the call callers run off the IO loop.
BATCH_SIZE = 512 * 1024
# Room for a batch and the chunk that completes it; a spool nobody drains (a remote
# fetch) seals on the writer's thread whenever this is full.
PLAINTEXT_ROOM = BATCH_SIZE + 2 * SEGMENT_SIZE
# One buffer holds the plaintext to seal, then room for what it seals to.
BUFFER_SIZE = PLAINTEXT_ROOM + sealed_size(PLAINTEXT_ROOM)


class FileTooLarge(Exception):
    """More bytes arrived than the size limit allows."""


class Spool:
    """Writes an upload to a private temporary file while counting and hashing it.

    Keeps the first HEAD_SIZE bytes for MIME detection. Without a data key the file
    holds the plaintext. With one it holds the sealed object (storage/crypto.py),
    written a batch at a time, and the plaintext is kept in a second private file
    only when the content's type is one of `plaintext_types` (images to make
    thumbnails of): `plaintext_path` names it, or is None.

    `write()` only counts and buffers until the buffer is full; `seal_pending()`
    seals it (blocking, thread-safe against `discard()`); `finish()` seals the rest.
    `discard()` removes the files; it is safe to call on every path, any number of
    times.
    """

    def __init__(
        self,
        folder: Path,
        limit: int,
        fingerprinter: hmac.HMAC,
        data_key: bytes | None = None,
        plaintext_types: Collection[str] = (),
        buffers: BufferPool | None = None,
    ) -> None:
        self.limit = limit
        self.size = 0
        self.head = bytearray()
        self.data_key = data_key
        self._hash = fingerprinter
        self._folder = folder
        self._plaintext_types = plaintext_types
        self._mimetype: str | None = None
        self._sealer = StreamSealer(data_key) if data_key is not None else None
        self._buffers = buffers or BufferPool(0)
        self._buffer: bytearray | None = None
        self._filled = 0
        self._lock = threading.Lock()
        self._closed = False
        self.path, self._handle = _private_file(folder, ".spool")
        self.plaintext_path: Path | None = None if data_key else self.path
        self._plaintext: BinaryIO | None = None
        self._typed = False

    @property
    def mimetype(self) -> str:
        """The content's type, from its first bytes (libmagic); blocking."""
        if self._mimetype is None:
            self._mimetype = mime.detect(bytes(self.head))
        return self._mimetype

    def write(self, chunk: bytes) -> None:
        if self.size + len(chunk) > self.limit:
            raise FileTooLarge(f"larger than {self.limit} bytes")
        self.size += len(chunk)
        if len(self.head) < HEAD_SIZE:
            self.head += chunk[: HEAD_SIZE - len(self.head)]
        if self._sealer is None:
            self._hash.update(chunk)
            self._handle.write(chunk)
            return
        if self._closed:
            raise ValueError("write to a closed spool")
        if self._buffer is None:
            self._buffer = self._buffers.take(BUFFER_SIZE)
        rest = memoryview(chunk)
        while rest:
            if self._filled == PLAINTEXT_ROOM:
                self.seal_pending()
            room = min(PLAINTEXT_ROOM - self._filled, len(rest))
            self._buffer[self._filled : self._filled + room] = rest[:room]
            self._filled += room
            rest = rest[room:]

    def ready(self) -> bool:
        """True when a batch waits for `seal_pending()`."""
        return self._filled >= BATCH_SIZE

    def seal_pending(self) -> None:
        """Hash, seal and write the buffered plaintext (all but a last segment's
        worth, which may turn out to be the file's last). Blocking."""
        with self._lock:
            if not self._closed:
                self._seal(final=False)

    def finish(self) -> str:
        """Close the file for writing; returns the content's fingerprint (hex).

        Blocking: with a data key, the rest of the buffer is sealed first."""
        with self._lock:
            if self._sealer is not None and not self._closed:
                self._seal(final=True)
            self._close()
        return self._hash.hexdigest()

    def discard(self) -> None:
        with self._lock:
            self._close()
            self.path.unlink(missing_ok=True)
            if self.plaintext_path is not None:
                self.plaintext_path.unlink(missing_ok=True)

    def _seal(self, final: bool) -> None:
        assert self._sealer is not None
        if self._sealer.finished:
            return
        if not self._typed:
            self._keep_plaintext_if_wanted()
        if self._buffer is None:
            self._buffer = self._buffers.take(BUFFER_SIZE)
        buffer, filled = self._buffer, self._filled
        with memoryview(buffer) as view:
            plaintext = view[:filled]
            written, used = self._sealer.seal_into(
                plaintext, view[PLAINTEXT_ROOM:], final
            )
            self._hash.update(plaintext[:used])
            if self._plaintext is not None:
                self._plaintext.write(plaintext[:used])
            self._handle.write(view[PLAINTEXT_ROOM : PLAINTEXT_ROOM + written])
            if used and filled > used:
                # The rest (at most a segment's worth) goes first next time.
                view[: filled - used] = view[used:filled]
        self._filled = filled - used

    def _keep_plaintext_if_wanted(self) -> None:
        # Called once the head is complete: at the first batch (far past HEAD_SIZE)
        # or at the end of a shorter upload.
        self._typed = True
        if self.mimetype in self._plaintext_types:
            self.plaintext_path, self._plaintext = _private_file(self._folder, ".plain")

    def _close(self) -> None:
        self._closed = True
        self._filled = 0
        if self._buffer is not None:
            self._buffers.give_back(self._buffer)
            self._buffer = None
        for handle in (self._handle, self._plaintext):
            if handle is not None and not handle.closed:
                handle.close()


def _private_file(folder: Path, suffix: str) -> tuple[Path, BinaryIO]:
    """A new file only the owner can read (mkstemp makes it 0600), open to write."""
    descriptor, name = tempfile.mkstemp(prefix="imgyx-", suffix=suffix, dir=folder)
    return Path(name), os.fdopen(descriptor, "wb")
