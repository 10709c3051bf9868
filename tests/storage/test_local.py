"""LocalStore on disk: file layout, permissions, and what a failed put leaves."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest

from storage.base import Buffer, ObjectNotFound, StoreError, new_object_key
from storage.local import TEMP_SUFFIX, LocalStore
from storage.mapped import Mapped, Mappings
from tests.storage.support import (
    GatedSource,
    descriptors_open_on,
    get,
    keys_listed,
    put,
)

CONTENT = b"local store content\n" * 50


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def test_object_is_a_file_in_its_fan_out_folder(local_store: LocalStore) -> None:
    key = new_object_key()
    put(local_store, key, CONTENT)

    path = local_store.root / key[:2] / key
    assert files_under(local_store.root) == [path]
    assert path.read_bytes() == CONTENT


def test_store_folders_are_private(local_store: LocalStore) -> None:
    key = new_object_key()
    put(local_store, key, CONTENT)

    assert stat.S_IMODE(local_store.root.stat().st_mode) == 0o700
    assert stat.S_IMODE((local_store.root / key[:2]).stat().st_mode) == 0o700


@pytest.mark.parametrize("short_by", [1, len(CONTENT)])
def test_failed_put_leaves_no_partial_file(
    local_store: LocalStore, short_by: int
) -> None:
    source = io.BytesIO(CONTENT[: len(CONTENT) - short_by])
    with pytest.raises(StoreError, match="early"):
        asyncio.run(local_store.put(new_object_key(), source, len(CONTENT)))

    assert files_under(local_store.root) == []


def test_put_in_progress_is_a_partial_file_that_list_skips(
    local_store: LocalStore,
) -> None:
    key = new_object_key()

    async def scenario() -> tuple[list[Path], set[str]]:
        source = GatedSource(CONTENT, pause_at=len(CONTENT) // 2)
        putting = asyncio.create_task(local_store.put(key, source, len(CONTENT)))
        await source.wait_until_paused()
        on_disk = files_under(local_store.root)
        listed = {info.key async for info in local_store.list()}
        source.release.set()
        await putting
        return on_disk, listed

    on_disk, listed = asyncio.run(scenario())
    assert [path.parent for path in on_disk] == [local_store.root / key[:2]]
    assert on_disk[0].name.startswith(key)
    assert on_disk[0].name.endswith(TEMP_SUFFIX)
    assert listed == set()
    assert files_under(local_store.root) == [local_store.root / key[:2] / key]


def test_key_that_walks_out_of_the_root_writes_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    key = "../" + "0" * 29
    try:
        with pytest.raises(ValueError, match="object key"):
            asyncio.run(store.put(key, io.BytesIO(CONTENT), len(CONTENT)))
    finally:
        asyncio.run(store.close())

    assert files_under(tmp_path) == []


def test_object_removed_from_disk_reads_as_not_found(local_store: LocalStore) -> None:
    key = new_object_key()
    put(local_store, key, CONTENT)
    (local_store.root / key[:2] / key).unlink()

    with pytest.raises(ObjectNotFound):
        asyncio.run(local_store.stat(key))
    assert keys_listed(local_store) == set()


def test_abandoned_get_closes_its_file(local_store: LocalStore) -> None:
    key = new_object_key()
    put(local_store, key, bytes(600_000))
    path = local_store.root / key[:2] / key

    async def scenario() -> tuple[int, int, int]:
        chunks = local_store.get(key, 0, 600_000)
        first = await anext(chunks)
        during = descriptors_open_on(path)
        await chunks.aclose()
        return len(first), during, descriptors_open_on(path)

    first_length, during, after = asyncio.run(scenario())
    assert 0 < first_length < 600_000
    assert (during, after) == (1, 0)


def test_put_file_links_the_finished_file_in_without_a_copy(
    local_store: LocalStore, tmp_path: Path
) -> None:
    source = tmp_path / "spooled"
    source.write_bytes(CONTENT)
    key = new_object_key()

    asyncio.run(local_store.put_file(key, source, len(CONTENT)))

    path = local_store.root / key[:2] / key
    assert files_under(local_store.root) == [path]
    assert path.stat().st_ino == source.stat().st_ino
    source.unlink()
    assert get(local_store, key) == CONTENT


def test_put_file_copies_across_file_systems(tmp_path: Path) -> None:
    # /dev/shm is a tmpfs on Linux: another file system than the test's folder.
    shared_memory = Path("/dev/shm")
    if not shared_memory.is_dir() or (
        shared_memory.stat().st_dev == tmp_path.stat().st_dev
    ):
        pytest.skip("needs a second file system at /dev/shm")
    store = LocalStore(tmp_path / "objects")
    key = new_object_key()
    with tempfile.NamedTemporaryFile(dir=shared_memory) as source:
        source.write(CONTENT)
        source.flush()
        asyncio.run(store.put_file(key, Path(source.name), len(CONTENT)))
        inode = Path(source.name).stat().st_ino
    asyncio.run(store.close())

    path = store.root / key[:2] / key
    assert files_under(store.root) == [path]
    assert path.stat().st_ino != inode
    assert path.read_bytes() == CONTENT


def test_put_file_stores_only_the_length_asked_for(
    local_store: LocalStore, tmp_path: Path
) -> None:
    source = tmp_path / "longer"
    source.write_bytes(CONTENT + b"tail")
    key = new_object_key()

    asyncio.run(local_store.put_file(key, source, len(CONTENT)))

    assert get(local_store, key) == CONTENT
    assert (local_store.root / key[:2] / key).stat().st_ino != source.stat().st_ino


def test_put_file_of_a_short_file_fails_and_leaves_nothing(
    local_store: LocalStore, tmp_path: Path
) -> None:
    source = tmp_path / "short"
    source.write_bytes(CONTENT)

    with pytest.raises(StoreError, match="early"):
        asyncio.run(local_store.put_file(new_object_key(), source, len(CONTENT) + 1))

    assert files_under(local_store.root) == []


def read_recording_threads(
    store: LocalStore, key: str, length: int, chunk_size: int
) -> tuple[bytes, list[str]]:
    """The object's bytes through a transform, and the thread each chunk ran in."""
    threads: list[str] = []

    def transform(chunk: Buffer) -> bytes:
        threads.append(threading.current_thread().name)
        return bytes(chunk)

    async def scenario() -> bytes:
        parts = store.get(key, 0, length, chunk_size=chunk_size, transform=transform)
        return b"".join([part async for part in parts])

    return asyncio.run(scenario()), threads


def test_hot_streams_run_on_the_loop_and_cold_ones_in_a_thread(
    local_store: LocalStore,
) -> None:
    key = new_object_key()
    content = bytes(range(256)) * (24 * 1024)  # 6 MiB: streamed from a mapping
    put(local_store, key, content)
    path = local_store.root / key[:2] / key
    path.read_bytes()  # in the page cache
    read_recording_threads(local_store, key, len(content), 1 << 20)  # asked once

    hot, hot_threads = read_recording_threads(local_store, key, len(content), 1 << 20)
    local_store.release_idle()
    local_store.release_idle()  # unused for a round: unmapped (still "asked for")
    with path.open("rb") as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    cold, cold_threads = read_recording_threads(local_store, key, len(content), 1 << 20)

    assert hot == cold == content
    assert len(hot_threads) == 6
    assert not any(name.startswith("local-store") for name in hot_threads)
    # The kernel reads ahead of the first (thread) read, so later chunks may be hot.
    assert cold_threads[0].startswith("local-store")


def fresh_file(folder: Path, content: bytes) -> Path:
    path = folder / new_object_key()
    path.write_bytes(content)
    with path.open("rb") as handle:
        os.fsync(handle.fileno())
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return path


def test_a_mapping_tells_which_ranges_the_page_cache_holds(tmp_path: Path) -> None:
    content = bytes(range(256)) * 8192  # 2 MiB
    path = fresh_file(tmp_path, content)
    mappings = Mappings(max_bytes=1 << 30, max_files=8)
    with path.open("rb") as handle:
        assert mappings.open(path.name, handle.fileno()) is None  # the first time
        mapped = mappings.open(path.name, handle.fileno())
        assert mapped is not None
        cold = mapped.resident(0, len(content))
        os.pread(handle.fileno(), 4096 * 3, 4096)  # pages 1 to 3, nothing more
        os.posix_fadvise(handle.fileno(), 8192 * 2, 0, os.POSIX_FADV_DONTNEED)

    assert not cold
    assert mapped.resident(4096, 4096 * 3)
    assert mapped.resident(5000, 100)  # inside page 1
    assert not mapped.resident(0, len(content))
    assert bytes(mapped.view()) == content


def test_objects_are_mapped_from_the_second_stream_on(
    local_store: LocalStore,
) -> None:
    contents = [bytes([index]) * (5 << 20) for index in range(3)]
    keys = [new_object_key() for _ in contents]
    for key, content in zip(keys, contents, strict=True):
        put(local_store, key, content)

    for key, content in zip(keys, contents, strict=True):
        assert read_recording_threads(local_store, key, len(content), 1 << 20)[0] == (
            content
        )
    assert local_store._mappings.mapped_bytes == 0  # each asked for once
    for key, content in zip(keys, contents, strict=True):
        assert read_recording_threads(local_store, key, len(content), 1 << 20)[0] == (
            content
        )
    assert local_store._mappings.mapped_bytes == 3 * (5 << 20)


def test_mappings_are_bounded_streams_included_and_let_go(tmp_path: Path) -> None:
    mappings = Mappings(max_bytes=3 * 4096, max_files=2)
    paths = [fresh_file(tmp_path, bytes([index]) * 4096) for index in range(3)]

    def open_one(path: Path) -> Mapped | None:
        with path.open("rb") as handle:
            return mappings.open(path.name, handle.fileno())

    def opened_and_done(path: Path) -> Mapped | None:
        mapped = open_one(path)
        if mapped is not None:
            mappings.done(mapped)
        return mapped

    assert [opened_and_done(path) for path in paths] == [None, None, None]
    first = opened_and_done(paths[0])
    assert first is not None and bytes(first.view()) == bytes(4096)
    assert opened_and_done(paths[0]) is first  # the same file: reused
    opened_and_done(paths[1])
    opened_and_done(paths[2])  # a third file: the least recently used idle one goes
    assert mappings.mapped_bytes == 2 * 4096
    assert opened_and_done(paths[0]) is not first

    # Two streams in flight hold both places: nothing more is mapped.
    reading = [open_one(paths[0]), open_one(paths[2])]
    assert all(reading)
    assert open_one(paths[1]) is None
    for mapped in reading:
        assert mapped is not None
        mappings.done(mapped)

    # The same key, a new file (renamed over it): mapped anew.
    paths[2].with_name("new").write_bytes(b"x" * 4096)
    paths[2].with_name("new").rename(paths[2])
    replaced = opened_and_done(paths[2])
    assert replaced is not None and bytes(replaced.view()) == b"x" * 4096

    mappings.forget(paths[0].name)
    assert mappings.mapped_bytes == 4096
    mappings.release_idle()  # used this round: kept
    assert mappings.mapped_bytes == 4096
    mappings.release_idle()
    assert mappings.mapped_bytes == 0
    empty = tmp_path / "empty"
    empty.touch()
    open_one(empty)
    assert open_one(empty) is None  # asked for again, but nothing to map


def test_a_deleted_object_is_unmapped_so_its_space_is_freed(
    local_store: LocalStore,
) -> None:
    key = new_object_key()
    content = bytes(range(256)) * (20 * 1024)  # 5 MiB
    put(local_store, key, content)
    path = local_store.root / key[:2] / key
    for _ in range(2):  # mapped from the second stream on
        read_recording_threads(local_store, key, len(content), 1 << 20)
    assert descriptors_open_on(path) == 1  # the mapping's own
    assert local_store._mappings.mapped_bytes == len(content)

    asyncio.run(local_store.delete(key))

    assert local_store._mappings.mapped_bytes == 0
    assert descriptors_open_on(Path(f"{path} (deleted)")) == 0
    assert not path.exists()


def test_a_cancelled_store_call_ends_only_after_its_thread_work(
    local_store: LocalStore,
) -> None:
    # The thread may be reading into a pooled buffer or through a descriptor that
    # the caller's cleanup hands back or closes.
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.3)
        finished.set()

    async def scenario() -> bool:
        task = asyncio.ensure_future(local_store._run(slow))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return finished.is_set()

    assert asyncio.run(scenario())
