"""Range and conditional request headers (RFC 9110), for content that never changes."""

from __future__ import annotations

import datetime
import email.utils
from dataclasses import dataclass


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class Unsatisfiable(Exception):
    """The range starts past the end of the file: answer 416."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range a Range header asks for, or None for the whole file.

    Unknown units, malformed specs and several ranges all mean the whole file (a
    server may ignore Range); a well-formed range that starts past the end raises
    Unsatisfiable.
    """
    if not header:
        return None
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in specs:
        return None
    first, dash, last = specs.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not _digits(first, last):
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable
        return ByteRange(max(size - suffix, 0), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise Unsatisfiable
    end = int(last) if last else size - 1
    return ByteRange(start, min(end, size - 1))


def _digits(first: str, last: str) -> bool:
    if not first and not last:
        return False
    return all(part.isascii() and part.isdigit() for part in (first, last) if part)


def _tags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def _weak(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def none_match(header: str | None, etag: str) -> bool:
    """If-None-Match matches (weak comparison): the client's copy is current."""
    if header is None:
        return False
    tags = _tags(header)
    return "*" in tags or any(_weak(tag) == etag for tag in tags)


def not_modified_since(header: str | None, last_modified: datetime.datetime) -> bool:
    if header is None:
        return False
    since = _http_date(header)
    return since is not None and last_modified.replace(microsecond=0) <= since


def range_still_valid(
    header: str | None, etag: str, last_modified: datetime.datetime
) -> bool:
    """If-Range: serve the range only if the validator still matches (strongly)."""
    if header is None:
        return True
    header = header.strip()
    if header.startswith(('"', "W/")):
        return header == etag
    date = _http_date(header)
    return date is not None and date == last_modified.replace(microsecond=0)


def _http_date(value: str) -> datetime.datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed
