"""GET /api/info and GET /api/stats, and how views are counted."""

from __future__ import annotations

import json

import pytest

from tests.conftest import multipart, payload


async def stored(http_client, base_url, content: bytes, name: str = "a.bin") -> dict:
    body, headers = multipart([("file", name, content)])
    response = await http_client.fetch(
        base_url + "/api/upload", method="POST", body=body, headers=headers
    )
    return json.loads(response.body)


async def get_json(http_client, base_url, path: str) -> tuple[int, dict]:
    response = await http_client.fetch(base_url + path, raise_error=False)
    return response.code, json.loads(response.body)


@pytest.mark.gen_test
async def test_info_returns_the_reference_fields_and_thumbnail_url(
    http_client, base_url
):
    file = await stored(http_client, base_url, payload(1234, seed=1), "report.bin")
    code, info = await get_json(http_client, base_url, f"/api/info?id={file['id']}")
    assert code == 200
    assert info == {
        "id": file["id"],
        "file_name": "report.bin",
        "size": 1234,
        "mimetype": file["mimetype"],
        "views": 0,
        "created_at": file["created_at"],
        "url": f"/{file['id']}",
        "preview_url": f"/p/{file['id']}",
        "thumbnail_url": None,
    }


@pytest.mark.parametrize("query", ["", "?id=", "?id=nope", "?id=zzzzz", "?id=../../x"])
@pytest.mark.gen_test
async def test_info_for_unknown_or_impossible_ids_returns_404(
    http_client, base_url, query
):
    code, body = await get_json(http_client, base_url, "/api/info" + query)
    assert code == 404
    assert body["code"] == "NOT_FOUND"


@pytest.mark.gen_test
async def test_a_full_get_counts_one_view_and_info_sees_it_at_once(
    http_client, base_url
):
    file = await stored(http_client, base_url, payload(100, seed=2))
    for _ in range(3):
        await http_client.fetch(base_url + file["url"])
    _, info = await get_json(http_client, base_url, f"/api/info?id={file['id']}")
    assert info["views"] == 3


@pytest.mark.gen_test
async def test_views_reach_the_database_when_flushed(http_client, base_url, services):
    from models import files as catalog

    file = await stored(http_client, base_url, payload(100, seed=3))
    await http_client.fetch(base_url + file["url"])
    await http_client.fetch(base_url + file["url"])
    assert services.views.pending(file["id"]) == 2
    await services.views.flush()
    record = await services.database.run(catalog.find, file["id"])
    assert record.views == 2
    assert services.views.pending(file["id"]) == 0
    _, stats = await get_json(http_client, base_url, "/api/stats")
    assert stats["total_views"] == 2


@pytest.mark.gen_test
async def test_stats_totals_follow_uploads_and_dedup(http_client, base_url):
    _, before = await get_json(http_client, base_url, "/api/stats")
    assert before == {"total_files": 0, "total_views": 0, "total_storage_bytes": 0}
    await stored(http_client, base_url, payload(1000, seed=4))
    await stored(http_client, base_url, payload(2500, seed=5))
    await stored(http_client, base_url, payload(2500, seed=5))
    _, after = await get_json(http_client, base_url, "/api/stats")
    assert after == {"total_files": 2, "total_views": 0, "total_storage_bytes": 3500}
