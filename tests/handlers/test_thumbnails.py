"""Thumbnails over HTTP: made at upload, linked from the answers, served at /t/ID with
caching headers, stored encrypted; hostile or slow images never fail an upload."""

from __future__ import annotations

import functools
import gc
import io
import json
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, features
from tornado import httpclient

from handlers import Services
from tests.conftest import multipart

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
NEEDS_AVIF = pytest.mark.skipif(not features.check("avif"), reason="no AVIF in Pillow")
LOCAL_ONLY = pytest.mark.parametrize(
    "backend", [{"storage": "local"}], ids=["local-sqlite"]
)


def picture(
    size: tuple[int, int] = (1600, 1200), image_format: str = "JPEG", mode: str = "RGB"
) -> bytes:
    """A gradient (so each size and format gives different bytes) in `mode`."""
    image = Image.linear_gradient("L").resize(size).convert(mode)
    output = io.BytesIO()
    image.save(output, image_format)
    return output.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    checksum = zlib.crc32(kind + body)
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", checksum)


def png_of(
    width: int, height: int, bit_depth: int, colour_type: int, data: bytes
) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def declared_png(width: int, height: int) -> bytes:
    """A tiny 1-bit grey PNG whose header claims `width` x `height` pixels."""
    return png_of(width, height, 1, 0, zlib.compress(bytes(64)))


@functools.cache
def big_png() -> bytes:
    """A valid 6000 x 6000 RGB PNG of one colour: 480 kB that decode to 108 MB."""
    side = 6000
    packer = zlib.compressobj(1)
    first = packer.compress(b"\x00" + bytes((30, 60, 90)) * side)
    same_as_above = b"\x02" + bytes(3 * side)  # filter "Up", no difference
    rest = [packer.compress(same_as_above) for _ in range(side - 1)]
    return png_of(side, side, 8, 2, first + b"".join(rest) + packer.flush())


def webp_canvas(side: int) -> bytes:
    """A 38-byte lossless WebP of one colour that declares `side` x `side` pixels:
    such a stream costs no bits per pixel, so only its header changes with size."""
    output = io.BytesIO()
    tiny = Image.new("RGB", (16, 16), (9, 90, 200))
    tiny.save(output, "WEBP", lossless=True, quality=0, method=0)
    data = bytearray(output.getvalue())
    assert data[12:16] == b"VP8L" and data[20] == 0x2F
    (bits,) = struct.unpack_from("<I", data, 21)
    bits = (bits & ~0x0FFF_FFFF) | (side - 1) | ((side - 1) << 14)
    struct.pack_into("<I", data, 21, bits)
    return bytes(data)


def corrupt_avif() -> bytes:
    """A valid AVIF whose primary-item box names an item that does not exist."""
    output = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(output, "AVIF")
    data = bytearray(output.getvalue())
    box = data.index(b"pitm")
    data[box + 8 : box + 10] = b"\x00\x07"
    return bytes(data)


def psd(width: int, height: int) -> bytes:
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)
    return header + sections + struct.pack(">H", 0) + bytes(width * height * 3)


HOSTILE = {
    "truncated-jpeg": lambda: picture()[:-200],
    "half-a-jpeg": lambda: picture()[: len(picture()) // 2],
    "png-signature-then-garbage": lambda: PNG_SIGNATURE + bytes(range(256)) * 4,
    "png-declaring-200000-squared": lambda: declared_png(200_000, 200_000),
    "png-declaring-just-over-the-limit": lambda: declared_png(10_000, 9_000),
    "webp-declaring-16000-squared": lambda: webp_canvas(16_000),
    "avif-without-its-image": corrupt_avif,
    "gif-header-then-garbage": lambda: b"GIF89a\xff\x7f" + bytes(300),
    "svg": lambda: (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="900" height="900">'
        b'<rect width="900" height="900" fill="red"/></svg>'
    ),
    "ico": lambda: picture((64, 64), "ICO"),
    "psd": lambda: psd(120, 80),
}


async def upload(
    http_client: Any, base_url: str, content: bytes, name: str = "image"
) -> tuple[httpclient.HTTPResponse, dict]:
    body, headers = multipart([("file", name, content)])
    response = await http_client.fetch(
        base_url + "/api/upload",
        method="POST",
        body=body,
        headers=headers,
        raise_error=False,
        request_timeout=60,
    )
    return response, json.loads(response.body)


async def get(
    http_client: Any, base_url: str, path: str, **headers: str
) -> httpclient.HTTPResponse:
    return await http_client.fetch(base_url + path, headers=headers, raise_error=False)


async def info(http_client: Any, base_url: str, file_id: str) -> dict:
    response = await get(http_client, base_url, f"/api/info?id={file_id}")
    assert response.code == 200
    return json.loads(response.body)


def image_of(response: httpclient.HTTPResponse) -> Image.Image:
    image = Image.open(io.BytesIO(response.body))
    image.load()
    return image


@pytest.mark.parametrize(
    ("image_format", "mode"), [("JPEG", "RGB"), ("PNG", "RGB"), ("GIF", "L")]
)
@pytest.mark.gen_test
async def test_an_image_upload_links_its_thumbnail_in_upload_and_info_answers(
    http_client, base_url, image_format, mode
):
    response, file = await upload(
        http_client, base_url, picture((900, 600), image_format, mode)
    )

    assert response.code == 201
    assert file["thumbnail_url"] == f"/t/{file['id']}"
    assert (await info(http_client, base_url, file["id"]))["thumbnail_url"] == (
        f"/t/{file['id']}"
    )


@pytest.mark.gen_test
async def test_the_thumbnail_is_a_jpeg_at_most_480_pixels_long(http_client, base_url):
    _, file = await upload(http_client, base_url, picture((1600, 1200)))

    response = await get(http_client, base_url, file["thumbnail_url"])

    assert response.code == 200
    assert response.headers["Content-Type"] == "image/jpeg"
    image = image_of(response)
    assert (image.format, image.size) == ("JPEG", (480, 360))


@pytest.mark.gen_test
async def test_a_transparent_image_gets_a_png_thumbnail(http_client, base_url):
    _, file = await upload(http_client, base_url, picture((960, 960), "PNG", "LA"))

    response = await get(http_client, base_url, file["thumbnail_url"])

    assert response.headers["Content-Type"] == "image/png"
    image = image_of(response)
    assert (image.format, image.mode, image.size) == ("PNG", "RGBA", (480, 480))


@pytest.mark.settings(thumbnail_size=64)
@pytest.mark.gen_test
async def test_the_thumbnail_size_setting_bounds_the_long_side(http_client, base_url):
    _, file = await upload(http_client, base_url, picture((800, 1000)))

    response = await get(http_client, base_url, file["thumbnail_url"])

    assert image_of(response).size == (51, 64)


@pytest.mark.gen_test
async def test_thumbnail_headers_allow_long_caching_and_hotlinking(
    http_client, base_url
):
    _, file = await upload(http_client, base_url, picture())

    response = await get(http_client, base_url, file["thumbnail_url"])

    headers = response.headers
    directives = {part.strip() for part in headers["Cache-Control"].split(",")}
    assert {"public", "immutable", "max-age=31536000"} <= directives
    assert headers["ETag"].startswith('"') and headers["ETag"].endswith('"')
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "sandbox" in headers["Content-Security-Policy"]


@pytest.mark.gen_test
async def test_the_thumbnail_etag_differs_from_the_files(http_client, base_url):
    _, file = await upload(http_client, base_url, picture())

    thumbnail = await get(http_client, base_url, file["thumbnail_url"])
    raw = await get(http_client, base_url, file["url"])

    assert thumbnail.headers["ETag"] != raw.headers["ETag"]


@pytest.mark.parametrize(
    "validator",
    ["{etag}", "W/{etag}", '"stale", {etag}', "*"],
    ids=["same", "weak", "in-a-list", "any"],
)
@pytest.mark.gen_test
async def test_a_matching_if_none_match_answers_304_without_a_body(
    http_client, base_url, validator
):
    _, file = await upload(http_client, base_url, picture())
    first = await get(http_client, base_url, file["thumbnail_url"])
    etag = first.headers["ETag"]

    again = await get(
        http_client,
        base_url,
        file["thumbnail_url"],
        **{"If-None-Match": validator.format(etag=etag)},
    )

    assert again.code == 304
    assert again.body == b""
    assert again.headers["ETag"] == etag
    assert "immutable" in again.headers["Cache-Control"]


@pytest.mark.gen_test
async def test_a_stale_if_none_match_gets_the_thumbnail(http_client, base_url):
    _, file = await upload(http_client, base_url, picture())
    first = await get(http_client, base_url, file["thumbnail_url"])

    again = await get(
        http_client, base_url, file["thumbnail_url"], **{"If-None-Match": '"stale"'}
    )

    assert again.code == 200
    assert again.body == first.body


@pytest.mark.gen_test
async def test_a_duplicate_upload_answers_the_same_thumbnail(http_client, base_url):
    content = picture((700, 700))
    _, first = await upload(http_client, base_url, content)

    response, second = await upload(http_client, base_url, content, "again.jpg")

    assert response.code == 200
    assert second["duplicate"] is True
    assert second["thumbnail_url"] == first["thumbnail_url"] == f"/t/{first['id']}"


@pytest.mark.gen_test
async def test_a_file_that_is_not_an_image_has_no_thumbnail(http_client, base_url):
    response, file = await upload(http_client, base_url, b"plain words\n" * 50, "a.txt")

    thumbnail = await get(http_client, base_url, f"/t/{file['id']}")

    assert response.code == 201
    assert file["thumbnail_url"] is None
    assert (await info(http_client, base_url, file["id"]))["thumbnail_url"] is None
    assert thumbnail.code == 404
    assert thumbnail.headers["Content-Type"].startswith("application/json")
    assert json.loads(thumbnail.body)["code"] == "NOT_FOUND"


@pytest.mark.parametrize("path", ["/t/abcde12345", "/t/ZZZZZ"])
@pytest.mark.gen_test
async def test_the_thumbnail_of_an_unknown_id_is_not_found(http_client, base_url, path):
    response = await get(http_client, base_url, path)

    assert response.code == 404
    assert json.loads(response.body)["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=NEEDS_AVIF) if "avif" in name else name
        for name in sorted(HOSTILE)
    ],
)
@pytest.mark.gen_test
async def test_a_hostile_image_is_stored_without_a_thumbnail(
    http_client, base_url, name
):
    content = HOSTILE[name]()

    response, file = await upload(http_client, base_url, content, name)

    assert response.code == 201, file
    assert file["thumbnail_url"] is None
    assert (await get(http_client, base_url, f"/t/{file['id']}")).code == 404
    raw = await get(http_client, base_url, file["url"])
    assert raw.body == content


@LOCAL_ONLY
@pytest.mark.settings(max_upload_bytes=1_000_000, thumbnail_timeout=60.0)
@pytest.mark.parametrize(
    "build",
    [big_png, lambda: webp_canvas(6000)],
    ids=["png-6000-squared", "webp-6000-squared"],
)
@pytest.mark.gen_test(timeout=90)
async def test_other_requests_answer_at_once_while_an_image_decodes(
    http_client, base_url, build
):
    body, headers = multipart([("file", "slow", build())])
    # The server runs in this test's process: a full garbage collection of a long
    # test session's heap (hundreds of ms) is not what this measures.
    gc.collect()
    gc.disable()
    try:
        pending = http_client.fetch(
            base_url + "/api/upload",
            method="POST",
            body=body,
            headers=headers,
            request_timeout=90,
        )

        waits = []
        while not pending.done():
            start = time.monotonic()
            stats = await get(http_client, base_url, "/api/stats")
            waits.append(time.monotonic() - start)
            assert stats.code == 200
        answer = json.loads((await pending).body)
    finally:
        gc.enable()

    assert answer["thumbnail_url"] is not None  # it was decoded all the way
    assert len(waits) >= 5
    # "At once": a quarter of a second even on a busy machine (the loop polls
    # without pause, so any stall of the IO loop lands in some wait).
    assert max(waits) < 0.25, sorted(waits)[-5:]


@LOCAL_ONLY
@pytest.mark.settings(max_upload_bytes=1_000_000, thumbnail_timeout=0.05)
@pytest.mark.gen_test(timeout=30)
async def test_an_image_slower_than_the_timeout_is_stored_without_thumbnail(
    http_client, base_url
):
    # The same PNG gets its thumbnail with time enough (the test above).
    response, file = await upload(http_client, base_url, big_png(), "big.png")

    assert response.code == 201
    assert file["mimetype"] == "image/png"
    assert file["thumbnail_url"] is None
    assert (await get(http_client, base_url, f"/t/{file['id']}")).code == 404


def looks_plain(data: bytes, plaintexts: list[bytes]) -> bool:
    """Whether stored bytes show an image signature or any plaintext's start."""
    return (
        data.startswith(JPEG_MAGIC)
        or PNG_SIGNATURE in data
        or any(plain[:64] in data for plain in plaintexts)
    )


async def stored_objects(services: Services) -> list[bytes]:
    """Every object as the store holds it: ciphertext, if all is well."""
    store = services.store.store
    objects = []
    async for entry in store.list():
        objects.append(
            b"".join([chunk async for chunk in store.get(entry.key, 0, entry.size)])
        )
    return objects


async def upload_a_jpeg_and_a_transparent_png(http_client, base_url) -> list[bytes]:
    """Two images, two thumbnails; returns the plaintext of all four."""
    plaintexts = []
    for content in (picture((900, 700)), picture((700, 900), "PNG", "LA")):
        _, file = await upload(http_client, base_url, content)
        thumbnail = await get(http_client, base_url, file["thumbnail_url"])
        plaintexts += [content, thumbnail.body]
    assert plaintexts[1].startswith(JPEG_MAGIC)
    assert plaintexts[3].startswith(PNG_SIGNATURE)
    return plaintexts


@pytest.mark.gen_test
async def test_thumbnails_are_stored_encrypted(http_client, base_url, services):
    plaintexts = await upload_a_jpeg_and_a_transparent_png(http_client, base_url)

    objects = await stored_objects(services)

    assert len(objects) == 4
    assert [looks_plain(stored, plaintexts) for stored in objects] == [False] * 4


@LOCAL_ONLY
@pytest.mark.gen_test
async def test_no_object_file_on_disk_holds_an_image(http_client, base_url, settings):
    plaintexts = await upload_a_jpeg_and_a_transparent_png(http_client, base_url)

    folder = Path(settings.data_dir, "objects")
    files = [path for path in folder.rglob("*") if path.is_file()]

    assert len(files) == 4
    assert [looks_plain(path.read_bytes(), plaintexts) for path in files] == [False] * 4
