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
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.base import Buffer
from storage.buffers import STREAMS

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

    def open_into(
        self,
        index: int,
        last: bool,
        sealed: bytes | bytearray | memoryview,
        target: memoryview,
    ) -> None:
        """Decrypt one segment into `target`, which is exactly its plaintext size."""
        try:
            self._aead.decrypt_into(_nonce(index, last), sealed, HEADER, target)
        except InvalidTag:
            raise IntegrityError(f"segment {index} failed authentication") from None

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


class RangeOpener:
    """Authenticated plaintext of bytes start..end (inclusive) from the sealed bytes
    `locate(...)` names, fed in chunks of any size.

    Blocking and stateful: feed the chunks in order, from one thread at a time (a
    store's worker thread, so decryption runs off the IO loop, in parallel with it).
    `feed` returns the plaintext of every segment the chunk completes, decrypted
    straight into one buffer; nothing is returned before its segment authenticates.

    With `reuse_buffers`, two output buffers take turns, so a long stream allocates
    (and faults in) no new memory per chunk: what `feed` returns is then only valid
    until the next-but-one `feed`.
    """

    def __init__(
        self,
        data_key: bytes,
        plaintext_size: int,
        start: int,
        end: int,
        reuse_buffers: bool = False,
    ) -> None:
        where = locate(plaintext_size, start, end)
        self._cipher = SegmentCipher(data_key)
        self._size = plaintext_size
        self._segments = segment_count(plaintext_size)
        self._start = start
        self._end = end
        self._index = where.first_segment
        self._last = where.last_segment
        self._need_header = where.offset == 0
        self._pending = bytearray()  # a header or segment split between chunks
        self._buffers: list[bytearray | None] | None = (
            [None, None] if reuse_buffers else None
        )
        self._turn = 0

    def feed(self, chunk: Buffer) -> memoryview:
        view = memoryview(chunk)
        used = self._take_header(view) if self._need_header else 0
        if self._need_header:
            return memoryview(b"")
        sizes = self._complete_segments(len(self._pending) + len(view) - used)
        target = self._output(sum(sizes))
        first = self._index
        written = 0
        for plain in sizes:
            sealed_length = plain + TAG_SIZE
            if self._pending:
                missing = sealed_length - len(self._pending)
                self._pending += view[used : used + missing]
                used += missing
                sealed: bytes | bytearray | memoryview = self._pending
            else:
                sealed = view[used : used + sealed_length]
                used += sealed_length
            last = self._index == self._segments - 1
            self._cipher.open_into(
                self._index, last, sealed, target[written : written + plain]
            )
            written += plain
            self._index += 1
            if sealed is self._pending:
                self._pending = bytearray()
        if self._index <= self._last:
            self._pending += view[used:]
        return self._trim(target, first * SEGMENT_SIZE)

    def finish(self) -> None:
        """Raise IntegrityError unless every segment of the range was opened."""
        if self._need_header or self._index <= self._last:
            raise IntegrityError("object is shorter than its record says")

    def _take_header(self, view: memoryview) -> int:
        used = min(HEADER_SIZE - len(self._pending), len(view))
        self._pending += view[:used]
        if len(self._pending) == HEADER_SIZE:
            if self._pending != HEADER:
                raise IntegrityError("unknown object header")
            self._pending = bytearray()
            self._need_header = False
        return used

    def _complete_segments(self, available: int) -> list[int]:
        """Plaintext sizes of the segments `available` sealed bytes complete."""
        sizes = []
        index = self._index
        while index <= self._last:
            plain = _segment_plain_size(self._size, index)
            if available < plain + TAG_SIZE:
                break
            sizes.append(plain)
            available -= plain + TAG_SIZE
            index += 1
        return sizes

    def _output(self, size: int) -> memoryview:
        if self._buffers is None:
            return memoryview(bytearray(size))
        buffer = self._buffers[self._turn]
        if buffer is None or len(buffer) < size:
            if buffer is not None:
                STREAMS.give_back(buffer)
            # Whole segments, so a pool serves streams of any file size.
            buffer = STREAMS.take(-(-size // SEGMENT_SIZE) * SEGMENT_SIZE)
            self._buffers[self._turn] = buffer
        self._turn ^= 1
        return memoryview(buffer)[:size]

    def release(self) -> None:
        """Hand reused output buffers back; nothing `feed` returned is used after."""
        if self._buffers is not None:
            for buffer in self._buffers:
                if buffer is not None:
                    STREAMS.give_back(buffer)
            self._buffers = [None, None]

    def _trim(self, out: memoryview, base: int) -> memoryview:
        low = max(self._start - base, 0)
        high = min(self._end + 1 - base, len(out))
        return out[low:high]


async def decrypt_range(
    sealed_chunks: AsyncGenerator[bytes, None],
    data_key: bytes,
    plaintext_size: int,
    start: int,
    end: int,
) -> AsyncGenerator[Buffer, None]:
    """Yield plaintext bytes start..end (inclusive), decrypting on the IO loop.

    `sealed_chunks` must yield exactly the bytes described by `locate(...)`. Nothing is
    yielded before its segment authenticates; a short or corrupt object raises
    IntegrityError. (SealedStore.read decrypts in the store's threads instead.)
    """
    opener = RangeOpener(data_key, plaintext_size, start, end)
    async for plaintext in opened(sealed_chunks, opener, opener.feed):
        yield plaintext


async def opened(
    chunks: AsyncGenerator[Buffer, None],
    opener: RangeOpener,
    decrypt: Callable[[Buffer], memoryview] | None = None,
) -> AsyncGenerator[Buffer, None]:
    """Yield the non-empty plaintext chunks of a range, then check it was complete.

    `chunks` are sealed bytes when `decrypt` is given, else plaintext the store
    already passed through `opener.feed`. The store's read is closed on every path.
    """
    try:
        async for chunk in chunks:
            plaintext = decrypt(chunk) if decrypt is not None else chunk
            if plaintext:
                yield plaintext
    finally:
        await chunks.aclose()
        opener.release()
    opener.finish()
