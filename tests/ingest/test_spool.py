"""The spool: a private temporary file that counts, hashes and caps an upload."""

from __future__ import annotations

import asyncio
import hmac
import stat
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path

import pytest

from ingest.spool import (
    BATCH_SIZE,
    BUFFER_SIZE,
    HEAD_SIZE,
    PLAINTEXT_ROOM,
    BufferPool,
    FileTooLarge,
    Spool,
)
from storage.crypto import SEGMENT_SIZE, decrypt_range, sealed_size

KEY = b"k" * 32
LIMIT = 20_000


def fingerprinter() -> hmac.HMAC:
    return hmac.new(KEY, digestmod="sha256")


def content(size: int) -> bytes:
    filler = bytes(index % 251 for index in range(size))
    return (b"imgyx spool test\n" + filler)[:size]


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    spool = Spool(tmp_path, LIMIT, fingerprinter())
    yield spool
    spool.discard()


@pytest.mark.parametrize("chunk_size", [1, 7, 4096, LIMIT])
def test_spool_counts_every_byte_written(spool: Spool, chunk_size: int) -> None:
    data = content(10_000)

    for chunk in chunks(data, chunk_size):
        spool.write(chunk)
    spool.finish()

    assert spool.size == len(data)
    assert spool.path.read_bytes() == data


@pytest.mark.parametrize("size", [0, 1, 10_000])
def test_spool_fingerprint_is_the_keyed_hash_of_the_content(
    spool: Spool, size: int
) -> None:
    data = content(size)

    for chunk in chunks(data, 999):
        spool.write(chunk)

    assert spool.finish() == hmac.new(KEY, data, digestmod="sha256").hexdigest()


def test_spool_fingerprint_depends_on_the_key(tmp_path: Path) -> None:
    other = Spool(tmp_path, LIMIT, hmac.new(b"j" * 32, digestmod="sha256"))
    other.write(b"same content")
    fingerprint = other.finish()
    other.discard()

    assert fingerprint != hmac.new(KEY, b"same content", "sha256").hexdigest()


@pytest.mark.parametrize("chunk_size", [1, 1000, 8191, 8192, 8193, LIMIT])
def test_spool_keeps_the_first_8192_bytes_as_head(
    spool: Spool, chunk_size: int
) -> None:
    data = content(LIMIT)

    for chunk in chunks(data, chunk_size):
        spool.write(chunk)

    assert HEAD_SIZE == 8192
    assert bytes(spool.head) == data[:HEAD_SIZE]


def test_spool_head_is_all_of_a_short_upload(spool: Spool) -> None:
    spool.write(b"short ")
    spool.write(b"upload")

    assert bytes(spool.head) == b"short upload"


@pytest.mark.parametrize("chunk_size", [1, 3333, LIMIT])
def test_spool_accepts_exactly_the_limit(spool: Spool, chunk_size: int) -> None:
    data = content(LIMIT)

    for chunk in chunks(data, chunk_size):
        spool.write(chunk)
    spool.finish()

    assert spool.size == LIMIT
    assert spool.path.stat().st_size == LIMIT


@pytest.mark.parametrize("last_chunk", [1, 2, 5000])
def test_spool_refuses_a_chunk_past_the_limit_without_writing_it(
    spool: Spool, last_chunk: int
) -> None:
    spool.write(content(LIMIT - last_chunk + 1))

    with pytest.raises(FileTooLarge):
        spool.write(b"x" * last_chunk)
    spool.finish()

    assert spool.size == LIMIT - last_chunk + 1
    assert spool.path.stat().st_size == LIMIT - last_chunk + 1


def test_spool_refuses_one_oversized_first_chunk(spool: Spool) -> None:
    with pytest.raises(FileTooLarge):
        spool.write(content(LIMIT + 1))
    spool.finish()

    assert spool.size == 0
    assert spool.path.stat().st_size == 0


def test_spool_stays_refused_after_the_limit_is_reached(spool: Spool) -> None:
    spool.write(content(LIMIT))

    with pytest.raises(FileTooLarge):
        spool.write(b"x")
    with pytest.raises(FileTooLarge):
        spool.write(b"y")

    assert spool.size == LIMIT


def test_spool_file_lives_in_the_given_folder(tmp_path: Path, spool: Spool) -> None:
    assert spool.path.parent == tmp_path
    assert spool.path.exists()


def test_spool_file_is_private_to_the_owner(spool: Spool) -> None:
    assert stat.S_IMODE(spool.path.stat().st_mode) == 0o600


def test_spool_discard_removes_the_file(spool: Spool) -> None:
    spool.write(b"gone soon")

    spool.discard()

    assert not spool.path.exists()


def test_spool_discard_after_finish_removes_the_file(spool: Spool) -> None:
    spool.write(b"finished")
    spool.finish()

    spool.discard()

    assert not spool.path.exists()


def test_spool_discard_is_idempotent(tmp_path: Path, spool: Spool) -> None:
    spool.discard()
    spool.discard()

    assert not spool.path.exists()
    assert list(tmp_path.iterdir()) == []


def test_spools_in_one_folder_do_not_share_a_file(tmp_path: Path) -> None:
    first = Spool(tmp_path, LIMIT, fingerprinter())
    second = Spool(tmp_path, LIMIT, fingerprinter())

    assert first.path != second.path
    first.discard()
    assert second.path.exists()
    second.discard()


# --- sealed as it arrives: what the ingestor opens --------------------------------

DATA_KEY = bytes(range(32))
PNG_HEAD = bytes.fromhex("89504e470d0a1a0a0000000d49484452")


def sealed_spool(folder: Path, limit: int = LIMIT, types: frozenset[str] = frozenset()):
    return Spool(folder, limit, fingerprinter(), DATA_KEY, types)


def opened(spool: Spool) -> bytes:
    """The plaintext of the sealed object in the spool file."""
    sealed = spool.path.read_bytes()
    assert len(sealed) == sealed_size(spool.size)
    if not spool.size:
        return b""
    chunks = [sealed]

    async def source() -> AsyncGenerator[bytes, None]:
        for chunk in chunks:
            yield chunk

    async def collect() -> bytes:
        parts = decrypt_range(source(), DATA_KEY, spool.size, 0, spool.size - 1)
        return b"".join([part async for part in parts])

    return asyncio.run(collect())


@pytest.mark.parametrize("size", [0, 1, SEGMENT_SIZE, 3 * SEGMENT_SIZE + 5, LIMIT])
@pytest.mark.parametrize("chunk_size", [1000, SEGMENT_SIZE + 3])
def test_sealed_spool_holds_the_sealed_object_of_the_content(
    tmp_path: Path, size: int, chunk_size: int
) -> None:
    data = content(size)
    spool = sealed_spool(tmp_path, limit=max(LIMIT, size))

    for chunk in chunks(data, chunk_size):
        spool.write(chunk)
        if spool.ready():
            spool.seal_pending()
    fingerprint = spool.finish()

    assert opened(spool) == data
    assert fingerprint == hmac.new(KEY, data, digestmod="sha256").hexdigest()
    assert data[:16] not in spool.path.read_bytes() or size == 0
    spool.discard()


def test_sealed_spool_seals_in_batches_when_drained(tmp_path: Path) -> None:
    size = 2 * BATCH_SIZE + 10
    data = content(size)
    spool = sealed_spool(tmp_path, limit=size)
    batches = 0

    for chunk in chunks(data, SEGMENT_SIZE):
        spool.write(chunk)
        if spool.ready():
            spool.seal_pending()
            batches += 1
            assert not spool.ready()
    spool.finish()

    assert batches == 2
    assert opened(spool) == data
    spool.discard()


@pytest.mark.parametrize("chunk_size", [SEGMENT_SIZE, 3 * PLAINTEXT_ROOM])
def test_undrained_sealed_spool_seals_on_the_writers_thread(
    tmp_path: Path, chunk_size: int
) -> None:
    # A remote fetch only writes: the spool must not buffer the whole file.
    size = 3 * PLAINTEXT_ROOM
    data = content(size)
    spool = sealed_spool(tmp_path, limit=size)

    for chunk in chunks(data, chunk_size):
        spool.write(chunk)

    assert spool.path.stat().st_size > 2 * PLAINTEXT_ROOM
    spool.finish()
    assert opened(spool) == data
    spool.discard()


def test_sealed_spools_reuse_the_buffers_of_finished_ones(tmp_path: Path) -> None:
    pool = BufferPool(keep_bytes=BUFFER_SIZE)
    first = Spool(tmp_path, LIMIT, fingerprinter(), DATA_KEY, buffers=pool)
    first.write(content(5000))
    first.finish()
    buffer = pool.take(BUFFER_SIZE)
    pool.give_back(buffer)

    second = Spool(tmp_path, LIMIT, fingerprinter(), DATA_KEY, buffers=pool)
    second.write(content(LIMIT))
    assert pool.take(BUFFER_SIZE) is not buffer
    second.finish()

    assert pool.take(BUFFER_SIZE) is buffer
    assert opened(second) == content(LIMIT)
    first.discard()
    second.discard()


def test_write_to_a_discarded_sealed_spool_raises(tmp_path: Path) -> None:
    spool = sealed_spool(tmp_path)
    spool.discard()

    with pytest.raises(ValueError, match="closed"):
        spool.write(b"late")


def test_sealed_spool_keeps_no_plaintext_of_other_types(tmp_path: Path) -> None:
    spool = sealed_spool(tmp_path, types=frozenset({"image/png"}))
    spool.write(content(5000))
    spool.finish()

    assert spool.mimetype == "application/octet-stream"
    assert spool.plaintext_path is None
    assert list(tmp_path.iterdir()) == [spool.path]
    spool.discard()


@pytest.mark.parametrize("size", [500, LIMIT])
def test_sealed_spool_keeps_the_plaintext_of_wanted_types_privately(
    tmp_path: Path, size: int
) -> None:
    data = (PNG_HEAD + content(size))[:size]
    spool = sealed_spool(tmp_path, types=frozenset({"image/png"}))
    for chunk in chunks(data, 4096):
        spool.write(chunk)
    spool.finish()

    assert spool.mimetype == "image/png"
    assert spool.plaintext_path is not None
    assert spool.plaintext_path.parent == tmp_path
    assert spool.plaintext_path.read_bytes() == data
    assert stat.S_IMODE(spool.plaintext_path.stat().st_mode) == 0o600
    assert opened(spool) == data
    spool.discard()
    assert list(tmp_path.iterdir()) == []


def test_sealed_spool_discard_mid_upload_removes_every_file(tmp_path: Path) -> None:
    spool = sealed_spool(tmp_path, 2 * BATCH_SIZE, frozenset({"image/png"}))
    spool.write(PNG_HEAD + content(BATCH_SIZE))
    spool.seal_pending()
    assert len(list(tmp_path.iterdir())) == 2

    spool.discard()
    spool.seal_pending()

    assert list(tmp_path.iterdir()) == []


def test_sealed_spool_refuses_past_the_limit_before_buffering(tmp_path: Path) -> None:
    spool = sealed_spool(tmp_path)
    spool.write(content(LIMIT))

    with pytest.raises(FileTooLarge):
        spool.write(b"x")

    assert spool.size == LIMIT
    spool.discard()


def test_sealed_spool_file_is_private_to_the_owner(tmp_path: Path) -> None:
    spool = sealed_spool(tmp_path)

    assert stat.S_IMODE(spool.path.stat().st_mode) == 0o600
    spool.discard()


def test_kept_buffers_are_dropped_once_no_upload_takes_them() -> None:
    pool = BufferPool(keep_bytes=2 * BUFFER_SIZE)
    first, second = pool.take(BUFFER_SIZE), pool.take(BUFFER_SIZE)
    pool.give_back(first)
    pool.give_back(second)
    pool.release_if_idle()  # taken since the last round: kept
    again = pool.take(BUFFER_SIZE)
    assert again is first or again is second
    pool.give_back(again)
    pool.release_if_idle()  # taken again: still kept
    pool.release_if_idle()  # a round with no upload: dropped
    fresh = pool.take(BUFFER_SIZE)
    assert fresh is not first and fresh is not second
