"""The hotlink fast path: plain GET and HEAD of a cached raw file, answered from
memory without building a RequestHandler.

A hotlinked image is asked for again and again with the same request: no query, no
Range, no conditions. Once RawFileHandler has answered such a request, the cache
holds the exact headers it sent and, for a small file, the authenticated plaintext.
Every later plain request for it is answered here, straight onto the connection,
with those headers and a fresh Date. Anything else (a cache miss, a large file, a
Range or conditional request, a query, the wrong origin) goes to the handlers as
usual, so they stay the one place that decides what an answer is.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any
from urllib.parse import urlsplit

import peewee
from tornado import httputil, web

from handlers.base import Services, log_answer
from handlers.cache import Cached
from handlers.files import RAW_ROUTE

PLAIN_ROUTE = re.compile(RAW_ROUTE)
# Request headers that make an answer differ from the cached plain 200.
CONDITIONS = ("Range", "If-Range", "If-None-Match", "If-Modified-Since")
OK = httputil.ResponseStartLine("HTTP/1.1", 200, "OK")


_date: tuple[int, str] = (0, "")


def http_now() -> str:
    """The Date header for now, formatted once a second."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, httputil.format_timestamp(now))
    return _date[1]


class FastApplication(web.Application):
    """The application, with cached plain raw requests answered before routing."""

    def __init__(self, services: Services, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.services = services
        content_url = services.settings.content_url
        self.content_host = urlsplit(content_url).netloc if content_url else None

    def find_handler(  # type: ignore[override]
        self, request: httputil.HTTPServerRequest, **kwargs: Any
    ) -> httputil.HTTPMessageDelegate:
        entry = self._plain_hit(request)
        if entry is not None:
            return CachedAnswer(self, request, entry)
        return super().find_handler(request, **kwargs)

    def route(
        self, request: httputil.HTTPServerRequest
    ) -> httputil.HTTPMessageDelegate:
        """The handler's delegate for `request`, as if there were no fast path."""
        return super().find_handler(request)

    def _plain_hit(self, request: httputil.HTTPServerRequest) -> Cached | None:
        if request.method not in ("GET", "HEAD") or request.query:
            return None
        match = PLAIN_ROUTE.fullmatch(request.path)
        if match is None:
            return None
        headers = request.headers
        if any(name in headers for name in CONDITIONS):
            return None
        if self.content_host is not None and request.host != self.content_host:
            return None
        entry = self.services.cache.get(match[1])
        if entry is None or entry.headers is None:
            return None
        if request.method == "GET" and entry.body is None and entry.file.size:
            return None
        return entry


class CachedAnswer(httputil.HTTPMessageDelegate):
    """Answers one plain request from a cache entry once the request is read.

    With a shared database the entry is first checked against the database's count
    of removals; an entry that did not survive the check hands the request to the
    handlers, as if it had never been cached.
    """

    def __init__(
        self,
        application: FastApplication,
        request: httputil.HTTPServerRequest,
        entry: Cached,
    ) -> None:
        self.application = application
        self.services = application.services
        self.request = request
        self.entry = entry
        self._checking: asyncio.Task[None] | None = None

    def data_received(self, chunk: bytes) -> None:
        return None  # a body on a GET means nothing

    def finish(self) -> None:
        if self.services.cache.shared:
            # Counted as in flight while the check runs, so a stop waits for it.
            self.services.in_flight.add(id(self))
            self._checking = asyncio.ensure_future(self._check_then_answer())
        else:
            self._answer()

    async def _check_then_answer(self) -> None:
        cache = self.services.cache
        try:
            try:
                await cache.check()
                current = cache.get(self.entry.file.id) is self.entry
            except (peewee.PeeweeException, OSError):
                current = False  # the handler answers, with the error it meets
            if current:
                self._answer()
            else:
                self._hand_to_handler()
        finally:
            self.services.in_flight.discard(id(self))

    def _hand_to_handler(self) -> None:
        request = self.request
        delegate = self.application.route(request)
        start_line = httputil.RequestStartLine(
            request.method or "GET", request.uri or "/", request.version
        )
        delegate.headers_received(start_line, request.headers)
        delegate.finish()

    def _answer(self) -> None:
        request, entry = self.request, self.entry
        assert request.connection is not None and entry.headers is not None
        body = b""
        if request.method == "GET" and entry.body:
            body = entry.body
            self.services.views.add(entry.file.id)
        # The entry's own headers, not a copy: write_headers turns them into bytes
        # at once, and only ever adds Connection, which is taken out again.
        headers = entry.headers
        headers["Date"] = http_now()
        try:
            request.connection.write_headers(OK, headers, body)
        finally:
            if "Connection" in headers:
                del headers["Connection"]
        request.connection.finish()
        self.services.cache.fast_answers += 1
        log_answer("RawFileHandler", request, 200, 0, len(body))

    def on_connection_close(self) -> None:
        return None
