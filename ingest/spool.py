"""Spool: the local temporary file an upload streams into, counted and hashed."""

from __future__ import annotations

import hmac
import os
import tempfile
from pathlib import Path

HEAD_SIZE = 8192


class FileTooLarge(Exception):
    """More bytes arrived than the size limit allows."""


class Spool:
    """Writes an upload to a private temporary file while counting and hashing it.

    Keeps the first HEAD_SIZE bytes for MIME detection. `discard()` removes the file;
    it is safe to call on every path, any number of times.
    """

    def __init__(self, folder: Path, limit: int, fingerprinter: hmac.HMAC) -> None:
        self.limit = limit
        self.size = 0
        self.head = bytearray()
        self._hash = fingerprinter
        descriptor, name = tempfile.mkstemp(
            prefix="imgyx-", suffix=".spool", dir=folder
        )
        self.path = Path(name)
        self._handle = os.fdopen(descriptor, "wb")

    def write(self, chunk: bytes) -> None:
        if self.size + len(chunk) > self.limit:
            raise FileTooLarge(f"larger than {self.limit} bytes")
        self.size += len(chunk)
        if len(self.head) < HEAD_SIZE:
            self.head += chunk[: HEAD_SIZE - len(self.head)]
        self._hash.update(chunk)
        self._handle.write(chunk)

    def finish(self) -> str:
        """Close the file for writing; returns the content's fingerprint (hex)."""
        self._handle.close()
        return self._hash.hexdigest()

    def discard(self) -> None:
        if not self._handle.closed:
            self._handle.close()
        self.path.unlink(missing_ok=True)
