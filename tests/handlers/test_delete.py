"""DELETE /api/files/ID: the uploader's delete token takes a file down for good."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from PIL import Image
from tornado import httpclient

from handlers import Services
from models import File
from models import files as catalog
from tests.conftest import multipart, payload


async def upload(http_client: Any, base_url: str, content: bytes) -> dict:
    body, headers = multipart([("file", "a.bin", content)])
    response = await http_client.fetch(
        base_url + "/api/upload", method="POST", body=body, headers=headers
    )
    document: dict = json.loads(response.body)
    document["status"] = response.code
    return document


async def delete(
    http_client: Any, base_url: str, file_id: str, token: str | None
) -> httpclient.HTTPResponse:
    headers = {} if token is None else {"X-Delete-Token": token}
    return await http_client.fetch(
        f"{base_url}/api/files/{file_id}",
        method="DELETE",
        headers=headers,
        raise_error=False,
    )


async def status_of(http_client: Any, base_url: str, path: str) -> int:
    response = await http_client.fetch(base_url + path, raise_error=False)
    return int(response.code)


async def stats(http_client: Any, base_url: str) -> dict:
    response = await http_client.fetch(base_url + "/api/stats")
    return dict(json.loads(response.body))


async def object_keys(services: Services) -> set[str]:
    return {info.key async for info in services.store.store.list()}


def png(side: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (30, 140, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.gen_test
async def test_only_the_creating_answer_carries_a_delete_token(http_client, base_url):
    content = payload(1000, seed=1)
    first = await upload(http_client, base_url, content)
    again = await upload(http_client, base_url, content)

    assert first["status"] == 201
    assert isinstance(first["delete_token"], str) and len(first["delete_token"]) >= 24
    assert again["status"] == 200
    assert again["duplicate"] is True
    assert "delete_token" not in again


@pytest.mark.gen_test
async def test_the_database_keeps_only_a_hash_of_the_token(
    http_client, base_url, services
):
    file = await upload(http_client, base_url, payload(1000, seed=2))
    record = await services.database.run(catalog.find, file["id"])

    assert record.delete_token_hash
    assert record.delete_token_hash != file["delete_token"]
    columns = [getattr(record, field.name) for field in File._meta.sorted_fields]
    assert not any(file["delete_token"] in str(value) for value in columns)


@pytest.mark.parametrize("backend", ["local-sqlite"], indirect=True)
@pytest.mark.gen_test
async def test_the_sqlite_files_hold_no_token_in_clear(http_client, base_url, services):
    file = await upload(http_client, base_url, payload(1000, seed=3))
    record = await services.database.run(catalog.find, file["id"])
    data_dir = services.settings.data_dir

    everything = b"".join(
        path.read_bytes() for path in data_dir.rglob("imgyx.db*") if path.is_file()
    )
    # The hash is found, so the scan does see the record it looks through.
    assert record.delete_token_hash.encode() in everything
    assert file["delete_token"].encode() not in everything


@pytest.mark.gen_test
async def test_delete_with_the_right_token_answers_200(http_client, base_url):
    file = await upload(http_client, base_url, payload(1000, seed=4))
    response = await delete(http_client, base_url, file["id"], file["delete_token"])

    assert response.code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert json.loads(response.body) == {"id": file["id"], "deleted": True}


@pytest.mark.parametrize(
    "path", ["/{id}", "/{id}.bin", "/api/info?id={id}", "/p/{id}", "/t/{id}"]
)
@pytest.mark.gen_test
async def test_a_deleted_file_answers_404(http_client, base_url, path):
    file = await upload(http_client, base_url, png())
    assert file["thumbnail_url"] is not None
    await delete(http_client, base_url, file["id"], file["delete_token"])

    assert await status_of(http_client, base_url, path.format(id=file["id"])) == 404


@pytest.mark.gen_test
async def test_deleting_twice_answers_404_the_second_time(http_client, base_url):
    file = await upload(http_client, base_url, payload(1000, seed=5))
    await delete(http_client, base_url, file["id"], file["delete_token"])
    response = await delete(http_client, base_url, file["id"], file["delete_token"])

    assert response.code == 404
    assert json.loads(response.body)["code"] == "NOT_FOUND"


@pytest.mark.gen_test
async def test_delete_removes_the_object_and_its_thumbnail(
    http_client, base_url, services
):
    kept = await upload(http_client, base_url, payload(1000, seed=6))
    before = await object_keys(services)
    file = await upload(http_client, base_url, png())
    added = await object_keys(services) - before
    assert len(added) == 2  # the file and its thumbnail

    await delete(http_client, base_url, file["id"], file["delete_token"])

    assert await object_keys(services) == before
    assert await status_of(http_client, base_url, kept["url"]) == 200


@pytest.mark.gen_test
async def test_delete_takes_the_file_out_of_every_total(
    http_client, base_url, services
):
    gone = await upload(http_client, base_url, payload(1000, seed=7))
    kept = await upload(http_client, base_url, payload(2500, seed=8))
    for url in (gone["url"], gone["url"], kept["url"]):
        await http_client.fetch(base_url + url)
    await services.views.flush()
    assert await stats(http_client, base_url) == {
        "total_files": 2,
        "total_views": 3,
        "total_storage_bytes": 3500,
    }

    await delete(http_client, base_url, gone["id"], gone["delete_token"])

    assert await stats(http_client, base_url) == {
        "total_files": 1,
        "total_views": 1,
        "total_storage_bytes": 2500,
    }


@pytest.mark.gen_test
async def test_delete_drops_views_not_yet_written_from_the_totals(
    http_client, base_url
):
    gone = await upload(http_client, base_url, payload(1000, seed=9))
    for _ in range(2):
        await http_client.fetch(base_url + gone["url"])

    await delete(http_client, base_url, gone["id"], gone["delete_token"])

    assert await stats(http_client, base_url) == {
        "total_files": 0,
        "total_views": 0,
        "total_storage_bytes": 0,
    }


@pytest.mark.parametrize(
    "token",
    [None, "", "not-the-token", "other"],
    ids=["missing", "empty", "wrong", "another-files-token"],
)
@pytest.mark.gen_test
async def test_a_wrong_or_missing_token_answers_403_and_keeps_the_file(
    http_client, base_url, token
):
    file = await upload(http_client, base_url, payload(1000, seed=10))
    if token == "other":
        token = (await upload(http_client, base_url, payload(900, seed=11)))[
            "delete_token"
        ]
    response = await delete(http_client, base_url, file["id"], token)

    assert response.code == 403
    assert json.loads(response.body)["code"] == "FORBIDDEN"
    assert await status_of(http_client, base_url, file["url"]) == 200
    assert await status_of(http_client, base_url, f"/api/info?id={file['id']}") == 200


@pytest.mark.gen_test
async def test_delete_of_an_unknown_id_answers_404(http_client, base_url):
    response = await delete(http_client, base_url, "Nobody123", "any-token")

    assert response.code == 404
    assert json.loads(response.body)["code"] == "NOT_FOUND"


@pytest.mark.gen_test
async def test_a_deleted_id_is_never_issued_again(http_client, base_url, monkeypatch):
    file = await upload(http_client, base_url, payload(1000, seed=12))
    await delete(http_client, base_url, file["id"], file["delete_token"])
    draws = iter([file["id"], "Fresh12345"])
    monkeypatch.setattr(catalog, "new_file_id", lambda length: next(draws))

    second = await upload(http_client, base_url, payload(1000, seed=13))

    assert second["status"] == 201
    assert second["id"] == "Fresh12345"
    assert await status_of(http_client, base_url, f"/{file['id']}") == 404


@pytest.mark.gen_test
async def test_preflight_for_delete_allows_the_token_header(http_client, base_url):
    file = await upload(http_client, base_url, payload(1000, seed=14))
    response = await http_client.fetch(
        f"{base_url}/api/files/{file['id']}",
        method="OPTIONS",
        headers={
            "Origin": "https://elsewhere.example",
            "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "x-delete-token",
        },
    )

    assert response.code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "DELETE" in response.headers["Access-Control-Allow-Methods"]
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert "x-delete-token" in allowed.replace(" ", "").split(",")
