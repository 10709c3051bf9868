"""The Store contract of storage/base.py, run against every backend."""

from __future__ import annotations

import asyncio
import datetime
import io
import itertools
import random
import threading
from collections.abc import Callable, Coroutine

import pytest

from storage.base import ObjectNotFound, Store, StoreError, new_object_key
from storage.local import LocalStore
from tests.storage.support import (
    FailingSource,
    GatedSource,
    collect,
    get,
    keys_listed,
    put,
)

CONTENT = random.Random(1).randbytes(1000)
MIB = 1024 * 1024


def runs(data: bytes) -> list[tuple[int, int]]:
    """(byte, run length) pairs: a readable summary of large uniform contents."""
    return [(value, len(list(group))) for value, group in itertools.groupby(data)]


def test_get_returns_the_bytes_put(store: Store) -> None:
    key = new_object_key()
    put(store, key, CONTENT)
    assert get(store, key, 0, len(CONTENT)) == CONTENT


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, 1), (1, 10), (999, 1), (500, 250), (0, 999), (1, 999)],
)
def test_get_returns_only_the_requested_range(
    store: Store, offset: int, length: int
) -> None:
    key = new_object_key()
    put(store, key, CONTENT)
    assert get(store, key, offset, length) == CONTENT[offset : offset + length]


@pytest.mark.parametrize("offset", [0, 500, 999])
def test_get_of_zero_bytes_yields_nothing(store: Store, offset: int) -> None:
    key = new_object_key()
    put(store, key, CONTENT)
    assert get(store, key, offset, 0) == b""


@pytest.mark.parametrize(("offset", "length"), [(990, 100), (1000, 5), (2000, 5)])
def test_get_past_the_end_yields_only_what_is_there(
    store: Store, offset: int, length: int
) -> None:
    key = new_object_key()
    put(store, key, CONTENT)
    assert get(store, key, offset, length) == CONTENT[offset:]


def test_get_of_an_absent_key_raises_object_not_found(store: Store) -> None:
    with pytest.raises(ObjectNotFound):
        get(store, new_object_key(), 0, 10)


def test_three_mib_object_round_trips(store: Store) -> None:
    key = new_object_key()
    content = random.Random(3).randbytes(3 * MIB)
    put(store, key, content)

    assert asyncio.run(store.stat(key)).size == 3 * MIB
    assert get(store, key, 0, 3 * MIB) == content
    assert get(store, key, MIB - 3, 300_000) == content[MIB - 3 : MIB - 3 + 300_000]


def test_get_passes_each_chunk_through_the_transform_never_waiting_on_the_loop(
    store: Store,
) -> None:
    key = new_object_key()
    content = random.Random(3).randbytes(3 * MIB + 17)
    put(store, key, content)
    seen: list[tuple[int, bool]] = []

    def transform(chunk: bytes) -> bytes:
        on_loop = threading.current_thread() is threading.main_thread()
        seen.append((len(chunk), on_loop))
        return bytes(chunk)[::-1]  # the chunk itself is only valid during the call

    async def gather() -> list[bytes | bytearray]:
        reader = store.get(
            key, 5, len(content) - 5, chunk_size=MIB, transform=transform
        )
        return [chunk async for chunk in reader]

    chunks = asyncio.run(gather())
    assert b"".join(chunk[::-1] for chunk in chunks) == content[5:]
    assert [length for length, _ in seen] == [MIB, MIB, MIB, 12]
    if not isinstance(store, LocalStore):
        # The local store may run it on the loop for chunks in the page cache
        # (tests/storage/test_local.py); a network read always waits.
        assert not any(on_loop for _, on_loop in seen)


def test_empty_object_round_trips(store: Store) -> None:
    key = new_object_key()
    put(store, key, b"")
    assert asyncio.run(store.stat(key)).size == 0
    assert get(store, key, 0, 10) == b""


def test_put_stores_exactly_length_bytes_of_a_longer_source(store: Store) -> None:
    key = new_object_key()
    asyncio.run(store.put(key, io.BytesIO(CONTENT), 100))
    assert get(store, key, 0, len(CONTENT)) == CONTENT[:100]


def test_put_reads_the_source_off_the_event_loop_thread(store: Store) -> None:
    source = GatedSource(CONTENT, pause_at=len(CONTENT))
    source.release.set()
    asyncio.run(store.put(new_object_key(), source, len(CONTENT)))
    assert source.reader_threads
    assert threading.get_ident() not in source.reader_threads


@pytest.mark.parametrize("short_by", [1, 500, 1000])
def test_put_of_a_short_source_raises_and_leaves_nothing(
    store: Store, short_by: int
) -> None:
    key = new_object_key()
    source = io.BytesIO(CONTENT[: len(CONTENT) - short_by])
    with pytest.raises(StoreError):
        asyncio.run(store.put(key, source, len(CONTENT)))

    with pytest.raises(ObjectNotFound):
        asyncio.run(store.stat(key))
    with pytest.raises(ObjectNotFound):
        get(store, key, 0, 1)
    assert keys_listed(store) == set()


def test_put_of_a_failing_source_raises_and_leaves_nothing(store: Store) -> None:
    key = new_object_key()
    with pytest.raises(StoreError):
        asyncio.run(store.put(key, FailingSource(CONTENT, 300), len(CONTENT)))

    with pytest.raises(ObjectNotFound):
        asyncio.run(store.stat(key))
    assert keys_listed(store) == set()


def test_failed_put_keeps_the_previous_object(store: Store) -> None:
    key = new_object_key()
    put(store, key, CONTENT)
    with pytest.raises(StoreError):
        asyncio.run(store.put(key, io.BytesIO(b"short"), 100))

    assert get(store, key, 0, len(CONTENT)) == CONTENT


def test_put_replaces_the_previous_object(store: Store) -> None:
    key = new_object_key()
    put(store, key, CONTENT)
    put(store, key, b"replacement")

    assert asyncio.run(store.stat(key)).size == len(b"replacement")
    assert get(store, key, 0, len(CONTENT)) == b"replacement"


def test_object_being_put_is_absent_until_put_returns(store: Store) -> None:
    key = new_object_key()
    content = bytes(256 * 1024)

    async def scenario() -> tuple[bool, set[str]]:
        source = GatedSource(content, pause_at=len(content) // 2)
        putting = asyncio.create_task(store.put(key, source, len(content)))
        await source.wait_until_paused()
        try:
            await store.stat(key)
            visible = True
        except ObjectNotFound:
            visible = False
        listed = {info.key async for info in store.list()}
        source.release.set()
        await putting
        return visible, listed

    assert asyncio.run(scenario()) == (False, set())
    assert get(store, key, 0, len(content)) == content


def test_object_being_replaced_reads_as_the_previous_one_until_put_returns(
    store: Store,
) -> None:
    key = new_object_key()
    put(store, key, CONTENT)
    replacement = b"\x07" * (256 * 1024)

    async def scenario() -> tuple[bytes, int]:
        source = GatedSource(replacement, pause_at=len(replacement) // 2)
        putting = asyncio.create_task(store.put(key, source, len(replacement)))
        await source.wait_until_paused()
        during = await collect(store.get(key, 0, len(replacement)))
        size_during = (await store.stat(key)).size
        source.release.set()
        await putting
        return during, size_during

    assert asyncio.run(scenario()) == (CONTENT, len(CONTENT))
    assert get(store, key, 0, len(replacement)) == replacement


def test_concurrent_puts_to_one_key_leave_one_whole_object(store: Store) -> None:
    # The slower put pauses after its first 16 KiB reached the backend, the faster
    # one runs from start to end, then the slower one finishes. Whatever the outcome,
    # the object must be one of the two, whole: the later success, or the one that
    # did not fail.
    key = new_object_key()
    slower = b"\x01" * (64 * 1024)
    faster = b"\x02" * (64 * 1024)

    async def scenario() -> bool:
        source = GatedSource(slower, pause_at=16 * 1024)
        putting = asyncio.create_task(store.put(key, source, len(slower)))
        await source.wait_until_paused()
        await store.put(key, io.BytesIO(faster), len(faster))
        source.release.set()
        try:
            await putting
        except StoreError:
            return False
        return True

    slower_succeeded = asyncio.run(scenario())
    expected = slower if slower_succeeded else faster
    assert runs(get(store, key, 0, len(slower))) == runs(expected)


def test_delete_removes_the_object(store: Store) -> None:
    key = new_object_key()
    put(store, key, CONTENT)
    asyncio.run(store.delete(key))

    with pytest.raises(ObjectNotFound):
        asyncio.run(store.stat(key))
    with pytest.raises(ObjectNotFound):
        get(store, key, 0, 1)


def test_delete_of_an_absent_key_is_not_an_error(store: Store) -> None:
    key = new_object_key()
    asyncio.run(store.delete(key))
    put(store, key, CONTENT)
    asyncio.run(store.delete(key))
    asyncio.run(store.delete(key))

    assert keys_listed(store) == set()


def test_delete_leaves_other_objects(store: Store) -> None:
    kept, deleted = new_object_key(), new_object_key()
    put(store, kept, CONTENT)
    put(store, deleted, b"other")
    asyncio.run(store.delete(deleted))

    assert keys_listed(store) == {kept}
    assert get(store, kept, 0, len(CONTENT)) == CONTENT


def test_stat_reports_key_size_and_a_recent_utc_time(store: Store) -> None:
    key = new_object_key()
    put(store, key, CONTENT)
    info = asyncio.run(store.stat(key))

    assert (info.key, info.size) == (key, len(CONTENT))
    now = datetime.datetime.now(datetime.UTC)
    assert info.modified.utcoffset() == datetime.timedelta(0)
    assert abs(now - info.modified) < datetime.timedelta(minutes=5)


def test_stat_of_an_absent_key_raises_object_not_found(store: Store) -> None:
    with pytest.raises(ObjectNotFound):
        asyncio.run(store.stat(new_object_key()))


def test_list_of_an_empty_store_yields_nothing(store: Store) -> None:
    assert keys_listed(store) == set()


def test_list_yields_every_object_put_with_its_size(store: Store) -> None:
    sizes = {new_object_key(): size for size in [0, 1, 10, 1000, 70_000]}
    for key, size in sizes.items():
        put(store, key, bytes(size))

    async def gather() -> dict[str, int]:
        return {info.key: info.size async for info in store.list()}

    assert asyncio.run(gather()) == sizes


INVALID_KEYS = [
    "../etc",
    "ABC",
    "",
    "0123456789ABCDEF0123456789ABCDEF",
    "0" * 31,
    "0" * 33,
    "g" * 32,
    "0" * 32 + "\n",
    "../" + "0" * 29,
    "0" * 15 + "/" + "0" * 16,
]

OPERATIONS: dict[str, Callable[[Store, str], Coroutine[object, None, object]]] = {
    "put": lambda store, key: store.put(key, io.BytesIO(b"x"), 1),
    "get": lambda store, key: collect(store.get(key, 0, 1)),
    "delete": lambda store, key: store.delete(key),
    "stat": lambda store, key: store.stat(key),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("key", INVALID_KEYS)
def test_invalid_key_is_refused(store: Store, operation: str, key: str) -> None:
    with pytest.raises(ValueError, match="object key"):
        asyncio.run(OPERATIONS[operation](store, key))
    assert keys_listed(store) == set()


def test_put_file_stores_the_file_as_put_would(store: Store, tmp_path) -> None:
    source = tmp_path / "finished"
    content = random.Random(4).randbytes(MIB + 5)
    source.write_bytes(content)
    key = new_object_key()

    asyncio.run(store.put_file(key, source, len(content)))

    source.unlink()
    assert asyncio.run(store.stat(key)).size == len(content)
    assert get(store, key, 0, len(content)) == content
