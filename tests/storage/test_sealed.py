"""SealedStore over a real LocalStore, and the sealed record metadata."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from pathlib import Path

import pytest

from storage.base import OBJECT_KEY_PATTERN, ObjectNotFound, StoreError
from storage.crypto import (
    SEALED_SEGMENT_SIZE,
    SEGMENT_SIZE,
    IntegrityError,
    StreamSealer,
    sealed_size,
)
from storage.keys import MasterKey, UnwrapError
from storage.local import LocalStore
from storage.sealed import SealedObject, SealedStore, open_metadata, seal_metadata
from tests.storage.support import collect, descriptors_open_on, keys_listed

MASTER_SECRET = bytes(range(32))
SIZE = 2 * SEGMENT_SIZE + 1234
PLAINTEXT = random.Random(20).randbytes(SIZE)
MARKER = b"imgyx-plaintext-marker:" + bytes(range(33, 74))  # 64 distinctive bytes


@pytest.fixture
def sealed_store(local_store: LocalStore) -> SealedStore:
    return SealedStore(local_store, MasterKey(MASTER_SECRET))


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    folder = tmp_path / "spool"
    folder.mkdir()
    return folder


def put_file(sealed_store: SealedStore, spool: Path, content: bytes) -> SealedObject:
    path = spool / f"upload-{len(list(spool.iterdir()))}"
    path.write_bytes(content)
    return asyncio.run(sealed_store.put_file(path, len(content)))


def read(
    sealed_store: SealedStore, record: SealedObject, start: int, end: int
) -> bytes:
    return asyncio.run(collect(sealed_store.read(record, start, end)))


def read_until_failure(
    sealed_store: SealedStore, record: SealedObject, start: int, end: int
) -> tuple[bytes, IntegrityError | None]:
    async def gather() -> tuple[bytes, IntegrityError | None]:
        chunks: list[bytes] = []
        try:
            async for chunk in sealed_store.read(record, start, end):
                chunks.append(chunk)
        except IntegrityError as error:
            return b"".join(chunks), error
        return b"".join(chunks), None

    return asyncio.run(gather())


def object_path(sealed_store: SealedStore, record: SealedObject) -> Path:
    store = sealed_store.store
    assert isinstance(store, LocalStore)
    return store.root / record.key[:2] / record.key


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, SIZE - 1),
        (0, 0),
        (SIZE - 1, SIZE - 1),
        (SEGMENT_SIZE - 1, SEGMENT_SIZE),
        (SEGMENT_SIZE, 2 * SEGMENT_SIZE + 5),
        (100, 200),
    ],
)
def test_put_file_then_read_range_returns_the_plaintext(
    sealed_store: SealedStore, spool: Path, start: int, end: int
) -> None:
    record = put_file(sealed_store, spool, PLAINTEXT)
    assert read(sealed_store, record, start, end) == PLAINTEXT[start : end + 1]


def test_put_file_records_the_size_and_stores_a_sealed_object(
    sealed_store: SealedStore, spool: Path
) -> None:
    record = put_file(sealed_store, spool, PLAINTEXT)

    assert record.size == SIZE
    assert OBJECT_KEY_PATTERN.match(record.key)
    assert asyncio.run(sealed_store.store.stat(record.key)).size == sealed_size(SIZE)


def test_empty_file_round_trips(sealed_store: SealedStore, spool: Path) -> None:
    record = put_file(sealed_store, spool, b"")
    assert record.size == 0
    assert read(sealed_store, record, 0, 0) == b""


def test_same_file_put_twice_gives_two_unrelated_objects(
    sealed_store: SealedStore, spool: Path
) -> None:
    first = put_file(sealed_store, spool, PLAINTEXT)
    second = put_file(sealed_store, spool, PLAINTEXT)

    assert first.key != second.key
    assert sealed_store.data_key(first) != sealed_store.data_key(second)
    first_bytes = object_path(sealed_store, first).read_bytes()
    second_bytes = object_path(sealed_store, second).read_bytes()
    assert first_bytes[16:48] != second_bytes[16:48]


def test_stored_object_never_contains_the_plaintext(
    sealed_store: SealedStore, spool: Path
) -> None:
    content = MARKER * (3 * SEGMENT_SIZE // len(MARKER))
    record = put_file(sealed_store, spool, content)

    on_disk = object_path(sealed_store, record).read_bytes()
    assert len(on_disk) == sealed_size(len(content))
    assert MARKER not in on_disk
    assert MARKER[:16] not in on_disk
    assert read(sealed_store, record, 0, len(content) - 1) == content


def test_wrapped_key_moved_to_another_object_does_not_unwrap(
    sealed_store: SealedStore, spool: Path
) -> None:
    first = put_file(sealed_store, spool, PLAINTEXT)
    second = put_file(sealed_store, spool, PLAINTEXT)
    moved = dataclasses.replace(second, wrapped_key=first.wrapped_key)

    with pytest.raises(UnwrapError):
        sealed_store.data_key(moved)
    with pytest.raises(UnwrapError):
        read(sealed_store, moved, 0, SIZE - 1)


def test_object_cannot_be_read_under_another_master_key(
    sealed_store: SealedStore, spool: Path
) -> None:
    record = put_file(sealed_store, spool, PLAINTEXT)
    other = SealedStore(sealed_store.store, MasterKey(bytes(32)))

    with pytest.raises(UnwrapError):
        read(other, record, 0, SIZE - 1)


def test_read_of_a_deleted_object_raises_object_not_found(
    sealed_store: SealedStore, spool: Path
) -> None:
    record = put_file(sealed_store, spool, PLAINTEXT)
    asyncio.run(sealed_store.delete(record.key))

    assert keys_listed(sealed_store.store) == set()
    with pytest.raises(ObjectNotFound):
        read(sealed_store, record, 0, SIZE - 1)


def test_put_file_of_a_file_shorter_than_its_size_raises_and_stores_nothing(
    sealed_store: SealedStore, spool: Path
) -> None:
    path = spool / "shrunk"
    path.write_bytes(PLAINTEXT[:-1])

    with pytest.raises(StoreError):
        asyncio.run(sealed_store.put_file(path, SIZE))
    assert keys_listed(sealed_store.store) == set()


def test_object_tampered_on_disk_fails_at_the_tampered_segment(
    sealed_store: SealedStore, spool: Path
) -> None:
    record = put_file(sealed_store, spool, PLAINTEXT)
    path = object_path(sealed_store, record)
    tampered = bytearray(path.read_bytes())
    tampered[16 + SEGMENT_SIZE + 16 + 100] ^= 0x01  # inside segment 1
    path.write_bytes(bytes(tampered))

    read_bytes, error = read_until_failure(sealed_store, record, 0, SIZE - 1)
    assert isinstance(error, IntegrityError)
    # Plaintext goes out a chunk at a time, once each segment of it opened.
    assert PLAINTEXT[:SEGMENT_SIZE].startswith(read_bytes)
    assert read(sealed_store, record, 0, SEGMENT_SIZE - 1) == PLAINTEXT[:SEGMENT_SIZE]


def test_read_that_fails_authentication_closes_the_object_file(
    sealed_store: SealedStore, spool: Path
) -> None:
    record = put_file(sealed_store, spool, PLAINTEXT)
    path = object_path(sealed_store, record)
    tampered = bytearray(path.read_bytes())
    tampered[-1] ^= 0x01
    path.write_bytes(bytes(tampered))

    async def scenario() -> tuple[int, int]:
        # A segment per chunk, so the first comes out before the bad last one.
        chunks = sealed_store.read(record, 0, SIZE - 1, SEALED_SEGMENT_SIZE)
        await anext(chunks)
        during = descriptors_open_on(path)
        with pytest.raises(IntegrityError):
            async for _ in chunks:
                pass
        return during, descriptors_open_on(path)

    assert asyncio.run(scenario()) == (1, 0)


def test_abandoned_read_closes_the_object_file(
    sealed_store: SealedStore, spool: Path
) -> None:
    record = put_file(sealed_store, spool, PLAINTEXT)
    path = object_path(sealed_store, record)

    async def scenario() -> tuple[bytes, int, int]:
        chunks = sealed_store.read(record, 0, SIZE - 1, SEALED_SEGMENT_SIZE)
        first = await anext(chunks)
        during = descriptors_open_on(path)
        await chunks.aclose()
        return first, during, descriptors_open_on(path)

    assert asyncio.run(scenario()) == (PLAINTEXT[:SEGMENT_SIZE], 1, 0)


@pytest.mark.parametrize("wrong_size", [SIZE - 1, SIZE + 1, 2 * SEGMENT_SIZE])
def test_record_size_that_disagrees_with_the_object_fails(
    sealed_store: SealedStore, spool: Path, wrong_size: int
) -> None:
    record = put_file(sealed_store, spool, PLAINTEXT)
    wrong = dataclasses.replace(record, size=wrong_size)

    read_bytes, error = read_until_failure(sealed_store, wrong, 0, wrong_size - 1)
    assert isinstance(error, IntegrityError)
    assert PLAINTEXT.startswith(read_bytes)
    assert len(read_bytes) < wrong_size


DATA_KEY = bytes(range(50, 82))
CONTEXT = b"0123456789abcdef0123456789abcdef"
FIELDS = {"name": "holiday photo \N{SNOWMAN}.jpg", "type": "image/jpeg"}


def test_metadata_round_trips() -> None:
    sealed = seal_metadata(DATA_KEY, CONTEXT, FIELDS)
    assert open_metadata(DATA_KEY, CONTEXT, sealed) == FIELDS


def test_sealed_metadata_holds_no_field_in_clear() -> None:
    sealed = seal_metadata(DATA_KEY, CONTEXT, FIELDS)
    assert b"holiday" not in sealed
    assert b"image/jpeg" not in sealed


def test_metadata_under_another_context_fails() -> None:
    sealed = seal_metadata(DATA_KEY, CONTEXT, FIELDS)
    with pytest.raises(IntegrityError):
        open_metadata(DATA_KEY, CONTEXT[::-1], sealed)


def test_metadata_under_another_data_key_fails() -> None:
    sealed = seal_metadata(DATA_KEY, CONTEXT, FIELDS)
    with pytest.raises(IntegrityError):
        open_metadata(bytes(32), CONTEXT, sealed)


@pytest.mark.parametrize("position", [0, 11, 12, 20, -1])
def test_tampered_metadata_fails(position: int) -> None:
    sealed = bytearray(seal_metadata(DATA_KEY, CONTEXT, FIELDS))
    sealed[position] ^= 0x80
    with pytest.raises(IntegrityError):
        open_metadata(DATA_KEY, CONTEXT, bytes(sealed))


def sealed_spool_of(spool: Path, content: bytes, data_key: bytes) -> Path:
    """A spool file holding `content` sealed under `data_key`, as a Spool writes it."""
    sealer = StreamSealer(data_key)
    path = spool / f"sealed-{len(list(spool.iterdir()))}"
    sealed, _ = sealer.seal(content, final=True)
    path.write_bytes(sealed)
    return path


@pytest.mark.parametrize("size", [0, 1, SIZE])
def test_put_sealed_stores_the_spool_as_a_readable_object(
    sealed_store: SealedStore, spool: Path, size: int
) -> None:
    data_key = random.Random(size).randbytes(32)
    content = PLAINTEXT[:size]
    path = sealed_spool_of(spool, content, data_key)

    record = asyncio.run(sealed_store.put_sealed(path, size, data_key))
    path.unlink()

    assert OBJECT_KEY_PATTERN.match(record.key)
    assert record.size == size
    assert object_path(sealed_store, record).stat().st_size == sealed_size(size)
    assert sealed_store.data_key(record) == data_key
    if size:
        assert read(sealed_store, record, 0, size - 1) == content


def test_put_sealed_of_a_spool_sealed_under_another_key_does_not_read(
    sealed_store: SealedStore, spool: Path
) -> None:
    path = sealed_spool_of(spool, PLAINTEXT, bytes(32))

    record = asyncio.run(sealed_store.put_sealed(path, SIZE, bytes(range(32))))

    with pytest.raises(IntegrityError):
        read(sealed_store, record, 0, 10)
