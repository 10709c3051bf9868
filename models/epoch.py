"""The removal epoch: a counter every process on a host sees change at once.

A file record never changes after upload except by going away (delete, takedown),
so a process may keep opened records and small files in memory for as long as no
file is removed anywhere. Whoever removes one bumps this counter, after the database
commit; every server process maps the same small file (`cache-epoch` in the data
folder) and compares the counter before answering from memory. Reading it is a load
from shared memory, with no system call.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from pathlib import Path

FILE_NAME = "cache-epoch"
COUNTER = struct.Struct("<Q")


class Epoch:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE_NAME
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(self._fd).st_size < COUNTER.size:
                # Growing a file only adds zeros, so a second process doing the
                # same at once cannot undo a bump.
                os.ftruncate(self._fd, COUNTER.size)
            self._map = mmap.mmap(self._fd, COUNTER.size)
        except OSError:
            os.close(self._fd)
            raise

    def value(self) -> int:
        value: int = COUNTER.unpack_from(self._map)[0]
        return value

    def bump(self) -> None:
        """Tell every process that a file is gone."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            COUNTER.pack_into(self._map, 0, (self.value() + 1) % 2**64)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if not self._map.closed:
            self._map.close()
            os.close(self._fd)
