"""POST /api/upload: a multipart file streamed to a spool, or a JSON remote URL."""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from tornado import web
from tornado.http1connection import HTTP1Connection

import metrics
from config import Settings
from handlers.base import ApiError, BaseHandler, raw_url, thumbnail_url
from handlers.clients import client_address, client_key
from ingest import Blocked, Stored
from ingest.fetch import FetchFailed, InvalidUrl
from ingest.multipart import MalformedMultipart, MultipartReader
from ingest.names import sanitise
from ingest.spool import FileTooLarge, Spool
from models import ratelimit

logger = logging.getLogger(__name__)

# Room for the multipart boundaries and part headers around the file's bytes.
MULTIPART_ALLOWANCE = 64 * 1024
JSON_LIMIT = 64 * 1024


def body_kind(content_type: str | None) -> str | None:
    essence = (content_type or "").split(";", 1)[0].strip().lower()
    if essence == "multipart/form-data":
        return "multipart"
    if essence == "application/json":
        return "json"
    return None


def upload_body(stored: Stored, settings: Settings) -> dict[str, Any]:
    file = stored.file
    body = {
        "id": file.id,
        "url": raw_url(settings, file.id),
        "preview_url": f"/p/{file.id}",
        "file_name": file.name,
        "size": file.size,
        "mimetype": file.mimetype,
        "created_at": file.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "thumbnail_url": thumbnail_url(settings, file),
        "duplicate": not stored.created,
    }
    if stored.delete_token is not None:
        body["delete_token"] = stored.delete_token
    return body


def too_large(limit: int) -> ApiError:
    return ApiError(413, "FILE_TOO_LARGE", f"The file is larger than {limit} bytes.")


@web.stream_request_body
class UploadHandler(BaseHandler):
    internal_error_code = "UPLOAD_FAILED"

    _reader: MultipartReader | None = None
    _json: bytearray | None = None
    _received = 0
    _body_limit = JSON_LIMIT
    _client = ""

    async def prepare(self) -> None:
        if self.request.method != "POST":
            return
        kind = self.body_kind(self.request.headers.get("Content-Type"))
        if kind is None:
            raise ApiError(
                415,
                "UNSUPPORTED_CONTENT_TYPE",
                "Send multipart/form-data with a file field, or application/json with a url.",
            )
        settings = self.services.settings
        self._body_limit = (
            settings.max_upload_bytes + MULTIPART_ALLOWANCE
            if kind == "multipart"
            else JSON_LIMIT
        )
        # Tornado's own limit must never answer first (with a bare 400): keep it above
        # ours and above any declared length, so our 413 is the answer.
        declared = self._declared_length()
        connection = cast(HTTP1Connection, self.request.connection)
        connection.set_max_body_size(max(self._body_limit, declared or 0) + 1)
        if declared is not None and declared > self._body_limit:
            raise too_large(settings.max_upload_bytes)

        await self._take_rate_limit()
        if kind != "multipart":
            self._json = bytearray()  # a small body naming a URL
            return
        try:
            self._reader = MultipartReader(
                self.request.headers, self.services.ingestor.open_spool
            )
        except MalformedMultipart as error:
            raise ApiError(
                400, "INVALID_BODY", f"Malformed multipart body: {error}."
            ) from None

    def body_kind(self, content_type: str | None) -> str | None:
        """ "multipart", or a kind of small body that names a URL ("json"); None
        for anything else. Subclasses may accept more kinds of URL bodies."""
        return body_kind(content_type)

    def _declared_length(self) -> int | None:
        raw = self.request.headers.get("Content-Length")
        if raw is None:
            return None
        try:
            return int(raw.split(",")[0].strip())
        except ValueError:
            raise ApiError(
                400, "INVALID_BODY", "Content-Length is not a number."
            ) from None

    async def _take_rate_limit(self) -> None:
        settings = self.services.settings
        address = client_address(
            self.request.remote_ip,
            self.request.headers.get("X-Forwarded-For"),
            settings.trusted_proxies,
        )
        client = self._client = self.services.keys.client_hash(client_key(address))
        if settings.rate_limit_per_hour == 0:
            return
        verdict = await self.services.database.run(
            ratelimit.take, client, settings.rate_limit_per_hour
        )
        headers = {
            "X-RateLimit-Limit": str(verdict.limit),
            "X-RateLimit-Remaining": str(verdict.remaining),
            "X-RateLimit-Reset": str(verdict.reset_seconds),
        }
        if not verdict.allowed:
            metrics.rate_limited()
            headers["Retry-After"] = str(verdict.reset_seconds)
            raise ApiError(
                429,
                "RATE_LIMITED",
                f"Too many uploads; try again in {verdict.reset_seconds} seconds.",
                headers,
            )
        for name, value in headers.items():
            self.set_header(name, value)

    async def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        self._received += len(chunk)
        try:
            if self._received > self._body_limit:
                raise FileTooLarge
            if self._reader is not None:
                self._reader.feed(chunk)
            elif self._json is not None:
                self._json += chunk
        except FileTooLarge:
            self._refuse(too_large(self.services.settings.max_upload_bytes))
            return
        except MalformedMultipart as error:
            self._refuse(
                ApiError(400, "INVALID_BODY", f"Malformed multipart body: {error}.")
            )
            return
        spool = self._reader.target.spool if self._reader is not None else None
        if spool is not None:
            # Tornado reads no more of the body until this returns: flow control.
            await self.services.ingestor.drain(spool)

    def _refuse(self, error: ApiError) -> None:
        # Answer now, before the rest of the body; Tornado then drops the remaining
        # input and closes the connection once the answer is sent.
        self._discard()
        self.send_error(error.status_code, exc_info=(type(error), error, None))

    async def post(self) -> None:
        if self._json is not None:
            await self._fetch(self._url_of(bytes(self._json)))
            return
        if self._reader is None:
            raise ApiError(400, "INVALID_BODY", "Malformed request body.")
        target = self._reader.target
        if target.spool is None or (target.complete and target.spool.size == 0):
            raise ApiError(
                400, "NO_FILE", "Send a non-empty file in the field named file."
            )
        if not target.complete:
            raise ApiError(
                400, "INVALID_BODY", "Malformed multipart body: it ends early."
            )
        name = sanitise(self._reader.file_name)
        stored = await self._store(target.spool, name)
        self.write_json(
            201 if stored.created else 200,
            upload_body(stored, self.services.settings),
        )

    async def _store(self, spool: Spool, name: str) -> Stored:
        try:
            return await self.services.ingestor.store(spool, name)
        except Blocked:
            raise ApiError(
                451, "BLOCKED", "This content was taken down and cannot be uploaded."
            ) from None

    def _url_of(self, body: bytes) -> str:
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "INVALID_BODY", "The body is not valid JSON.") from None
        url = document.get("url") if isinstance(document, dict) else None
        if not isinstance(url, str) or not url.strip():
            raise ApiError(400, "NO_URL", "Send a JSON object with a url string.")
        return url.strip()

    async def _fetch(self, url: str) -> None:
        """Fetch a remote file into a spool, then store it like a direct upload."""
        slots = self.services.fetch_slots
        if not slots.take(self._client):
            raise ApiError(
                429,
                "RATE_LIMITED",
                "Too many remote uploads at once; wait for one to end.",
            )
        spool = self.services.ingestor.open_spool()
        try:
            name = await self._fetch_into(url, spool)
            stored = await self._store(spool, sanitise(name))
        finally:
            spool.discard()
            slots.give_back(self._client)
        body = upload_body(stored, self.services.settings)
        self.write_json(201 if stored.created else 200, body)

    async def _fetch_into(self, url: str, spool: Spool) -> str | None:
        try:
            name = await self.services.fetcher.fetch(url, spool)
        except InvalidUrl as error:
            raise ApiError(
                400, "INVALID_URL", f"Cannot fetch that URL: {error}."
            ) from None
        except FetchFailed as error:
            raise ApiError(
                400, "FETCH_FAILED", f"The remote fetch failed: {error}."
            ) from None
        except FileTooLarge:
            raise too_large(self.services.settings.max_upload_bytes) from None
        if spool.size == 0:
            raise ApiError(400, "FETCH_FAILED", "The remote file is empty.")
        return name

    def _discard(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def on_finish(self) -> None:
        self._discard()
        super().on_finish()

    def on_connection_close(self) -> None:
        self._discard()
        super().on_connection_close()
