"""GET and HEAD /ID: decrypted streaming, headers, views, tampering."""

from __future__ import annotations

import io
import json

import pytest
from tornado.simple_httpclient import HTTPStreamClosedError

from handlers.content import content_disposition
from tests.conftest import multipart, payload


async def stored(http_client, base_url, content: bytes, name: str = "a.bin") -> dict:
    body, headers = multipart([("file", name, content)])
    response = await http_client.fetch(
        base_url + "/api/upload", method="POST", body=body, headers=headers
    )
    return json.loads(response.body)


async def fetch(http_client, base_url, path: str, method: str = "GET"):
    return await http_client.fetch(base_url + path, method=method, raise_error=False)


async def flip_bit(services, position: int) -> None:
    """Corrupt the one stored object in place, through the store itself."""
    store = services.store.store
    (only,) = [info async for info in store.list()]
    data = bytearray()
    async for chunk in store.get(only.key, 0, only.size):
        data += chunk
    data[position] ^= 1
    await store.put(only.key, io.BytesIO(bytes(data)), len(data))


@pytest.mark.parametrize("size", [1, 65535, 65536, 65537, 150_000])
@pytest.mark.gen_test
async def test_get_returns_the_exact_bytes(http_client, base_url, size):
    content = payload(size, seed=size)
    file = await stored(http_client, base_url, content)
    response = await fetch(http_client, base_url, file["url"])
    assert response.code == 200
    assert response.body == content
    assert response.headers["Content-Length"] == str(size)


@pytest.mark.gen_test
async def test_get_with_any_extension_serves_the_same_file(http_client, base_url):
    content = payload(300, seed=1)
    file = await stored(http_client, base_url, content)
    response = await fetch(http_client, base_url, file["url"] + ".png")
    assert response.body == content


@pytest.mark.gen_test
async def test_raw_headers_are_safe_for_hotlinking(http_client, base_url):
    file = await stored(http_client, base_url, payload(300, seed=2), "data.bin")
    response = await fetch(http_client, base_url, file["url"])
    headers = response.headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert "sandbox" in headers["Content-Security-Policy"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["Content-Disposition"].startswith("attachment; ")


@pytest.mark.gen_test
async def test_images_are_inline_and_other_types_attachments(http_client, base_url):
    png = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + payload(100, seed=3)
    image = await stored(http_client, base_url, png, "pic.png")
    text = await stored(http_client, base_url, b"just some words\n" * 20, "notes.txt")
    image_response = await fetch(http_client, base_url, image["url"])
    text_response = await fetch(http_client, base_url, text["url"])
    forced = await fetch(http_client, base_url, text["url"] + "?inline")
    assert image_response.headers["Content-Type"] == "image/png"
    assert image_response.headers["Content-Disposition"].startswith("inline; ")
    assert text_response.headers["Content-Disposition"].startswith("attachment; ")
    assert forced.headers["Content-Disposition"].startswith("inline; ")
    assert forced.headers["Content-Type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize(
    "content",
    [
        b"<!DOCTYPE html><html><script>alert(1)</script></html>",
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>x</script></svg>',
    ],
)
@pytest.mark.gen_test
async def test_active_content_is_never_served_as_itself(http_client, base_url, content):
    file = await stored(http_client, base_url, content, "page.html")
    inline = await fetch(http_client, base_url, file["url"] + "?inline")
    download = await fetch(http_client, base_url, file["url"])
    assert inline.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert download.headers["Content-Type"] == "application/octet-stream"


@pytest.mark.gen_test
async def test_head_sends_headers_without_body_and_counts_no_view(
    http_client, base_url
):
    content = payload(1000, seed=5)
    file = await stored(http_client, base_url, content)
    response = await fetch(http_client, base_url, file["url"], method="HEAD")
    assert response.code == 200
    assert response.body == b""
    assert response.headers["Content-Length"] == "1000"
    info = await fetch(http_client, base_url, f"/api/info?id={file['id']}")
    assert json.loads(info.body)["views"] == 0


@pytest.mark.parametrize("path", ["/zzzzz", "/zzzzz.png", "/AAAAAAAAAAAAAAAA"])
@pytest.mark.gen_test
async def test_unknown_id_returns_404_not_found(http_client, base_url, path):
    response = await fetch(http_client, base_url, path)
    assert response.code == 404
    assert json.loads(response.body)["code"] == "NOT_FOUND"


@pytest.mark.gen_test
async def test_tampered_object_never_reaches_the_client(
    http_client, base_url, services
):
    content = payload(200_000, seed=6)
    file = await stored(http_client, base_url, content)
    await flip_bit(services, 100)  # inside the first segment
    response = await fetch(http_client, base_url, file["url"])
    assert response.code == 500
    assert content[:1000] not in response.body


@pytest.mark.settings(cache_mb=16)
@pytest.mark.gen_test
async def test_a_file_small_enough_to_keep_is_authenticated_whole_before_sending(
    http_client, base_url, services
):
    content = payload(190_000, seed=7)
    file = await stored(http_client, base_url, content)
    await flip_bit(services, -100)  # inside the last segment
    response = await fetch(http_client, base_url, file["url"])
    assert response.code == 500
    assert content[:1000] not in response.body
    assert len(services.cache) == 1 and services.cache.get(file["id"]).body is None


# Streamed a chunk (up to 1 MiB) at a time, as large files are.
@pytest.mark.settings(cache_mb=0, max_upload_bytes=3_000_000)
@pytest.mark.gen_test
async def test_corruption_after_the_first_chunk_cuts_the_connection(
    http_client, base_url, services
):
    content = payload(2_500_000, seed=7)
    file = await stored(http_client, base_url, content)
    await flip_bit(services, -100)  # inside the last segment
    received = bytearray()
    # The client never gets a complete 200: the transfer is cut short.
    with pytest.raises(HTTPStreamClosedError):
        await http_client.fetch(
            base_url + file["url"], streaming_callback=received.extend
        )
    assert 0 < len(received) < len(content)
    assert bytes(received) == content[: len(received)]


@pytest.mark.gen_test
async def test_missing_object_answers_an_error_status(http_client, base_url, services):
    file = await stored(http_client, base_url, payload(500, seed=8))
    (only,) = [info async for info in services.store.store.list()]
    await services.store.store.delete(only.key)
    response = await fetch(http_client, base_url, file["url"])
    assert response.code == 502
    assert json.loads(response.body)["code"] == "STORAGE_ERROR"


@pytest.mark.parametrize(
    ("name", "fallback", "encoded"),
    [
        ("plain.txt", "plain.txt", "plain.txt"),
        ('quo"te\\s.txt', "quo_te_s.txt", "quo%22te%5Cs.txt"),
        ("résumé.pdf", "r_sum_.pdf", "r%C3%A9sum%C3%A9.pdf"),
        ("a;b,c.txt", "a;b,c.txt", "a%3Bb%2Cc.txt"),
    ],
)
def test_content_disposition_has_ascii_fallback_and_utf8_name(name, fallback, encoded):
    header = content_disposition(False, name)
    assert header == f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
    assert "\r" not in header and "\n" not in header
