"""GET /api/info, /api/stats, /api/openapi.json; DELETE /api/files/ID; health checks."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import Awaitable

import metrics
from handlers.base import (
    ApiError,
    BaseHandler,
    not_found,
    raw_url,
    thumbnail_url,
)
from handlers.openapi import openapi_document
from ingest import delete_token_hash
from models import files as catalog
from models.records import delete_objects
from storage import ObjectNotFound

logger = logging.getLogger(__name__)

PROBE_KEY = "0" * 32
READY_TIMEOUT = 3.0
VALID_ID = re.compile(r"\A[A-Za-z0-9]{5,16}\Z")


class InfoHandler(BaseHandler):
    async def get(self) -> None:
        file_id = self.get_query_argument("id", "")
        if not VALID_ID.match(file_id):
            raise not_found()
        file = await self.find_file(file_id)
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


class DeleteHandler(BaseHandler):
    """DELETE /api/files/ID with X-Delete-Token: the uploader takes a file down."""

    async def delete(self, file_id: str) -> None:
        token = self.request.headers.get("X-Delete-Token", "")
        record = await self.services.database.run(catalog.find, file_id)
        if record is None:
            raise not_found()
        expected = record.delete_token_hash or ""
        if not token or not hmac.compare_digest(delete_token_hash(token), expected):
            raise ApiError(
                403, "FORBIDDEN", "That delete token does not match this file."
            )
        removed = await self.services.database.run(catalog.remove, file_id, "deleted")
        if removed is None:
            raise not_found()
        self.services.views.forget(file_id)
        self.services.cache.removed(file_id)
        await delete_objects(self.services.store, removed)
        self.write({"id": file_id, "deleted": True})


class HealthHandler(BaseHandler):
    """GET /healthz: the process answers."""

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.write({"status": "ok"})


class ReadyHandler(BaseHandler):
    """GET /readyz: the database and the store answer (for load balancers)."""

    async def get(self) -> None:
        checks = {
            "database": await self._check(self.services.database.run(catalog.totals)),
            "store": await self._check(self._store_answers()),
        }
        ready = all(state == "ok" for state in checks.values())
        self.set_header("Cache-Control", "no-store")
        self.write_json(
            200 if ready else 503,
            {"status": "ok" if ready else "unavailable", **checks},
        )

    async def _store_answers(self) -> None:
        try:
            await self.services.store.store.stat(PROBE_KEY)
        except ObjectNotFound:
            return  # the store answered: there is simply no such object

    @staticmethod
    async def _check(probe: Awaitable[object]) -> str:
        try:
            await asyncio.wait_for(probe, READY_TIMEOUT)
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return "error"
        return "ok"


class MetricsHandler(BaseHandler):
    """GET /metrics: Prometheus exposition, summed over every worker."""

    def get(self) -> None:
        if not metrics.enabled():
            raise not_found()
        body, content_type = metrics.render()
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "no-store")
        self.write(body)
