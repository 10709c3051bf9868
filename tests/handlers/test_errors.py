"""Every error of every endpoint has the same JSON shape; CORS everywhere."""

from __future__ import annotations

import json

import pytest

from tests.conftest import multipart

JSON = {"Content-Type": "application/json"}
EMPTY_MULTIPART = multipart([])


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "code"),
    [
        (
            "POST",
            "/api/upload",
            b"x",
            {"Content-Type": "text/plain"},
            415,
            "UNSUPPORTED_CONTENT_TYPE",
        ),
        ("POST", "/api/upload", b"{", JSON, 400, "INVALID_BODY"),
        ("POST", "/api/upload", b"{}", JSON, 400, "NO_URL"),
        ("POST", "/api/upload", *EMPTY_MULTIPART, 400, "NO_FILE"),
        (
            "POST",
            "/api/upload",
            b'{"url": "http://127.0.0.1:1/"}',
            JSON,
            400,
            "INVALID_URL",
        ),
        ("POST", "/api/upload", b'{"url": "gopher://a/"}', JSON, 400, "INVALID_URL"),
        ("GET", "/api/upload", None, {}, 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/api/info?id=zzzzz", None, {}, 404, "NOT_FOUND"),
        ("GET", "/api/info", None, {}, 404, "NOT_FOUND"),
        ("POST", "/api/info", b"", {}, 405, "METHOD_NOT_ALLOWED"),
        ("POST", "/api/stats", b"", {}, 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/zzzzz", None, {}, 404, "NOT_FOUND"),
        ("DELETE", "/zzzzz", None, {}, 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/no/such/route", None, {}, 404, "NOT_FOUND"),
        ("GET", "/api/nothing", None, {}, 404, "NOT_FOUND"),
        ("POST", "/abc", b"", {}, 404, "NOT_FOUND"),
    ],
)
@pytest.mark.gen_test
async def test_errors_are_json_with_code_and_message(
    http_client, base_url, method, path, body, headers, status, code
):
    response = await http_client.fetch(
        base_url + path,
        method=method,
        body=body,
        headers=headers,
        raise_error=False,
        allow_nonstandard_methods=True,
    )
    assert response.code == status
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    document = json.loads(response.body)
    assert set(document) == {"code", "error"}
    assert document["code"] == code
    assert isinstance(document["error"], str) and document["error"]
    assert "Traceback" not in document["error"]


@pytest.mark.parametrize("path", ["/api/upload", "/api/info", "/api/stats", "/abcde"])
@pytest.mark.gen_test
async def test_preflight_is_answered_for_any_origin(http_client, base_url, path):
    response = await http_client.fetch(
        base_url + path,
        method="OPTIONS",
        headers={
            "Origin": "https://elsewhere.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in response.headers["Access-Control-Allow-Headers"]
