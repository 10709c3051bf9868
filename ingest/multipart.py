"""The `file` part of a multipart upload, streamed into a spool by python-multipart.

python-multipart's parser finds the boundaries and hands over the parts' bytes
without copying whole parts; this module only reads each part's headers (to know
which part is `file` and its file name) and writes that part's bytes to a spool.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ingest.spool import Spool

FILE_FIELD = b"file"


class MalformedMultipart(Exception):
    """The body is not well-formed multipart/form-data, or sends more than one file."""


@dataclass
class SpoolTarget:
    """Where the bytes of the `file` part went, and whether the part ended."""

    spool: Spool | None = None
    complete: bool = False
    file_name: str | None = None


class MultipartReader:
    """Feeds body chunks to the parser; the file part ends up in `target.spool`.

    `feed` raises MalformedMultipart for a broken body, and lets FileTooLarge from
    the spool through as soon as the limit is passed.
    """

    def __init__(
        self, headers: Mapping[str, str], open_spool: Callable[[], Spool]
    ) -> None:
        content_type, options = parse_options_header(headers.get("Content-Type", ""))
        boundary = options.get(b"boundary", b"")
        if content_type != b"multipart/form-data" or not boundary:
            raise MalformedMultipart("not multipart/form-data with a boundary")
        self.target = SpoolTarget()
        self._open_spool = open_spool
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._in_file = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begins,
                "on_header_field": self._header_name_data,
                "on_header_value": self._header_value_data,
                "on_header_end": self._header_ends,
                "on_headers_finished": self._headers_end,
                "on_part_data": self._part_data,
                "on_part_end": self._part_ends,
            },
        )

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError:
            raise MalformedMultipart("malformed multipart body") from None

    @property
    def file_name(self) -> str | None:
        return self.target.file_name

    def close(self) -> None:
        if self.target.spool is not None:
            self.target.spool.discard()

    # The parser's callbacks: `data[start:end]` is the piece each one is given.

    def _part_begins(self) -> None:
        self._disposition = b""
        self._in_file = False

    def _header_name_data(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_ends(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_end(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") != FILE_FIELD:
            return  # other fields are ignored
        if self.target.spool is not None:
            raise MalformedMultipart("send one file per request")
        name = options.get(b"filename")
        try:
            # Browsers and curl send the name as UTF-8.
            self.target.file_name = None if name is None else name.decode()
        except UnicodeDecodeError:
            raise MalformedMultipart(
                "part headers (the file name) are not UTF-8"
            ) from None
        self.target.spool = self._open_spool()
        self._in_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file and self.target.spool is not None:
            self.target.spool.write(data[start:end])

    def _part_ends(self) -> None:
        if self._in_file:
            self.target.complete = True
            self._in_file = False
