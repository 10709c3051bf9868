"""POST /api/upload over real HTTP: streaming, limits, dedup, errors."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from tornado import httpclient, iostream, tcpclient

from handlers import Services
from tests.conftest import TEST_LIMIT, multipart, payload

MIB = 1024 * 1024


async def upload(
    http_client: Any, base_url: str, content: bytes, name: str = "a.bin"
) -> httpclient.HTTPResponse:
    body, headers = multipart([("file", name, content)])
    return await http_client.fetch(
        base_url + "/api/upload",
        method="POST",
        body=body,
        headers=headers,
        raise_error=False,
    )


def error_of(response: httpclient.HTTPResponse) -> str:
    document = json.loads(response.body)
    assert set(document) == {"code", "error"}
    assert isinstance(document["error"], str) and document["error"]
    return str(document["code"])


async def raw_exchange(base_url: str, head: bytes, body_chunks: list[bytes]) -> bytes:
    """Send a hand-written request, then read whatever the server answers."""
    host, port = base_url.split("//")[1].split(":")
    stream = await tcpclient.TCPClient().connect(host, int(port))
    await stream.write(head)
    try:
        for chunk in body_chunks:
            await stream.write(chunk)
    except iostream.StreamClosedError:
        pass
    try:
        return await asyncio.wait_for(stream.read_until_close(), timeout=4)
    except iostream.StreamClosedError:
        return b""
    finally:
        stream.close()


def spool_files(services: Services) -> list[Path]:
    return list(services.settings.spool_folder.glob("imgyx-*"))


def png_image() -> bytes:
    output = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 120, 220)).save(output, "PNG")
    return output.getvalue()


@pytest.mark.gen_test
async def test_upload_new_file_returns_201_with_the_record(http_client, base_url):
    content = payload(5000)
    response = await upload(http_client, base_url, content, "notes.txt")
    assert response.code == 201
    document = json.loads(response.body)
    file_id = document["id"]
    assert document == {
        "id": file_id,
        "url": f"/{file_id}",
        "preview_url": f"/p/{file_id}",
        "file_name": "notes.txt",
        "size": 5000,
        "mimetype": document["mimetype"],
        "created_at": document["created_at"],
        "thumbnail_url": None,
        "duplicate": False,
        "delete_token": document["delete_token"],
    }
    assert len(document["delete_token"]) >= 32
    assert len(file_id) >= 5 and file_id.isalnum()
    assert document["created_at"].endswith("Z")


@pytest.mark.gen_test
async def test_upload_takes_mime_type_from_content_not_client(http_client, base_url):
    png = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + payload(200)
    response = await upload(http_client, base_url, png, "fake.txt")
    assert json.loads(response.body)["mimetype"] == "image/png"


@pytest.mark.gen_test
async def test_same_bytes_under_another_name_returns_200_with_first_record(
    http_client, base_url
):
    content = payload(3000, seed=1)
    first = json.loads((await upload(http_client, base_url, content, "one.bin")).body)
    again = await upload(http_client, base_url, content, "two.bin")
    assert again.code == 200
    document = json.loads(again.body)
    assert document["id"] == first["id"]
    assert document["file_name"] == "one.bin"
    assert document["duplicate"] is True
    assert "delete_token" not in document


@pytest.mark.gen_test
async def test_simultaneous_identical_uploads_settle_on_one_record(
    http_client, base_url, services
):
    content = payload(150_000, seed=2)
    responses = await asyncio.gather(
        *(upload(http_client, base_url, content) for _ in range(6))
    )
    ids = {json.loads(response.body)["id"] for response in responses}
    assert len(ids) == 1
    assert sorted(response.code for response in responses) == [200] * 5 + [201]
    stats = json.loads((await http_client.fetch(base_url + "/api/stats")).body)
    assert stats["total_files"] == 1
    objects = [info async for info in services.store.store.list()]
    assert len(objects) == 1


@pytest.mark.gen_test
async def test_exactly_the_limit_is_accepted(http_client, base_url):
    response = await upload(http_client, base_url, payload(TEST_LIMIT, seed=3))
    assert response.code == 201
    assert json.loads(response.body)["size"] == TEST_LIMIT


@pytest.mark.gen_test
async def test_one_byte_over_the_limit_returns_413(http_client, base_url, services):
    response = await upload(http_client, base_url, payload(TEST_LIMIT + 1, seed=4))
    assert response.code == 413
    assert error_of(response) == "FILE_TOO_LARGE"
    assert spool_files(services) == []


@pytest.mark.gen_test
async def test_declared_length_over_limit_is_refused_before_the_body(
    http_server, base_url, services
):
    head = (
        b"POST /api/upload HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 900000000\r\n\r\n"
    )
    answer = await raw_exchange(base_url, head, [])
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413 ")
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["code"] == "FILE_TOO_LARGE"
    assert spool_files(services) == []


@pytest.mark.gen_test
async def test_chunked_body_over_limit_is_refused_as_soon_as_seen(
    http_server, base_url, services
):
    head = (
        b"POST /api/upload HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
    filler = payload(TEST_LIMIT + 70_000, seed=5)
    chunks = [b"%x\r\n%s\r\n" % (len(part), part)]
    chunks += [
        b"%x\r\n%s\r\n" % (len(piece), piece)
        for piece in (filler[i : i + 32768] for i in range(0, len(filler), 32768))
    ]
    # The body never ends: the answer must come before the end of the body does.
    answer = await raw_exchange(base_url, head, chunks)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"FILE_TOO_LARGE"' in answer
    await asyncio.sleep(0.05)
    assert spool_files(services) == []


@pytest.mark.settings(max_upload_bytes=20 * 1024 * 1024)
@pytest.mark.gen_test(timeout=30)
async def test_default_limit_accepts_20_mib_and_refuses_one_byte_more(
    http_client, base_url
):
    limit = 20 * 1024 * 1024
    accepted = await upload(http_client, base_url, payload(limit, seed=6))
    assert accepted.code == 201
    refused = await upload(http_client, base_url, payload(limit + 1, seed=7))
    assert refused.code == 413


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        pytest.param([], "NO_FILE", id="no parts"),
        pytest.param([("other", None, b"x")], "NO_FILE", id="no file part"),
        pytest.param([("file", "empty.txt", b"")], "NO_FILE", id="empty file"),
        pytest.param(
            [("file", "a", b"one"), ("file", "b", b"two")],
            "INVALID_BODY",
            id="two files",
        ),
    ],
)
@pytest.mark.gen_test
async def test_multipart_without_one_usable_file_is_refused(
    http_client, base_url, fields, code
):
    body, headers = multipart(fields)
    response = await http_client.fetch(
        base_url + "/api/upload",
        method="POST",
        body=body,
        headers=headers,
        raise_error=False,
    )
    assert response.code == 400
    assert error_of(response) == code


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(
            b"this is not multipart at all" * 10,
            "multipart/form-data; boundary=zz",
            id="garbage",
        ),
        pytest.param(
            b'--zz\r\nContent-Disposition: form-data; name="file"; '
            b'filename="a"\r\n\r\nhalf a file',
            "multipart/form-data; boundary=zz",
            id="truncated",
        ),
        pytest.param(b"x", "multipart/form-data", id="no boundary"),
        pytest.param(b"{not json", "application/json", id="bad json"),
        pytest.param(b"\xff\xfe", "application/json", id="not utf-8"),
    ],
)
@pytest.mark.gen_test
async def test_malformed_body_returns_invalid_body(
    http_client, base_url, services, body, content_type
):
    response = await http_client.fetch(
        base_url + "/api/upload",
        method="POST",
        body=body,
        headers={"Content-Type": content_type},
        raise_error=False,
    )
    assert response.code == 400
    assert error_of(response) == "INVALID_BODY"
    assert spool_files(services) == []


@pytest.mark.parametrize(
    "document",
    [
        b"{}",
        b'{"url": 5}',
        b'{"url": ""}',
        b"[]",
        b'"http://x"',
        b'{"URL": "http://x"}',
    ],
)
@pytest.mark.gen_test
async def test_json_without_url_string_returns_no_url(http_client, base_url, document):
    response = await http_client.fetch(
        base_url + "/api/upload",
        method="POST",
        body=document,
        headers={"Content-Type": "application/json"},
        raise_error=False,
    )
    assert response.code == 400
    assert error_of(response) == "NO_URL"


@pytest.mark.gen_test
async def test_json_url_to_our_own_machine_is_refused(http_client, base_url):
    response = await http_client.fetch(
        base_url + "/api/upload",
        method="POST",
        body=b'{"url": "http://127.0.0.1:1/secret"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
        raise_error=False,
    )
    assert response.code == 400
    assert error_of(response) == "INVALID_URL"


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "image/png"],
)
@pytest.mark.gen_test
async def test_other_body_types_return_415(http_client, base_url, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = await http_client.fetch(
        base_url + "/api/upload",
        method="POST",
        body=b"abc",
        headers=headers,
        raise_error=False,
    )
    assert response.code == 415
    assert error_of(response) == "UNSUPPORTED_CONTENT_TYPE"


@pytest.mark.gen_test
async def test_hostile_file_name_is_sanitised(http_client, base_url):
    name = "../../etc/\u202epasswd\x01.txt"
    body, headers = multipart([("file", name, payload(100, seed=8))])
    response = await http_client.fetch(
        base_url + "/api/upload", method="POST", body=body, headers=headers
    )
    assert json.loads(response.body)["file_name"] == "passwd.txt"


@pytest.mark.settings(rate_limit_per_hour=3)
@pytest.mark.gen_test
async def test_uploads_over_the_rate_limit_return_429(http_client, base_url):
    codes = []
    for seed in range(3):
        response = await upload(http_client, base_url, payload(100, seed=20 + seed))
        codes.append(response.code)
        assert response.headers["X-RateLimit-Limit"] == "3"
        assert response.headers["X-RateLimit-Remaining"] == str(2 - seed)
    refused = await upload(http_client, base_url, payload(100, seed=30))
    assert codes == [201, 201, 201]
    assert refused.code == 429
    assert error_of(refused) == "RATE_LIMITED"
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert int(refused.headers["X-RateLimit-Reset"]) == int(
        refused.headers["Retry-After"]
    )


@pytest.mark.settings(rate_limit_per_hour=1, trusted_proxies=())
@pytest.mark.gen_test
async def test_forwarded_for_is_ignored_without_trusted_proxies(http_client, base_url):
    body, headers = multipart([("file", "a", payload(100, seed=40))])
    first = await http_client.fetch(
        base_url + "/api/upload",
        method="POST",
        body=body,
        headers={**headers, "X-Forwarded-For": "203.0.113.1"},
        raise_error=False,
    )
    body, headers = multipart([("file", "a", payload(100, seed=41))])
    second = await http_client.fetch(
        base_url + "/api/upload",
        method="POST",
        body=body,
        headers={**headers, "X-Forwarded-For": "203.0.113.2"},
        raise_error=False,
    )
    assert (first.code, second.code) == (201, 429)


@pytest.mark.gen_test
async def test_unexpected_failure_returns_upload_failed_and_stores_nothing(
    http_client, base_url, services, monkeypatch, tmp_path
):
    from models import files as catalog

    def broken_create(*args):
        raise RuntimeError("database on fire")

    monkeypatch.setattr(catalog, "create", broken_create)
    response = await upload(http_client, base_url, payload(1000, seed=50))
    assert response.code == 500
    assert error_of(response) == "UPLOAD_FAILED"
    assert b"fire" not in response.body and b"Traceback" not in response.body
    assert [info async for info in services.store.store.list()] == []
    assert spool_files(services) == []


@pytest.mark.gen_test
async def test_client_gone_mid_upload_leaves_no_spool_and_no_record(
    http_server, http_client, base_url, services
):
    host, port = base_url.split("//")[1].split(":")
    stream = await tcpclient.TCPClient().connect(host, int(port))
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
    await stream.write(
        b"POST /api/upload HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 150000\r\n\r\n" + part + payload(50_000, seed=60)
    )
    for _ in range(50):
        if spool_files(services):
            break
        await asyncio.sleep(0.01)
    assert len(spool_files(services)) == 1
    stream.close()
    for _ in range(100):
        if not spool_files(services):
            break
        await asyncio.sleep(0.01)
    assert spool_files(services) == []
    stats = await http_client.fetch(base_url + "/api/stats")
    assert json.loads(stats.body)["total_files"] == 0


@pytest.mark.gen_test(timeout=30)
@pytest.mark.settings(max_upload_bytes=3 * MIB)
async def test_large_upload_spools_only_ciphertext_and_reads_back_whole(
    http_server, http_client, base_url, services
):
    content = payload(2 * MIB + 12345, seed=70)
    host, port = base_url.split("//")[1].split(":")
    stream = await tcpclient.TCPClient().connect(host, int(port))
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
    tail = b"\r\n--b--\r\n"
    await stream.write(
        b"POST /api/upload HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: %d\r\n\r\n"
        % (len(part) + len(content) + len(tail))
        + part
        + content[: 3 * MIB // 2]
    )
    for _ in range(200):
        if sum(path.stat().st_size for path in spool_files(services)) > MIB:
            break
        await asyncio.sleep(0.01)
    spooled = b"".join(path.read_bytes() for path in spool_files(services))
    assert len(spooled) > MIB
    assert content[MIB // 2 : MIB // 2 + 64] not in spooled

    await stream.write(content[3 * MIB // 2 :] + tail)
    answer = await asyncio.wait_for(stream.read_until(b"\r\n\r\n"), timeout=20)
    assert answer.startswith(b"HTTP/1.1 201")
    length = int(answer.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    document = json.loads(await stream.read_bytes(length))
    stream.close()
    stored = await http_client.fetch(base_url + document["url"])
    assert stored.body == content
    assert spool_files(services) == []


@pytest.mark.gen_test
async def test_image_upload_leaves_no_spool_files(http_client, base_url, services):
    response = await upload(http_client, base_url, png_image(), "picture.png")

    assert response.code == 201
    assert json.loads(response.body)["thumbnail_url"] is not None
    assert spool_files(services) == []
