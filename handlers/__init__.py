"""Tornado handlers, one module per endpoint family, and the route table."""

from __future__ import annotations

from tornado import web

from handlers.api import InfoHandler, StatsHandler
from handlers.base import NotFoundHandler, Services, log_request

__all__ = ["Services", "make_app"]
from handlers.files import RAW_ROUTE, RawFileHandler
from handlers.upload import UploadHandler


def make_app(services: Services) -> web.Application:
    """The application; the server and the tests both build it here."""
    routes = [
        (r"/api/upload", UploadHandler),
        (r"/api/info", InfoHandler),
        (r"/api/stats", StatsHandler),
        (RAW_ROUTE, RawFileHandler),
    ]
    kwargs = {"services": services}
    return web.Application(
        [(pattern, handler, kwargs) for pattern, handler in routes],
        default_handler_class=NotFoundHandler,
        default_handler_args=kwargs,
        log_function=log_request,
        compress_response=False,
        xsrf_cookies=False,
    )
