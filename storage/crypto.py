"""The object format: a versioned header, then 64 KiB plaintext segments sealed with
AES-256-GCM in the STREAM construction, so any byte range decrypts on its own.

Layout of an object holding N plaintext bytes (N may be 0):

    header (16 bytes) = b"IGYX" | version (1) | log2(segment size) (1) | 10 zero bytes
    segment 0 .. S-1  = AES-GCM(data key, nonce_i, plaintext_i, aad=header) (+16-byte tag)

with S = max(1, ceil(N / 65536)). Every segment but the last holds exactly 65536
plaintext bytes. The 12-byte nonce is 7 zero bytes, the segment index as 4 bytes
big-endian, then 1 if the segment is the last one, else 0. The zero prefix is safe
because every object has its own random data key, so a nonce never repeats under a
key. Because the index and the last-segment flag are authenticated, reordering,
dropping, duplicating or truncating segments all fail to decrypt; because the key
is per object, splicing segments between objects fails too.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"IGYX"
VERSION = 1
SEGMENT_SHIFT = 16
SEGMENT_SIZE = 1 << SEGMENT_SHIFT
TAG_SIZE = 16
SEALED_SEGMENT_SIZE = SEGMENT_SIZE + TAG_SIZE
HEADER = MAGIC + bytes([VERSION, SEGMENT_SHIFT]) + bytes(10)
HEADER_SIZE = len(HEADER)
DATA_KEY_SIZE = 32
MAX_SEGMENTS = 1 << 32


class IntegrityError(Exception):
    """An object failed authentication: tampered, truncated, reordered or foreign."""


def new_data_key() -> bytes:
    return os.urandom(DATA_KEY_SIZE)


def segment_count(plaintext_size: int) -> int:
    return max(1, -(-plaintext_size // SEGMENT_SIZE))


def sealed_size(plaintext_size: int) -> int:
    """Size in bytes of the object that holds `plaintext_size` bytes."""
    return HEADER_SIZE + plaintext_size + segment_count(plaintext_size) * TAG_SIZE


def _nonce(index: int, last: bool) -> bytes:
    return bytes(7) + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


class SegmentCipher:
    """Seals and opens single segments of one object under its data key."""

    def __init__(self, data_key: bytes) -> None:
        if len(data_key) != DATA_KEY_SIZE:
            raise ValueError("a data key is 32 bytes")
        self._aead = AESGCM(data_key)

    def seal(self, index: int, last: bool, plaintext: bytes) -> bytes:
        return self._aead.encrypt(_nonce(index, last), plaintext, HEADER)

    def open(self, index: int, last: bool, sealed: bytes | memoryview) -> bytes:
        try:
            return self._aead.decrypt(_nonce(index, last), sealed, HEADER)
        except InvalidTag:
            raise IntegrityError(f"segment {index} failed authentication") from None


class StreamSealer:
    """Seals plaintext that arrives in pieces, of a length not known in advance.

    `seal()` returns the sealed bytes of every segment it can close, the header
    first. Until `final`, the segment that may turn out to be the last (it carries
    the last-segment flag) stays open: a segment is closed only once at least one
    plaintext byte after it is known. Not thread-safe; one caller at a time.
    """

    def __init__(self, data_key: bytes) -> None:
        if len(data_key) != DATA_KEY_SIZE:
            raise ValueError("a data key is 32 bytes")
        self._aead = AESGCM(data_key)
        self._index = 0
        self.finished = False

    def seal(
        self, plaintext: bytes | bytearray | memoryview, final: bool = False
    ) -> tuple[bytearray, int]:
        """Seal what can be closed of `plaintext` (the bytes after those already
        sealed). Returns the sealed bytes and how many plaintext bytes they hold;
        the caller passes the rest again, with more, next time. With `final`,
        everything is sealed and the last segment flagged."""
        sealed = bytearray(sealed_size(len(plaintext)))
        written, used = self.seal_into(plaintext, sealed, final)
        del sealed[written:]
        return sealed, used

    def seal_into(
        self,
        plaintext: bytes | bytearray | memoryview,
        out: bytearray | memoryview,
        final: bool = False,
    ) -> tuple[int, int]:
        """`seal()` into `out`, which holds at least `sealed_size(len(plaintext))`
        bytes. Returns how many bytes were written to `out` and how many plaintext
        bytes they hold."""
        if self.finished:
            raise ValueError("the stream is already sealed to its end")
        view = memoryview(plaintext)
        length = len(view)
        if final and not length and self._index:
            # Only an empty object has an empty segment; see the class docstring.
            raise ValueError("the last segment must hold the stream's last bytes")
        if final:
            count = max(1, -(-length // SEGMENT_SIZE))
        else:
            count = (length - 1) // SEGMENT_SIZE if length else 0
        if self._index + count > MAX_SEGMENTS:
            raise ValueError("file too large for the object format")
        used = length if final else count * SEGMENT_SIZE
        header = HEADER_SIZE if self._index == 0 and count else 0
        target = memoryview(out)
        target[:header] = HEADER[:header]
        position = header
        for number in range(count):
            piece = view[number * SEGMENT_SIZE : (number + 1) * SEGMENT_SIZE]
            size = len(piece) + TAG_SIZE
            nonce = _nonce(self._index, final and number == count - 1)
            self._aead.encrypt_into(
                nonce, piece, HEADER, target[position : position + size]
            )
            position += size
            self._index += 1
        self.finished = final
        return position, used


class EncryptingReader:
    """A file-like reader of the sealed object for a plaintext file of known size.

    Blocking; store backends call `read()` from their worker threads, so a whole
    upload is encrypted and written without touching the IO loop.
    """

    def __init__(self, plaintext: BinaryIO, size: int, data_key: bytes) -> None:
        if segment_count(size) > MAX_SEGMENTS:
            raise ValueError("file too large for the object format")
        self._source = plaintext
        self._size = size
        self._cipher = SegmentCipher(data_key)
        self._segments = segment_count(size)
        self._index = 0
        self._pending = bytearray(HEADER)
        self.length = sealed_size(size)

    def read(self, size: int = -1) -> bytes:
        want = self.length if size is None or size < 0 else size
        while len(self._pending) < want and self._index < self._segments:
            self._pending += self._next_segment()
        chunk = bytes(self._pending[:want])
        del self._pending[:want]
        return chunk

    def _next_segment(self) -> bytes:
        index = self._index
        last = index == self._segments - 1
        expected = self._size - index * SEGMENT_SIZE if last else SEGMENT_SIZE
        plaintext = self._source.read(expected)
        if len(plaintext) != expected:
            raise OSError("the spool file changed while it was being encrypted")
        self._index += 1
        return self._cipher.seal(index, last, plaintext)


@dataclass(frozen=True)
class SealedRange:
    """Which bytes of an object to read to get plaintext bytes start..end inclusive."""

    offset: int
    length: int
    first_segment: int
    last_segment: int


def locate(plaintext_size: int, start: int, end: int) -> SealedRange:
    """Map an inclusive plaintext byte range to the sealed segments that cover it.

    A range that starts in segment 0 also covers the header, so a full read checks
    the header as well.
    """
    if not 0 <= start <= end < max(plaintext_size, 1):
        raise ValueError(f"range {start}-{end} outside 0-{plaintext_size - 1}")
    first = start // SEGMENT_SIZE
    last = end // SEGMENT_SIZE if plaintext_size else 0
    offset = HEADER_SIZE + first * SEALED_SEGMENT_SIZE
    stop = (
        HEADER_SIZE
        + last * SEALED_SEGMENT_SIZE
        + _segment_plain_size(plaintext_size, last)
        + TAG_SIZE
    )
    if first == 0:
        offset = 0
    return SealedRange(offset, stop - offset, first, last)


def _segment_plain_size(plaintext_size: int, index: int) -> int:
    return min(SEGMENT_SIZE, plaintext_size - index * SEGMENT_SIZE)


async def decrypt_range(
    sealed_chunks: AsyncGenerator[bytes, None],
    data_key: bytes,
    plaintext_size: int,
    start: int,
    end: int,
) -> AsyncGenerator[bytes, None]:
    """Yield plaintext bytes start..end (inclusive), one authenticated segment at a time.

    `sealed_chunks` must yield exactly the bytes described by `locate(...)`. Nothing is
    yielded before its segment authenticates; a short or corrupt object raises
    IntegrityError.
    """
    where = locate(plaintext_size, start, end)
    cipher = SegmentCipher(data_key)
    segments = segment_count(plaintext_size)
    leftover = b""
    index = where.first_segment
    need_header = where.offset == 0
    try:
        async for chunk in sealed_chunks:
            data = memoryview(leftover + chunk if leftover else chunk)
            used = 0
            if need_header:
                if len(data) < HEADER_SIZE:
                    leftover = bytes(data)
                    continue
                if data[:HEADER_SIZE] != HEADER:
                    raise IntegrityError("unknown object header")
                used = HEADER_SIZE
                need_header = False
            while index <= where.last_segment:
                size = _segment_plain_size(plaintext_size, index) + TAG_SIZE
                if len(data) - used < size:
                    break
                sealed = data[used : used + size]
                plaintext = cipher.open(index, index == segments - 1, sealed)
                used += size
                yield _trim(plaintext, index, start, end)
                index += 1
            leftover = bytes(data[used:])
    finally:
        # Stop the store's read (and close its file or connection) on every path.
        await sealed_chunks.aclose()
    if index <= where.last_segment or need_header:
        raise IntegrityError("object is shorter than its record says")


def _trim(plaintext: bytes, index: int, start: int, end: int) -> bytes:
    base = index * SEGMENT_SIZE
    low = max(start - base, 0)
    high = min(end - base + 1, len(plaintext))
    if low == 0 and high == len(plaintext):
        return plaintext
    return plaintext[low:high]
