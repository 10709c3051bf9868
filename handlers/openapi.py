"""The OpenAPI 3 description of the API, with the live limits of this instance."""

from __future__ import annotations

from typing import Any

from config import Settings

ERROR_CODES = [
    "NO_FILE",
    "NO_URL",
    "INVALID_BODY",
    "INVALID_URL",
    "FETCH_FAILED",
    "FORBIDDEN",
    "NOT_FOUND",
    "METHOD_NOT_ALLOWED",
    "FILE_TOO_LARGE",
    "RANGE_NOT_SATISFIABLE",
    "UNSUPPORTED_CONTENT_TYPE",
    "RATE_LIMITED",
    "BLOCKED",
    "UPLOAD_FAILED",
    "INTERNAL_ERROR",
    "STORAGE_ERROR",
]

ID_PARAMETER = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9]{5,16}$"},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): _json(_ref("Error"), "An error") for status in statuses}


def _upload_path(settings: Settings) -> dict[str, Any]:
    limit = settings.max_upload_bytes
    multipart = {
        "type": "object",
        "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary"}},
    }
    by_url = {
        "type": "object",
        "required": ["url"],
        "properties": {"url": {"type": "string", "format": "uri"}},
    }
    return {
        "post": {
            "summary": f"Upload a file (at most {limit} bytes) or fetch one from a URL",
            "operationId": "upload",
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {"schema": multipart},
                    "application/json": {"schema": by_url},
                },
            },
            "responses": {
                "201": _json(_ref("Upload"), "A new file was stored"),
                "200": _json(_ref("Upload"), "The same content was already stored"),
                **_errors(400, 413, 415, 429, 451, 500, 502),
            },
        }
    }


def _info_path() -> dict[str, Any]:
    return {
        "get": {
            "summary": "Metadata of one file",
            "operationId": "info",
            "parameters": [
                {
                    "name": "id",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string"},
                }
            ],
            "responses": {"200": _json(_ref("Info"), "The file"), **_errors(404, 500)},
        }
    }


def _stats_path() -> dict[str, Any]:
    return {
        "get": {
            "summary": "Platform totals",
            "operationId": "stats",
            "responses": {"200": _json(_ref("Stats"), "Totals"), **_errors(500)},
        }
    }


def _raw_path() -> dict[str, Any]:
    binary = {
        "description": "The file",
        "content": {"*/*": {"schema": {"type": "string"}}},
    }
    inline = {
        "name": "inline",
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
    }
    operation = {
        "parameters": [ID_PARAMETER, inline],
        "responses": {
            "200": binary,
            "206": {"description": "The requested byte range"},
            "304": {"description": "Not modified"},
            "416": {"description": "Range not satisfiable"},
            **_errors(404, 502),
        },
    }
    return {
        "get": {"summary": "The raw file", "operationId": "raw", **operation},
        "head": {
            "summary": "Headers of the raw file",
            "operationId": "rawHead",
            **operation,
        },
    }


def _thumbnail_path() -> dict[str, Any]:
    image = {
        "description": "The thumbnail",
        "content": {"image/*": {"schema": {"type": "string"}}},
    }
    return {
        "get": {
            "summary": "The thumbnail of an image (at most 480 px)",
            "operationId": "thumbnail",
            "parameters": [ID_PARAMETER],
            "responses": {
                "200": image,
                "304": {"description": "Not modified"},
                **_errors(404, 451, 502),
            },
        }
    }


def _delete_path() -> dict[str, Any]:
    token = {
        "name": "X-Delete-Token",
        "in": "header",
        "required": True,
        "schema": {"type": "string"},
    }
    deleted = {
        "type": "object",
        "required": ["id", "deleted"],
        "properties": {"id": {"type": "string"}, "deleted": {"type": "boolean"}},
    }
    return {
        "delete": {
            "summary": "Delete a file with the token its upload answer carried",
            "operationId": "delete",
            "parameters": [ID_PARAMETER, token],
            "responses": {"200": _json(deleted, "Deleted"), **_errors(403, 404, 500)},
        }
    }


def _health_paths() -> dict[str, Any]:
    status = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    }
    return {
        "/healthz": {
            "get": {
                "summary": "The process answers",
                "operationId": "healthz",
                "responses": {"200": _json(status, "Alive")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "The database and the store answer",
                "operationId": "readyz",
                "responses": {
                    "200": _json(status, "Ready"),
                    "503": _json(status, "Not ready"),
                },
            }
        },
    }


def _schemas() -> dict[str, Any]:
    upload_fields = {
        "id": {"type": "string"},
        "url": {"type": "string"},
        "preview_url": {"type": "string"},
        "file_name": {"type": "string"},
        "size": {"type": "integer", "minimum": 1},
        "mimetype": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "thumbnail_url": {"type": ["string", "null"]},
        "duplicate": {"type": "boolean"},
        "delete_token": {"type": "string"},
    }
    info_fields = {
        name: upload_fields[name]
        for name in (
            "id", "file_name", "size", "mimetype", "created_at", "url", "preview_url",
            "thumbnail_url",
        )
    }  # fmt: skip
    info_fields["views"] = {"type": "integer", "minimum": 0}
    total = {"type": "integer", "minimum": 0}
    return {
        "Upload": {
            "type": "object",
            "required": ["id", "url", "preview_url", "file_name", "size", "mimetype"],
            "properties": upload_fields,
        },
        "Info": {
            "type": "object",
            "required": [
                "id",
                "file_name",
                "size",
                "mimetype",
                "views",
                "created_at",
                "url",
                "preview_url",
            ],
            "properties": info_fields,
        },
        "Stats": {
            "type": "object",
            "required": ["total_files", "total_views", "total_storage_bytes"],
            "properties": {
                "total_files": total,
                "total_views": total,
                "total_storage_bytes": total,
            },
        },
        "Error": {
            "type": "object",
            "required": ["code", "error"],
            "properties": {
                "code": {"type": "string", "enum": ERROR_CODES},
                "error": {"type": "string"},
            },
        },
    }


def openapi_document(settings: Settings, base_url: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imgyx",
            "version": "1",
            "description": "Anonymous file hosting: upload, hotlink, preview. "
            f"Files up to {settings.max_upload_bytes} bytes; "
            f"{settings.rate_limit_per_hour or 'unlimited'} uploads per client per hour.",
        },
        "servers": [{"url": settings.public_url or base_url}],
        "paths": {
            "/api/upload": _upload_path(settings),
            "/api/info": _info_path(),
            "/api/stats": _stats_path(),
            "/api/files/{id}": _delete_path(),
            "/{id}": _raw_path(),
            "/t/{id}": _thumbnail_path(),
            **_health_paths(),
        },
        "components": {"schemas": _schemas()},
    }
