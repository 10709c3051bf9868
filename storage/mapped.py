"""Object files mapped into memory, so a hot object is decrypted straight from the
page cache, with no copy into a read buffer first.

Copying a sealed chunk out of the page cache was a quarter of a download's CPU
(`_copy_to_iter` in perf). A mapping skips that copy, but it only pays once its
pages are mapped in: a mapping made per request faults every page in again and
saves nothing, so mappings are kept (per process, bounded, dropped once idle) and
shared by the streams of the same object.

Two rules keep it safe:

- `resident()` tells whether the page cache holds a range (mincore), so the loop
  only touches pages that cannot wait on the disk; other ranges go to a thread.
- Only objects asked for again are mapped, and no more than the bound, streams in
  flight included: mapped pages count in the process's memory (RSS and PSS), so
  twenty different files downloaded once each are read the plain way, not mapped.
- Objects are immutable: written under a temporary name and renamed, or linked,
  never changed in place. A mapping is checked against the file (device, inode,
  size) whenever a stream starts. A file truncated in place by someone else while
  it is mapped would end the process with SIGBUS; nothing of ours does that.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

PAGE = mmap.PAGESIZE
# mincore sets the low bit of each page's byte; the others are reserved.
_LOW_BIT = bytes(value & 1 for value in range(256))


class _PyBuffer(ctypes.Structure):
    """CPython's Py_buffer (stable since 3.11), to learn where a mapping starts."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        libc.mincore.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    get_buffer = ctypes.pythonapi.PyObject_GetBuffer
    get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
    get_buffer.restype = ctypes.c_int
    release = ctypes.pythonapi.PyBuffer_Release
    release.argtypes = [ctypes.POINTER(_PyBuffer)]
    release.restype = None
    return libc


_LIBC = _libc()


def _address(mapping: mmap.mmap) -> int:
    view = _PyBuffer()
    if ctypes.pythonapi.PyObject_GetBuffer(mapping, ctypes.byref(view), 0) != 0:
        raise OSError("no buffer")
    try:
        return int(view.buf or 0)
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))


@dataclass
class Mapped:
    """One object file, mapped read-only."""

    identity: tuple[int, int, int]  # device, inode, size
    mapping: mmap.mmap
    address: int
    used: bool = True
    streams: int = 1  # streams reading it now

    @property
    def size(self) -> int:
        return self.identity[2]

    def view(self) -> memoryview:
        """A view of the whole object; the mapping lives while any view does."""
        return memoryview(self.mapping)

    def resident(self, start: int, length: int) -> bool:
        """Whether every page of bytes start..start+length-1 is in the page cache."""
        if _LIBC is None or length <= 0:
            return False
        first = start - start % PAGE
        span = start + length - first
        pages = -(-span // PAGE)
        vector = ctypes.create_string_buffer(pages)
        if _LIBC.mincore(self.address + first, span, vector) != 0:
            return False
        return b"\x00" not in vector.raw[:pages].translate(_LOW_BIT)


class Mappings:
    """Mappings of the objects streamed lately: at most `max_files` of them, and
    `max_bytes` in all, those streams still read included (each mapping keeps a
    descriptor of its file open).

    Thread-safe. Each stream that `open` gave a mapping calls `done` with it. An
    idle mapping (no stream reading it) leaves the table when it is the least
    recently used one and room is needed, when a housekeeping round passes
    without a stream of it, or when its object is deleted here; it is unmapped
    once the last view of it goes.
    """

    SEEN = 4096  # keys remembered as asked for once

    def __init__(self, max_bytes: int, max_files: int) -> None:
        self._max_bytes = max_bytes
        self._max_files = max_files
        self._table: OrderedDict[str, Mapped] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def available() -> bool:
        return _LIBC is not None

    def open(self, key: str, descriptor: int) -> Mapped | None:
        """The mapping of the open object file, made or reused (blocking: call it
        off the loop). None when the object is not worth mapping or there is no
        room: empty, asked for the first time lately, or larger than the room
        that idle mappings can make."""
        status = os.fstat(descriptor)
        identity = (status.st_dev, status.st_ino, status.st_size)
        size = status.st_size
        with self._lock:
            known = self._table.get(key)
            if known is not None and known.identity == identity:
                known.used = True
                known.streams += 1
                self._table.move_to_end(key)
                return known
            if key not in self._seen:
                self._seen[key] = None
                if len(self._seen) > self.SEEN:
                    self._seen.popitem(last=False)
                return None
            if size <= 0 or not self._make_room(key, size):
                return None
            # Mapping is quick (no IO: pages come in as they are touched).
            mapping = mmap.mmap(descriptor, size, access=mmap.ACCESS_READ)
            made = Mapped(identity, mapping, _address(mapping))
            self._table[key] = made
            self._bytes += size
            return made

    def done(self, mapped: Mapped) -> None:
        """A stream that `open` gave `mapped` no longer reads it."""
        with self._lock:
            mapped.streams -= 1

    def forget(self, key: str) -> None:
        with self._lock:
            self._drop(key)
            self._seen.pop(key, None)

    def release_idle(self) -> None:
        """Drop the idle mappings no stream opened since the last call."""
        with self._lock:
            for key, known in list(self._table.items()):
                if not known.used and not known.streams:
                    self._drop(key)
            for known in self._table.values():
                known.used = False

    @property
    def mapped_bytes(self) -> int:
        return self._bytes

    def _make_room(self, key: str, size: int) -> bool:
        """Drop idle mappings, least recently used first, until `size` more bytes
        and one more file fit; False if they cannot."""
        self._drop(key)  # a stale mapping of a file since replaced
        for idle in [k for k, known in self._table.items() if not known.streams]:
            if self._fits(size):
                break
            self._drop(idle)
        return self._fits(size)

    def _fits(self, size: int) -> bool:
        return (
            self._bytes + size <= self._max_bytes and len(self._table) < self._max_files
        )

    def _drop(self, key: str) -> None:
        known = self._table.pop(key, None)
        if known is not None:
            self._bytes -= known.size
