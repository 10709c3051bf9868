"""Tornado handlers, one module per endpoint family, and the route table."""

from __future__ import annotations

from pathlib import Path

from tornado import web

from handlers.api import (
    DeleteHandler,
    HealthHandler,
    InfoHandler,
    MetricsHandler,
    OpenApiHandler,
    ReadyHandler,
    StatsHandler,
)
from handlers.base import NotFoundHandler, Services, log_request
from handlers.fast import FastApplication
from handlers.files import ID_PATTERN, RAW_ROUTE, RawFileHandler, ThumbnailHandler
from handlers.pages import (
    DocsHandler,
    FormUploadHandler,
    HomeHandler,
    PreviewHandler,
    ShareXHandler,
)
from handlers.upload import UploadHandler

__all__ = ["Services", "make_app"]

ROOT = Path(__file__).resolve().parent.parent


def make_app(services: Services) -> web.Application:
    """The application; the server and the tests both build it here."""
    routes = [
        (r"/", HomeHandler),
        (r"/docs", DocsHandler),
        (r"/sharex\.sxcu", ShareXHandler),
        (r"/upload", FormUploadHandler),
        (r"/api/upload", UploadHandler),
        (r"/api/info", InfoHandler),
        (r"/api/stats", StatsHandler),
        (r"/api/openapi\.json", OpenApiHandler),
        (rf"/api/files/({ID_PATTERN})", DeleteHandler),
        (r"/healthz", HealthHandler),
        (r"/readyz", ReadyHandler),
        (r"/metrics", MetricsHandler),
        (rf"/p/({ID_PATTERN})", PreviewHandler),
        (rf"/t/({ID_PATTERN})", ThumbnailHandler),
        (RAW_ROUTE, RawFileHandler),
    ]
    kwargs = {"services": services}
    return FastApplication(
        services,
        [(pattern, handler, kwargs) for pattern, handler in routes],
        default_handler_class=NotFoundHandler,
        default_handler_args=kwargs,
        log_function=log_request,
        compress_response=False,
        xsrf_cookies=False,
        static_path=str(ROOT / "static"),
        template_path=str(ROOT / "templates"),
    )
