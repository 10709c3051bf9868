"""Helpers shared by the storage tests: blocking sources and sync wrappers."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from storage.base import Store

# Long enough for a slow machine, short enough that a stuck test ends on its own.
GATE_TIMEOUT = 10.0


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


def put(store: Store, key: str, content: bytes) -> None:
    asyncio.run(store.put(key, io.BytesIO(content), len(content)))


def get(store: Store, key: str, offset: int = 0, length: int | None = None) -> bytes:
    if length is None:
        length = asyncio.run(store.stat(key)).size - offset
    return asyncio.run(collect(store.get(key, offset, length)))


def descriptors_open_on(path: Path) -> int:
    """How many of this process's file descriptors point at `path` (Linux)."""
    targets = []
    for descriptor in Path("/proc/self/fd").iterdir():
        try:
            targets.append(str(descriptor.readlink()))
        except OSError:
            continue
    return targets.count(str(path))


def keys_listed(store: Store) -> set[str]:
    async def gather() -> set[str]:
        return {info.key async for info in store.list()}

    return asyncio.run(gather())


class GatedSource:
    """A blocking reader that serves `content` up to `pause_at`, then waits there
    until `release` is set. `paused` tells the test it has reached that point, so
    everything before it has been handed to the store."""

    def __init__(self, content: bytes, pause_at: int) -> None:
        self.content = content
        self.pause_at = pause_at
        self.position = 0
        self.paused = threading.Event()
        self.release = threading.Event()
        self.reader_threads: set[int] = set()

    def read(self, size: int = -1, /) -> bytes:
        self.reader_threads.add(threading.get_ident())
        if self.position >= self.pause_at and not self.release.is_set():
            self.paused.set()
            if not self.release.wait(GATE_TIMEOUT):
                raise TimeoutError("the test never released this source")
        limit = len(self.content) if self.release.is_set() else self.pause_at
        available = limit - self.position
        count = available if size < 0 else min(size, available)
        chunk = self.content[self.position : self.position + count]
        self.position += len(chunk)
        return chunk

    async def wait_until_paused(self) -> None:
        if not await asyncio.to_thread(self.paused.wait, GATE_TIMEOUT):
            raise TimeoutError("the store never read up to the pause")


class FailingSource:
    """A blocking reader whose read fails after `good` bytes, like a bad disk."""

    def __init__(self, content: bytes, good: int) -> None:
        self.source = io.BytesIO(content[:good])

    def read(self, size: int = -1, /) -> bytes:
        chunk = self.source.read(size)
        if not chunk:
            raise OSError("input/output error")
        return chunk
