"""The shared base handler: services, CORS, error shaping and the access log."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from http import HTTPStatus, client
from typing import Any

from tornado import httputil, iostream, web

import metrics
from config import Settings
from handlers.accesslog import ACCESS_LOG
from handlers.cache import Cached, FileCache
from ingest import Ingestor
from ingest.fetch import Fetcher, FetchSlots
from models import Database
from models import files as catalog
from models.records import FileView, open_record
from models.views import ViewCounter
from storage import IntegrityError, SealedStore, StoreError
from storage.keys import DeploymentKeys, UnwrapError

logger = logging.getLogger(__name__)

# A fallback code for statuses raised without one (Tornado's own 404 and 405).
CODES_BY_STATUS = {
    400: "INVALID_BODY",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "FILE_TOO_LARGE",
    415: "UNSUPPORTED_CONTENT_TYPE",
    429: "RATE_LIMITED",
    502: "STORAGE_ERROR",
}

EXPOSED_HEADERS = (
    "Content-Length, Content-Range, Content-Disposition, ETag, Last-Modified, "
    "Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset"
)
ALLOWED_HEADERS = (
    "Content-Type, Range, If-None-Match, If-Modified-Since, If-Range, X-Delete-Token"
)


@dataclass
class Services:
    """What handlers work with; built once by server.open_services()."""

    settings: Settings
    database: Database
    store: SealedStore
    keys: DeploymentKeys
    ingestor: Ingestor
    views: ViewCounter
    fetcher: Fetcher
    fetch_slots: FetchSlots
    cache: FileCache
    store_ready: bool = False
    # Requests being answered, so a graceful stop can wait for them.
    in_flight: set[int] = field(default_factory=set)


class ApiError(web.HTTPError):
    """An error answered as `{"code": ..., "error": ...}` with its HTTP status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, reason=HTTPStatus(status).phrase)
        self.code = code
        self.message = message
        self.headers = headers or {}


def raw_url(settings: Settings, file_id: str) -> str:
    """The link to a raw file: on the content origin when one is set, else relative."""
    return f"{settings.content_url}/{file_id}"


def thumbnail_url(settings: Settings, file: FileView) -> str | None:
    """The link to a file's thumbnail, or None when it has none."""
    if not file.has_thumbnail:
        return None
    return f"{settings.content_url}/t/{file.id}"


def absolute(settings: Settings, request_base: str, url: str) -> str:
    """An absolute URL for `url` (relative links get IMGYX_PUBLIC_URL or the
    request's own scheme and host)."""
    if url.startswith(("http://", "https://")):
        return url
    return (settings.public_url or request_base) + url


def not_found() -> ApiError:
    return ApiError(404, "NOT_FOUND", "No file with that ID.")


class BaseHandler(web.RequestHandler):
    """CORS on every answer, nosniff, JSON errors shaped in one place."""

    # The code of an unexpected failure; the upload handler says UPLOAD_FAILED.
    internal_error_code = "INTERNAL_ERROR"

    def initialize(self, services: Services) -> None:
        self.services = services
        self.bytes_sent = 0
        services.in_flight.add(id(self))

    def on_finish(self) -> None:
        self.services.in_flight.discard(id(self))

    def on_connection_close(self) -> None:
        self.services.in_flight.discard(id(self))
        super().on_connection_close()

    def set_default_headers(self) -> None:
        self.set_header("Access-Control-Allow-Origin", "*")
        self.set_header("Access-Control-Expose-Headers", EXPOSED_HEADERS)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.clear_header("Server")

    def allowed_methods(self) -> list[str]:
        """The methods this handler answers (for the Allow header of a 405)."""
        unimplemented = web.RequestHandler._unimplemented_method
        return [
            method
            for method in self.SUPPORTED_METHODS
            if getattr(type(self), method.lower(), unimplemented) is not unimplemented
        ]

    def compute_etag(self) -> None:
        # Tornado would hash the buffered body; streamed files set their own ETag.
        return None

    def options(self, *args: str) -> None:
        self.set_header(
            "Access-Control-Allow-Methods", "GET, HEAD, POST, DELETE, OPTIONS"
        )
        self.set_header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
        self.set_header("Access-Control-Max-Age", "86400")
        self.set_status(204)

    def write(self, chunk: str | bytes | dict[str, Any]) -> None:
        if isinstance(chunk, dict):
            chunk = json.dumps(chunk)
            self.set_header("Content-Type", "application/json; charset=utf-8")
        self.bytes_sent += len(chunk)
        super().write(chunk)

    def write_json(self, status: int, body: dict[str, Any]) -> None:
        self.set_status(status)
        self.write(body)

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, StoreError):
            status_code = 502
        super().send_error(status_code, **kwargs)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, ApiError):
            code, message = error.code, error.message
            for name, value in error.headers.items():
                self.set_header(name, value)
        elif isinstance(error, StoreError):
            code, message = "STORAGE_ERROR", "The file store failed; try again later."
        elif status_code == 405:
            code, message = "METHOD_NOT_ALLOWED", "This method is not allowed here."
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        elif status_code >= 500:
            code, message = (
                self.internal_error_code,
                "Internal error; nothing was stored.",
            )
        else:
            code = CODES_BY_STATUS.get(status_code, "ERROR")
            message = client.responses.get(status_code, "Error")
        self.write({"code": code, "error": message})

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ApiError | iostream.StreamClosedError):
            return
        if isinstance(value, StoreError):
            logger.error(
                "store failed on %s %s: %s",
                self.request.method,
                self.request.path,
                value,
            )
        elif isinstance(value, IntegrityError | UnwrapError):
            logger.error("file %s failed authentication: %s", self.request.path, value)
        elif isinstance(value, web.HTTPError):
            return
        else:
            logger.error(
                "unexpected error on %s %s",
                self.request.method,
                self.request.path,
                exc_info=(typ, value, tb),
            )

    async def find_file(self, file_id: str) -> FileView:
        """The file at `file_id`, opened; 404 if there is none, 451 if taken down."""
        record = await self.services.database.run(catalog.find, file_id)
        if record is not None:
            return open_record(record, self.services.store)
        reason = await self.services.database.run(catalog.retired_reason, file_id)
        if reason == "taken_down":
            raise ApiError(451, "BLOCKED", "This file was taken down by the operator.")
        raise not_found()

    async def cached_file(self, file_id: str) -> tuple[Cached, int]:
        """The file at `file_id` from this process's cache, or found and cached.

        Also returns the cache token to hand back when adding the file's bodies.
        For raw content only: the cached record's view count is not kept current.
        """
        cache = self.services.cache
        token = await cache.check()
        entry = cache.get(file_id)
        if entry is None:
            file = await self.find_file(file_id)
            entry = Cached(file, self.services.keys.etag(file.fingerprint))
            cache.put(file_id, entry, token)
        return entry, token


class NotFoundHandler(BaseHandler):
    """Every path no route matches."""

    def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            return
        raise ApiError(404, "NOT_FOUND", "Nothing here.")


def log_request(handler: web.RequestHandler) -> None:
    """One access-log line per request, without the client address or query."""
    request = handler.request
    received = getattr(handler, "_received", None)
    if received is None:
        received = len(request.body) if isinstance(request.body, bytes) else 0
    log_answer(
        type(handler).__name__,
        request,
        handler.get_status(),
        received,
        getattr(handler, "bytes_sent", 0),
    )


def log_answer(
    kind: str,
    request: httputil.HTTPServerRequest,
    status: int,
    received: int,
    sent: int,
) -> None:
    """Metrics and the access-log line for one answered request."""
    metrics.request(kind, status, received, sent)
    if request.path == "/api/upload" and request.method == "POST":
        metrics.upload_answered(request.request_time())
    ACCESS_LOG.add(
        f"{request.method} {request.path} {status} {sent} "
        f"{1000.0 * request.request_time():.1f}ms"
    )
