"""Raw serving like a static file server: validators, 304, 416, If-Range, HEAD,
content policy by type, hostile names, a separate content origin, timeouts."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from tornado import iostream, tcpclient

from handlers.content import delivery
from tests.conftest import multipart, payload

SIZE = 150_000


async def stored(http_client, base_url, content: bytes, name: str = "a.bin") -> dict:
    body, headers = multipart([("file", name, content)])
    response = await http_client.fetch(
        base_url + "/api/upload", method="POST", body=body, headers=headers
    )
    return json.loads(response.body)


async def fetch(http_client, base_url, path, method="GET", **headers):
    headers = {name.replace("_", "-"): value for name, value in headers.items()}
    return await http_client.fetch(
        base_url + path,
        method=method,
        headers=headers,
        raise_error=False,
        follow_redirects=False,
    )


@pytest.mark.gen_test
async def test_validators_are_strong_stable_and_reveal_no_fingerprint(
    http_client, base_url, services
):
    from models import files as catalog

    file = await stored(http_client, base_url, payload(SIZE, seed=1))
    first = await fetch(http_client, base_url, file["url"])
    second = await fetch(http_client, base_url, file["url"] + ".jpg")
    etag = first.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert etag == second.headers["ETag"]
    record = await services.database.run(catalog.find, file["id"])
    assert record.fingerprint not in etag
    assert first.headers["Last-Modified"].endswith(" GMT")
    assert first.headers["Accept-Ranges"] == "bytes"
    assert first.headers["Cache-Control"] == "public, max-age=31536000, immutable"


@pytest.mark.settings(cache_max_age=600)
@pytest.mark.gen_test
async def test_cache_max_age_is_configurable(http_client, base_url):
    file = await stored(http_client, base_url, payload(100, seed=2))
    response = await fetch(http_client, base_url, file["url"])
    assert response.headers["Cache-Control"] == "public, max-age=600, immutable"


@pytest.mark.parametrize(
    "if_none_match", ["{etag}", "W/{etag}", '"other", {etag}', "*"]
)
@pytest.mark.gen_test
async def test_if_none_match_answers_304_and_counts_no_view(
    http_client, base_url, if_none_match
):
    file = await stored(http_client, base_url, payload(SIZE, seed=3))
    etag = (await fetch(http_client, base_url, file["url"], "HEAD")).headers["ETag"]
    response = await fetch(
        http_client,
        base_url,
        file["url"],
        If_None_Match=if_none_match.format(etag=etag),
    )
    assert response.code == 304
    assert response.body == b""
    assert response.headers["ETag"] == etag
    info = json.loads(
        (await fetch(http_client, base_url, f"/api/info?id={file['id']}")).body
    )
    assert info["views"] == 0


@pytest.mark.gen_test
async def test_if_none_match_with_another_tag_sends_the_file(http_client, base_url):
    file = await stored(http_client, base_url, payload(SIZE, seed=4))
    response = await fetch(http_client, base_url, file["url"], If_None_Match='"nope"')
    assert response.code == 200
    assert len(response.body) == SIZE


@pytest.mark.gen_test
async def test_if_modified_since_answers_304_unless_older(http_client, base_url):
    file = await stored(http_client, base_url, payload(100, seed=5))
    modified = (await fetch(http_client, base_url, file["url"], "HEAD")).headers[
        "Last-Modified"
    ]
    same = await fetch(http_client, base_url, file["url"], If_Modified_Since=modified)
    older = await fetch(
        http_client,
        base_url,
        file["url"],
        If_Modified_Since="Mon, 01 Jan 2001 00:00:00 GMT",
    )
    assert (same.code, older.code) == (304, 200)


@pytest.mark.parametrize(
    "header", ["bytes=150000-", "bytes=999999-1000000", "bytes=-0"]
)
@pytest.mark.gen_test
async def test_unsatisfiable_range_answers_416_with_the_size(
    http_client, base_url, header
):
    file = await stored(http_client, base_url, payload(SIZE, seed=6))
    response = await fetch(http_client, base_url, file["url"], Range=header)
    assert response.code == 416
    assert response.headers["Content-Range"] == f"bytes */{SIZE}"
    assert json.loads(response.body)["code"] == "RANGE_NOT_SATISFIABLE"


@pytest.mark.parametrize(
    "header",
    ["bytes=0-1,5-9", "items=0-5", "bytes=abc", "bytes=9-3", "bytes=-", "bytes=+1-2"],
)
@pytest.mark.gen_test
async def test_several_or_malformed_ranges_answer_the_whole_file(
    http_client, base_url, header
):
    content = payload(SIZE, seed=7)
    file = await stored(http_client, base_url, content)
    response = await fetch(http_client, base_url, file["url"], Range=header)
    assert response.code == 200
    assert response.body == content
    assert "Content-Range" not in response.headers


@pytest.mark.gen_test
async def test_if_range_serves_the_range_only_while_it_matches(http_client, base_url):
    content = payload(SIZE, seed=8)
    file = await stored(http_client, base_url, content)
    head = await fetch(http_client, base_url, file["url"], "HEAD")
    current = [head.headers["ETag"], head.headers["Last-Modified"]]
    stale = ['"stale"', "Mon, 01 Jan 2001 00:00:00 GMT", "W/" + head.headers["ETag"]]
    for validator in current:
        response = await fetch(
            http_client, base_url, file["url"], Range="bytes=10-19", If_Range=validator
        )
        assert (response.code, response.body) == (206, content[10:20])
    for validator in stale:
        response = await fetch(
            http_client, base_url, file["url"], Range="bytes=10-19", If_Range=validator
        )
        assert (response.code, len(response.body)) == (200, SIZE)


@pytest.mark.gen_test
async def test_only_reads_from_the_start_count_as_views(http_client, base_url):
    file = await stored(http_client, base_url, payload(SIZE, seed=9))
    await fetch(http_client, base_url, file["url"], Range="bytes=0-99")
    await fetch(http_client, base_url, file["url"], Range="bytes=100-199")
    await fetch(http_client, base_url, file["url"], Range="bytes=-10")
    info = json.loads(
        (await fetch(http_client, base_url, f"/api/info?id={file['id']}")).body
    )
    assert info["views"] == 1


@pytest.mark.parametrize("path_suffix", ["", ".png", "?inline"])
@pytest.mark.gen_test
async def test_head_sends_the_same_headers_as_get(http_client, base_url, path_suffix):
    file = await stored(http_client, base_url, payload(SIZE, seed=10))
    get = await fetch(http_client, base_url, file["url"] + path_suffix)
    head = await fetch(http_client, base_url, file["url"] + path_suffix, "HEAD")
    ignored = {"Date"}
    get_headers = {k: v for k, v in get.headers.get_all() if k not in ignored}
    head_headers = {k: v for k, v in head.headers.get_all() if k not in ignored}
    assert head_headers == get_headers
    assert head.body == b""


@pytest.mark.parametrize(
    ("stored_type", "inline_requested", "content_type", "inline"),
    [
        ("image/png", False, "image/png", True),
        ("image/jpeg", False, "image/jpeg", True),
        ("application/pdf", False, "application/pdf", True),
        ("video/mp4", False, "video/mp4", False),
        ("video/mp4", True, "video/mp4", True),
        ("audio/mpeg", True, "audio/mpeg", True),
        ("text/plain", False, "text/plain; charset=utf-8", False),
        ("text/plain", True, "text/plain; charset=utf-8", True),
        ("text/html", False, "application/octet-stream", False),
        ("text/html", True, "text/plain; charset=utf-8", True),
        ("Text/HTML; x=y", True, "text/plain; charset=utf-8", True),
        ("application/xhtml+xml", True, "text/plain; charset=utf-8", True),
        ("image/svg+xml", False, "application/octet-stream", False),
        ("image/svg+xml", True, "text/plain; charset=utf-8", True),
        ("text/xml", True, "text/plain; charset=utf-8", True),
        ("application/xml", False, "application/octet-stream", False),
        ("application/javascript", True, "text/plain; charset=utf-8", True),
        ("text/javascript", False, "application/octet-stream", False),
        ("application/x-unknown-thing", True, "application/octet-stream", False),
        ("application/x-shockwave-flash", True, "application/octet-stream", False),
        ("application/zip", True, "application/octet-stream", False),
        ("application/zip", False, "application/zip", False),
        ("", False, "application/octet-stream", False),
    ],
)
def test_delivery_allows_only_passive_types_inline(
    stored_type, inline_requested, content_type, inline
):
    how = delivery(stored_type, inline_requested)
    assert (how.content_type, how.inline) == (content_type, inline)


HOSTILE_NAMES = [
    b'quote"s and \\backslash.txt',
    b"line\r\nSet-Cookie: x=1.txt",
    b"nul\x00byte.txt",
    "right-to-left \u202egnp.exe".encode(),
    b"../../../etc/passwd",
    b"C:\\Windows\\win.ini",
    ("long" * 80 + ".txt").encode(),
    "ünïcødé 文件.txt".encode(),
    b"%22%0d%0a.txt",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.gen_test
async def test_hostile_names_never_break_the_header(http_client, base_url, name):
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; filename="'
        + name.replace(b"\r\n", b"%0D%0A").replace(b'"', b"%22")
        + b'"\r\n\r\n'
        + payload(300, seed=len(name))
        + f"\r\n--{boundary}--\r\n".encode()
    )
    upload = await http_client.fetch(
        base_url + "/api/upload",
        method="POST",
        body=body,
        raise_error=False,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert upload.code == 201
    file = json.loads(upload.body)
    response = await fetch(http_client, base_url, file["url"])
    assert response.code == 200
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="')
    assert "filename*=UTF-8''" in disposition
    assert all(32 <= ord(char) < 127 for char in disposition)
    assert "Set-Cookie" not in response.headers
    assert "\u202e" not in file["file_name"] and "/" not in file["file_name"]
    assert len(file["file_name"].encode()) <= 200


@pytest.mark.gen_test
async def test_name_that_is_not_utf8_is_refused_cleanly(
    http_client, base_url, services
):
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="bad \xff\xfe.txt"'
        b"\r\n\r\n" + payload(300, seed=12) + b"\r\n--b--\r\n"
    )
    response = await http_client.fetch(
        base_url + "/api/upload",
        method="POST",
        body=body,
        raise_error=False,
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert response.code == 400
    assert json.loads(response.body)["code"] == "INVALID_BODY"
    assert list(services.settings.spool_folder.glob("imgyx-*")) == []


@pytest.mark.gen_test
async def test_content_origin_receives_raw_requests_and_links(
    http_client, base_url, services
):
    import dataclasses

    port = base_url.rsplit(":", 1)[1]
    content_url = f"http://127.0.0.1:{port}"
    services.settings = dataclasses.replace(services.settings, content_url=content_url)
    file = await stored(http_client, base_url, payload(500, seed=11))
    assert file["url"] == f"{content_url}/{file['id']}"
    raw_path = "/" + file["id"] + ".png?inline"
    moved = await fetch(http_client, base_url, raw_path)
    assert moved.code == 302
    assert moved.headers["Location"] == content_url + raw_path
    served = await http_client.fetch(content_url + raw_path)
    assert served.code == 200 and len(served.body) == 500


@pytest.mark.settings(idle_timeout=1)
@pytest.mark.gen_test(timeout=10)
async def test_client_dribbling_headers_is_dropped(http_server, base_url):
    host, port = base_url.split("//")[1].split(":")
    stream = await tcpclient.TCPClient().connect(host, int(port))
    started = asyncio.get_running_loop().time()
    with pytest.raises(iostream.StreamClosedError):
        for piece in (
            b"GET /api/stats HTTP/1.1\r\n",
            b"Host: x\r\n",
            b"X-A: 1\r\n",
        ) * 20:
            await stream.write(piece)
            await asyncio.sleep(0.2)
        await stream.read_until_close()
    assert asyncio.get_running_loop().time() - started < 5
    stream.close()


@pytest.mark.settings(body_timeout=1)
@pytest.mark.gen_test(timeout=10)
async def test_client_dribbling_a_body_is_dropped(http_server, base_url, services):
    host, port = base_url.split("//")[1].split(":")
    stream = await tcpclient.TCPClient().connect(host, int(port))
    boundary = b"b"
    await stream.write(
        b"POST /api/upload HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n"
        b"Content-Length: 100000\r\n\r\n"
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
    )
    started = asyncio.get_running_loop().time()
    with pytest.raises(iostream.StreamClosedError):
        for _ in range(40):
            await stream.write(b"x" * 10)
            await asyncio.sleep(0.2)
    assert asyncio.get_running_loop().time() - started < 5
    stream.close()
    await asyncio.sleep(0.1)
    assert list(services.settings.spool_folder.glob("imgyx-*")) == []
