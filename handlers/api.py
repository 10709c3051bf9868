"""GET /api/info and GET /api/stats."""

from __future__ import annotations

import re

from handlers.base import BaseHandler, not_found, raw_url, thumbnail_url
from handlers.openapi import openapi_document
from models import files as catalog
from models.records import open_record

VALID_ID = re.compile(r"\A[A-Za-z0-9]{5,16}\Z")


class InfoHandler(BaseHandler):
    async def get(self) -> None:
        file_id = self.get_query_argument("id", "")
        if not VALID_ID.match(file_id):
            raise not_found()
        record = await self.services.database.run(catalog.find, file_id)
        if record is None:
            raise not_found()
        file = open_record(record, self.services.store)
        self.set_header("Cache-Control", "no-cache")
        self.write(
            {
                "id": file.id,
                "file_name": file.name,
                "size": file.size,
                "mimetype": file.mimetype,
                "views": file.views + self.services.views.pending(file.id),
                "created_at": file.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "url": raw_url(self.services.settings, file.id),
                "preview_url": f"/p/{file.id}",
                "thumbnail_url": thumbnail_url(self.services.settings, file),
            }
        )


class StatsHandler(BaseHandler):
    async def get(self) -> None:
        totals = await self.services.database.run(catalog.totals)
        self.set_header("Cache-Control", "no-cache")
        self.write(
            {
                "total_files": int(totals.files),
                "total_views": int(totals.views) + self.services.views.pending_total(),
                "total_storage_bytes": int(totals.storage_bytes),
            }
        )


class OpenApiHandler(BaseHandler):
    def get(self) -> None:
        base = f"{self.request.protocol}://{self.request.host}"
        self.set_header("Cache-Control", "no-cache")
        self.write(openapi_document(self.services.settings, base))
