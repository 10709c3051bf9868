"""LocalStore: objects as files under <data dir>/objects, written atomically."""

from __future__ import annotations

import asyncio
import datetime
import errno
import logging
import os
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from pathlib import Path
from typing import Any, TypeVar

from storage.base import (
    READ_CHUNK,
    Buffer,
    ObjectInfo,
    ObjectNotFound,
    Readable,
    Store,
    StoreError,
    Transform,
    check_object_key,
)
from storage.buffers import STREAMS
from storage.mapped import Mapped, Mappings

logger = logging.getLogger(__name__)

T = TypeVar("T")

WRITE_CHUNK = 1024 * 1024
# Object files mapped for streaming, per process (storage.mapped): reads of at
# least MAPPED_FROM bytes (streams; small objects are read whole, once, and kept
# in memory by the handlers), MAPPED_FILES files (each keeps a descriptor open)
# and MAPPED_BYTES bytes at most, streams in flight included.
MAPPED_FROM = 4 * 1024 * 1024
MAPPED_FILES = 64
MAPPED_BYTES = 128 * 1024 * 1024
TEMP_SUFFIX = ".partial"
# Why a hard link into the store may fail where a copy works: another file system,
# or one without hard links.
NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP})


class LocalStore(Store):
    """Objects at `root/ab/abcdef...`: written to a temporary name, fsynced, renamed.

    File IO runs in a small thread pool so a slow disk never stalls the IO loop.
    """

    def __init__(self, root: Path, threads: int = 8) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="local-store")
        self._mappings = Mappings(MAPPED_BYTES, MAPPED_FILES)

    def _path(self, key: str) -> Path:
        check_object_key(key)
        return self.root / key[:2] / key

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        """`function` in a store thread. If we are interrupted (cancelled), the
        thread's work is still waited for: it may be using a descriptor we close,
        or a buffer that goes back to a shared pool."""
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._pool, function, *args)
        try:
            return await asyncio.shield(work)
        except FileNotFoundError:
            raise ObjectNotFound("object not found") from None
        except OSError as error:
            raise StoreError(f"local store: {error.strerror or error}") from error
        except BaseException:
            await asyncio.wait([work])
            raise

    async def put(self, key: str, source: Readable, length: int) -> None:
        await self._run(self._write, self._path(key), source, length)

    async def put_file(self, key: str, path: Path, length: int) -> None:
        await self._run(self._link, self._path(key), path, length)

    def _link(self, path: Path, source: Path, length: int) -> None:
        """Store a finished local file by linking it in: no copy. Falls back to a
        copy across file systems, or when the file is not exactly `length` bytes.

        The name appears complete at once, like a renamed temporary file, and is on
        disk before this returns (a crash in between leaves an object that no
        record names yet, which gc removes)."""
        path.parent.mkdir(exist_ok=True, mode=0o700)
        with open(source, "rb") as handle:
            descriptor = handle.fileno()
            if os.fstat(descriptor).st_size == length and _linked(source, path):
                try:
                    os.fsync(descriptor)
                    _fsync_folder(path.parent)
                except BaseException:
                    path.unlink(missing_ok=True)  # a failed put leaves nothing
                    raise
                _drop_from_cache(descriptor)
                return
            self._write(path, handle, length)

    def _write(self, path: Path, source: Readable, length: int) -> None:
        path.parent.mkdir(exist_ok=True, mode=0o700)
        # A private temporary name: two puts of one key never write the same file.
        temp = path.with_name(f"{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            with open(temp, "wb") as handle:
                remaining = length
                while remaining > 0:
                    chunk = source.read(min(WRITE_CHUNK, remaining))
                    if not chunk:
                        raise OSError(f"source ended {remaining} bytes early")
                    handle.write(chunk)
                    remaining -= len(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            temp.rename(path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_folder(path.parent)

    async def get(
        self,
        key: str,
        offset: int,
        length: int,
        chunk_size: int = READ_CHUNK,
        transform: Transform | None = None,
    ) -> AsyncGenerator[Buffer, None]:
        # Opening can wait on the disk: a thread. Then a large object is read
        # from its mapping, if it has one: each chunk transformed right here when
        # the page cache holds it (no copy, no thread hop, the loop busy well under
        # a millisecond a chunk), in a thread when it would wait on the disk.
        mapped = None
        if (
            transform is not None
            and length >= MAPPED_FROM
            and self._mappings.available()
        ):
            mapped = await self._run(self._open_mapped, self._path(key), key)
        if transform is None or mapped is None:
            async with aclosing(
                self._read(key, offset, length, chunk_size, transform)
            ) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        view = mapped.view()
        try:
            position, end = offset, min(offset + length, mapped.size)
            while position < end:
                size = min(chunk_size, end - position)
                piece = view[position : position + size]
                if mapped.resident(position, size):
                    chunk = transform(piece)
                else:
                    chunk = await self._run(transform, piece)
                del piece
                yield chunk
                position += size
        finally:
            view.release()
            self._mappings.done(mapped)

    def _open_mapped(self, path: Path, key: str) -> Mapped | None:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            return self._mappings.open(key, descriptor)
        finally:
            os.close(descriptor)

    async def _read(
        self,
        key: str,
        offset: int,
        length: int,
        chunk_size: int,
        transform: Transform | None,
    ) -> AsyncGenerator[Buffer, None]:
        """`get` by positioned reads, one thread hop a chunk: for objects that are
        not mapped (empty, too large, or no mincore here)."""
        first = min(chunk_size, length)
        reader = _Reader(first, transform)
        try:
            descriptor, read, chunk = await self._run(
                _open_and_read, self._path(key), offset, first, reader
            )
        except BaseException:
            reader.release()
            raise
        try:
            position, remaining = offset, length
            while read:
                yield chunk
                position += read
                remaining -= read
                if remaining <= 0:
                    return
                read, chunk = await self._run(
                    reader.read, descriptor, min(chunk_size, remaining), position
                )
        finally:
            os.close(descriptor)
            reader.release()

    def release_idle(self) -> None:
        self._mappings.release_idle()

    async def delete(self, key: str) -> None:
        path = self._path(key)
        self._mappings.forget(key)  # so its disk space goes once streams end
        await self._run(path.unlink, True)

    async def stat(self, key: str) -> ObjectInfo:
        result = await self._run(os.stat, self._path(key))
        return _info(key, result)

    async def list(self) -> AsyncIterator[ObjectInfo]:
        # One fan-out folder at a time, so memory stays bounded at millions of objects.
        folders = await self._run(
            lambda: sorted(p for p in self.root.iterdir() if p.is_dir())
        )
        for folder in folders:
            for entry in await self._run(_list_folder, folder):
                yield entry

    async def close(self) -> None:
        self._pool.shutdown(wait=True)


def _info(key: str, result: os.stat_result) -> ObjectInfo:
    modified = datetime.datetime.fromtimestamp(result.st_mtime, datetime.UTC)
    return ObjectInfo(key, result.st_size, modified)


class _Reader:
    """Positioned reads of one object, each passed through the transform."""

    def __init__(self, size: int, transform: Transform | None) -> None:
        self._transform = transform
        self._buffer = STREAMS.take(size) if transform is not None else None

    def read(self, descriptor: int, size: int, position: int) -> tuple[int, Buffer]:
        """Bytes read, and the chunk (transformed, if asked) to yield."""
        if self._buffer is None or self._transform is None:
            chunk = os.pread(descriptor, size, position)
            return len(chunk), chunk
        view = memoryview(self._buffer)[:size]
        read = os.preadv(descriptor, [view], position)
        return read, (self._transform(view[:read]) if read else b"")

    def release(self) -> None:
        """Hand the read buffer back; no read may be in flight."""
        if self._buffer is not None:
            STREAMS.give_back(self._buffer)
            self._buffer = None


def _open_and_read(
    path: Path, offset: int, size: int, reader: _Reader
) -> tuple[int, int, Buffer]:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        return descriptor, *reader.read(descriptor, size, offset)
    except BaseException:
        os.close(descriptor)
        raise


def _list_folder(folder: Path) -> list[ObjectInfo]:
    entries = []
    for path in folder.iterdir():
        if path.name.endswith(TEMP_SUFFIX):
            continue
        try:
            entries.append(_info(path.name, path.stat()))
        except FileNotFoundError:
            continue
    return entries


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _linked(source: Path, path: Path) -> bool:
    try:
        os.link(source, path)
    except OSError as error:
        if error.errno in NO_LINK:
            return False
        raise
    return True


def _drop_from_cache(descriptor: int) -> None:
    """Let the kernel reuse the page cache of a file that is on disk now.

    An upload is written once and read later, if ever: it should not push hotter
    pages out. Reused pages are also much cheaper to write into than fresh ones
    (4-5 times on the VMs measured), so this speeds up the next uploads.
    """
    os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
