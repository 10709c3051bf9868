"""GET and HEAD /ID: the raw file, decrypted and streamed with flow control, with
Range, conditional requests and caching as a static file server does them."""

from __future__ import annotations

import datetime
import email.utils
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from urllib.parse import urlsplit

from tornado import httputil, iostream

from handlers import conditional
from handlers.base import ApiError, BaseHandler
from handlers.content import SANDBOX_POLICY, content_disposition, delivery
from models.records import FileView
from storage import IntegrityError, StoreError
from storage.base import Buffer
from storage.crypto import SEALED_SEGMENT_SIZE, SEGMENT_SIZE

logger = logging.getLogger(__name__)

ID_PATTERN = r"[A-Za-z0-9]{5,16}"
RAW_ROUTE = rf"/({ID_PATTERN})(?:\.[A-Za-z0-9]{{1,12}})?"


def http_date(moment: datetime.datetime) -> str:
    return email.utils.format_datetime(moment.astimezone(datetime.UTC), usegmt=True)


class StoredContentHandler(BaseHandler):
    """Headers shared by everything served from the store (raw files, thumbnails)."""

    def set_stored_headers(self, etag: str) -> None:
        max_age = self.services.settings.cache_max_age
        self.set_header("Content-Security-Policy", SANDBOX_POLICY)
        self.set_header("Cross-Origin-Resource-Policy", "cross-origin")
        self.set_header("Cache-Control", f"public, max-age={max_age}, immutable")
        self.set_header("ETag", etag)


class ThumbnailHandler(StoredContentHandler):
    """GET /t/ID: the thumbnail of an image, where one was made."""

    async def get(self, file_id: str) -> None:
        entry, token = await self.cached_file(file_id)
        file = entry.file
        if file.thumbnail is None:
            raise ApiError(404, "NOT_FOUND", "This file has no thumbnail.")
        etag = self.services.keys.etag(file.fingerprint + "/thumbnail")
        self.set_header("Content-Type", file.thumbnail_type or "image/jpeg")
        self.set_stored_headers(etag)
        if conditional.none_match(self.request.headers.get("If-None-Match"), etag):
            self.set_status(304)
            return
        data = entry.thumbnail
        if data is None:
            data = await self.services.store.read_all(file.thumbnail)
            self.services.cache.keep_thumbnail(entry, data, token)
        self.bytes_sent += len(data)
        super(BaseHandler, self).write(data)


class RawFileHandler(StoredContentHandler):
    async def head(self, file_id: str) -> None:
        await self._serve(file_id, body=False)

    async def get(self, file_id: str) -> None:
        await self._serve(file_id, body=True)

    async def _serve(self, file_id: str, body: bool) -> None:
        if self._redirect_to_content_origin():
            return
        entry, token = await self.cached_file(file_id)
        file = entry.file
        self._set_file_headers(file, entry.etag)

        headers = self.request.headers
        if conditional.none_match(headers.get("If-None-Match"), entry.etag) or (
            "If-None-Match" not in headers
            and conditional.not_modified_since(
                headers.get("If-Modified-Since"), file.created_at
            )
        ):
            self.set_status(304)
            return

        wanted = self._requested_range(file, entry.etag)
        whole = wanted is None
        if wanted is None:
            wanted = conditional.ByteRange(0, file.size - 1)
        else:
            self.set_status(206)
            self.set_header(
                "Content-Range", f"bytes {wanted.start}-{wanted.end}/{file.size}"
            )
        self.set_header("Content-Length", str(max(wanted.length, 0)))
        if whole and not self.request.query and entry.headers is None:
            # What the fast path (handlers.fast) answers plain requests with.
            entry.headers = httputil.HTTPHeaders(self._headers)
        if not body or file.size == 0:
            return
        cache = self.services.cache
        data = entry.body
        if data is None and file.size <= cache.max_item:
            # A small file is read and authenticated whole, then kept.
            data = await self.services.store.read_all(file.sealed)
            cache.keep_body(entry, data, token)
        if data is None:
            await self._stream(file, wanted)
            return
        if wanted.start == 0:
            self.services.views.add(file.id)
        self._send(data[wanted.start : wanted.end + 1])

    def _redirect_to_content_origin(self) -> bool:
        """With IMGYX_CONTENT_URL set, raw files are only served on that origin."""
        content_url = self.services.settings.content_url
        if not content_url or self.request.host == urlsplit(content_url).netloc:
            return False
        self.redirect(content_url + (self.request.uri or "/"), permanent=False)
        return True

    def _set_file_headers(self, file: FileView, etag: str) -> None:
        how = delivery(file.mimetype, "inline" in self.request.arguments)
        self.set_header("Content-Type", how.content_type)
        self.set_header(
            "Content-Disposition", content_disposition(how.inline, file.name)
        )
        self.set_stored_headers(etag)
        self.set_header("Accept-Ranges", "bytes")
        self.set_header("Last-Modified", http_date(file.created_at))

    def _requested_range(
        self, file: FileView, etag: str
    ) -> conditional.ByteRange | None:
        headers = self.request.headers
        if not conditional.range_still_valid(
            headers.get("If-Range"), etag, file.created_at
        ):
            return None
        try:
            return conditional.parse_range(headers.get("Range"), file.size)
        except conditional.Unsatisfiable:
            raise ApiError(
                416,
                "RANGE_NOT_SATISFIABLE",
                f"The file has {file.size} bytes.",
                {"Content-Range": f"bytes */{file.size}"},
            ) from None

    async def _stream(self, file: FileView, wanted: conditional.ByteRange) -> None:
        global _streaming
        _streaming += 1
        try:
            reader = self.services.store.read(
                file.sealed,
                wanted.start,
                wanted.end,
                stream_chunk_size(_streaming),
                reuse_buffers=True,  # _pipe sends a chunk before asking for more
            )
            async with aclosing(reader) as chunks:
                # The first chunk is read and authenticated before any header goes
                # out, so a missing or corrupt object answers an error status, not a
                # short 200.
                first = await anext(chunks)
                if wanted.start == 0:
                    self.services.views.add(file.id)
                self.flush()  # the headers; the body goes straight to the connection
                await self._pipe(file, first, chunks)
        finally:
            _streaming -= 1

    async def _pipe(
        self, file: FileView, first: Buffer, chunks: AsyncIterator[Buffer]
    ) -> None:
        """Send the chunks, each one once the one before it is sent: the store
        reuses its buffers, two chunks per client (and may read the next chunk
        ahead meanwhile, as the S3 store does)."""
        connection = self.request.connection
        assert connection is not None
        try:
            await self._write(connection, first)
            async for chunk in chunks:
                await self._write(connection, chunk)
        except iostream.StreamClosedError:
            return  # the client went away: a cancelled download is not an error
        except (StoreError, IntegrityError) as error:
            # Headers are out: all we can do is cut the connection, so the client sees
            # a short body instead of unauthenticated bytes.
            logger.error("file %s failed while streaming: %s", file.id, error)
            connection.close()  # type: ignore[attr-defined]

    async def _write(self, connection: httputil.HTTPConnection, chunk: Buffer) -> None:
        self.bytes_sent += len(chunk)
        # Tornado's connection takes any buffer; waiting for the write is the flow
        # control.
        await connection.write(chunk)  # type: ignore[arg-type]

    def _send(self, chunk: bytes) -> None:
        self.bytes_sent += len(chunk)
        super(BaseHandler, self).write(chunk)


# Streams this process is sending, which share STREAM_MEMORY between them: each
# holds three chunks at most (one being sent, one being decrypted, one read).
_streaming = 0
STREAM_MEMORY = 3 * 1024 * 1024
SMALLEST_CHUNK = 2 * SEALED_SEGMENT_SIZE
LARGEST_CHUNK = 16 * SEALED_SEGMENT_SIZE


def stream_chunk_size(streams: int) -> int:
    """Bytes to read and decrypt at a time: large chunks (fewer trips between the
    loop and the store threads) when few clients download, small when many do, so
    memory follows the number of clients, not the file size. A power of two of
    segments, so streams of any size share the same few buffer sizes."""
    share = STREAM_MEMORY // (3 * max(streams, 1))
    segments = LARGEST_CHUNK // SEALED_SEGMENT_SIZE
    while segments > SMALLEST_CHUNK // SEALED_SEGMENT_SIZE and (
        segments * SEGMENT_SIZE > share
    ):
        segments //= 2
    return segments * SEALED_SEGMENT_SIZE
