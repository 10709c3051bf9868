"""GET and HEAD /ID: the raw file, decrypted and streamed with flow control."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from urllib.parse import quote

from handlers.base import BaseHandler, not_found
from models import files as catalog
from models.records import FileView, open_record
from storage import IntegrityError, StoreError

logger = logging.getLogger(__name__)

ID_PATTERN = r"[A-Za-z0-9]{5,16}"
RAW_ROUTE = rf"/({ID_PATTERN})(?:\.[A-Za-z0-9]{{1,12}})?"

# Types a browser may render in our origin when asked to show a file inline.
INLINE_BY_DEFAULT = re.compile(
    r"\A(image/(png|jpeg|gif|webp|bmp|avif|x-icon|vnd\.microsoft\.icon|tiff)"
    r"|application/pdf)\Z"
)
# Types that run code or markup when rendered: never served as themselves.
ACTIVE = re.compile(
    r"\A(text/html|application/xhtml\+xml|image/svg\+xml|text/xml|application/xml"
    r"|.*\+xml|.*javascript|.*ecmascript|text/css|application/x-shockwave-flash"
    r"|text/x-.*script|application/wasm|text/vtt)\Z"
)
SANDBOX_POLICY = (
    "sandbox; default-src 'none'; img-src 'self' data:; media-src 'self'; "
    "style-src 'unsafe-inline'; object-src 'self'; frame-ancestors *"
)


def content_disposition(inline: bool, name: str) -> str:
    """RFC 6266 with an ASCII fallback and an RFC 5987 UTF-8 name."""
    kind = "inline" if inline else "attachment"
    fallback = "".join(
        char if 32 <= ord(char) < 127 and char not in '"\\' else "_" for char in name
    )
    encoded = quote(name, safe="!#$&+-.^_`|~")
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def served_type(mimetype: str, inline: bool) -> str:
    """The Content-Type we send: active types only ever as plain text or bytes."""
    if ACTIVE.match(mimetype):
        return "text/plain; charset=utf-8" if inline else "application/octet-stream"
    if mimetype.startswith("text/"):
        return f"{mimetype}; charset=utf-8"
    return mimetype


class RawFileHandler(BaseHandler):
    async def head(self, file_id: str) -> None:
        await self._serve(file_id, body=False)

    async def get(self, file_id: str) -> None:
        await self._serve(file_id, body=True)

    async def _serve(self, file_id: str, body: bool) -> None:
        record = await self.services.database.run(catalog.find, file_id)
        if record is None:
            raise not_found()
        file = open_record(record, self.services.store)
        inline = "inline" in self.request.arguments or bool(
            INLINE_BY_DEFAULT.match(file.mimetype)
        )
        self.set_header("Content-Type", served_type(file.mimetype, inline))
        self.set_header("Content-Length", str(file.size))
        self.set_header("Content-Disposition", content_disposition(inline, file.name))
        self.set_header("Content-Security-Policy", SANDBOX_POLICY)
        self.set_header("Cross-Origin-Resource-Policy", "cross-origin")
        self.set_header("Cache-Control", "public, max-age=31536000, immutable")
        if not body or file.size == 0:
            return
        await self._stream(file)

    async def _stream(self, file: FileView) -> None:
        async with aclosing(
            self.services.store.read(file.sealed, 0, file.size - 1)
        ) as chunks:
            # The first segment is read and authenticated before any header goes out,
            # so a missing or corrupt object answers an error status, not a short 200.
            first = await anext(chunks)
            self.services.views.add(file.id)
            self._send(first)
            await self.flush()
            await self._stream_rest(file, chunks)

    async def _stream_rest(self, file: FileView, chunks: AsyncIterator[bytes]) -> None:
        try:
            async for chunk in chunks:
                self._send(chunk)
                await self.flush()
        except (StoreError, IntegrityError) as error:
            # Headers are out: all we can do is cut the connection, so the client sees
            # a short body instead of unauthenticated bytes.
            logger.error("file %s failed while streaming: %s", file.id, error)
            self.request.connection.close()  # type: ignore[union-attr]

    def _send(self, chunk: bytes) -> None:
        self.bytes_sent += len(chunk)
        super(BaseHandler, self).write(chunk)
