"""Large byte buffers kept for reuse while transfers need them.

A fresh buffer of a few hundred KiB comes from mmap: the kernel hands out zeroed
pages and faults each one in on first touch, then takes them back when the buffer
is freed. Streams and spools that reuse buffers skip all of that. What is kept is
bounded, and dropped once a housekeeping round passes without anyone taking one, so
a worker's footprint follows the transfers in flight, not past bursts.
"""

from __future__ import annotations

import threading


class BufferPool:
    """Free buffers by size, at most `keep_bytes` of them. Thread-safe."""

    def __init__(self, keep_bytes: int) -> None:
        self._keep_bytes = keep_bytes
        self._free: dict[int, list[bytearray]] = {}
        self._kept = 0
        self._lock = threading.Lock()
        self._taken = False

    def take(self, size: int) -> bytearray:
        """A buffer of exactly `size` bytes, with any content."""
        with self._lock:
            self._taken = True
            free = self._free.get(size)
            if free:
                self._kept -= size
                return free.pop()
        return bytearray(size)

    def give_back(self, buffer: bytearray) -> None:
        """Keep `buffer` for a later `take`; nothing may use it afterwards."""
        size = len(buffer)
        with self._lock:
            if self._kept + size <= self._keep_bytes:
                self._free.setdefault(size, []).append(buffer)
                self._kept += size

    def release_if_idle(self) -> None:
        """Drop the kept buffers if none was taken since the last call."""
        with self._lock:
            if not self._taken:
                self._free.clear()
                self._kept = 0
            self._taken = False

    @property
    def kept_bytes(self) -> int:
        return self._kept


# Buffers of downloads in this process: a stream's read buffer and its two output
# buffers. Enough to keep those of one stream at full chunk size, or of a few small.
STREAMS = BufferPool(keep_bytes=4 * 1024 * 1024)
