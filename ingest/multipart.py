"""The `file` part of a multipart upload, streamed into a spool by streaming-form-data."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from streaming_form_data import StreamingFormDataParser
from streaming_form_data.parser import ParseFailedException
from streaming_form_data.targets import BaseTarget

from ingest.spool import Spool

FILE_FIELD = "file"


class MalformedMultipart(Exception):
    """The body is not well-formed multipart/form-data, or sends more than one file."""


class SpoolTarget(BaseTarget):  # type: ignore[misc]
    """Receives the bytes of the `file` part and writes them to a spool."""

    def __init__(self, open_spool: Callable[[], Spool]) -> None:
        super().__init__()
        self._open_spool = open_spool
        self.spool: Spool | None = None
        self.complete = False

    def on_start(self) -> None:
        if self.spool is not None:
            raise MalformedMultipart("send one file per request")
        self.spool = self._open_spool()

    def on_data_received(self, chunk: bytes) -> None:
        if self.spool is None:
            raise MalformedMultipart("part data before its headers")
        self.spool.write(chunk)

    def on_finish(self) -> None:
        self.complete = True


class MultipartReader:
    """Feeds body chunks to the parser; the file part ends up in `target.spool`.

    `feed` raises MalformedMultipart for a broken body, and lets FileTooLarge from
    the spool through as soon as the limit is passed.
    """

    def __init__(
        self, headers: Mapping[str, str], open_spool: Callable[[], Spool]
    ) -> None:
        try:
            self._parser = StreamingFormDataParser(headers)
        except ParseFailedException as error:
            raise MalformedMultipart(str(error)) from None
        self.target = SpoolTarget(open_spool)
        self._parser.register(FILE_FIELD, self.target)

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.data_received(chunk)
        except ParseFailedException:
            raise MalformedMultipart("malformed multipart body") from None
        except UnicodeDecodeError:
            # The parser reads part headers as UTF-8, as browsers and curl send them.
            raise MalformedMultipart(
                "part headers (the file name) are not UTF-8"
            ) from None

    @property
    def file_name(self) -> str | None:
        name: str | None = self.target.multipart_filename
        return name

    def close(self) -> None:
        if self.target.spool is not None:
            self.target.spool.discard()
