"""What people see: the home page, preview pages, the API docs and the ShareX config.

Server-rendered with Jinja2 (autoescaping on). Placeholder handlers until the pages
land; each answers 404 so no route is half-built.
"""

from __future__ import annotations

from handlers.base import BaseHandler, not_found


class HomeHandler(BaseHandler):
    def get(self) -> None:
        raise not_found()


class PreviewHandler(BaseHandler):
    def get(self, file_id: str) -> None:
        raise not_found()


class DocsHandler(BaseHandler):
    def get(self) -> None:
        raise not_found()


class ShareXHandler(BaseHandler):
    def get(self) -> None:
        raise not_found()
