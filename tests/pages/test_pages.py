"""The pages over HTTP: status codes, the page policy, escaping, previews by type,
OpenGraph tags, view counts, the 404 page, the ShareX config and the plain form."""

from __future__ import annotations

import html
import io
import ipaddress
import json
import re
import struct
import urllib.parse
import zipfile

import markupsafe
import pytest
from PIL import Image

from tests.conftest import multipart

HOSTILE_NAMES = ['"><img src=x onerror=alert(1)>.txt', "{{7*7}}"]
PUBLIC = "https://files.example"
CONTENT = "https://usercontent.example"


async def upload(http_client, base_url, content: bytes, name: str) -> dict:
    # A backslash-escaped quoted-string, so names with quotes arrive intact.
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    body, headers = multipart([("file", quoted, content)])
    response = await http_client.fetch(
        base_url + "/api/upload", method="POST", body=body, headers=headers
    )
    return json.loads(response.body)


async def get(http_client, base_url, path: str, **options):
    return await http_client.fetch(base_url + path, raise_error=False, **options)


async def preview(http_client, base_url, content: bytes, name: str):
    file = await upload(http_client, base_url, content, name)
    response = await get(http_client, base_url, f"/p/{file['id']}")
    assert response.code == 200
    return file, response.body.decode()


def policy(response) -> dict[str, str]:
    header = response.headers["Content-Security-Policy"]
    pairs = (part.strip().split(" ", 1) for part in header.split(";"))
    return {name: value for name, value in pairs}


def meta(page: str, name: str) -> str | None:
    match = re.search(
        rf'<meta (?:property|name)="{re.escape(name)}" content="([^"]*)"', page
    )
    return html.unescape(match.group(1)) if match else None


def png(width: int = 40, height: int = 30) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 200)).save(out, "PNG")
    return out.getvalue()


def pdf() -> bytes:
    return b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"


def webm() -> bytes:
    """An EBML header with the webm doctype: enough for libmagic to say video/webm."""
    header = "1A45DFA39F4286810142F7810142F2810442F381084282847765626D4287810442858102"
    return bytes.fromhex(header) + bytes.fromhex("18538067") + bytes(64)


def wav() -> bytes:
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 44)
        + b"WAVEfmt "
        + fmt
        + b"data\x08\0\0\0"
        + bytes(8)
    )


def zip_archive() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("a.txt", "hello")
    return out.getvalue()


@pytest.mark.parametrize(
    ("path", "status"),
    [("/", 200), ("/docs", 200), ("/p/NoSuchFile", 404), ("preview", 200)],
)
@pytest.mark.gen_test
async def test_pages_are_html_with_the_page_policy(http_client, base_url, path, status):
    if path == "preview":
        file = await upload(http_client, base_url, b"plain words\n", "a.txt")
        path = f"/p/{file['id']}"
    response = await get(http_client, base_url, path)
    assert response.code == status
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    rules = policy(response)
    assert rules["default-src"] == "'none'"
    assert rules["frame-ancestors"] == "'none'"
    assert rules["form-action"] == "'self'"
    assert rules["base-uri"] == "'none'"
    assert rules["object-src"] == rules["frame-src"] == "'none'"
    assert rules["connect-src"] == "'self'"
    assert "unsafe" not in response.headers["Content-Security-Policy"]


@pytest.mark.gen_test
async def test_scripts_and_styles_load_only_from_static(http_client, base_url):
    rules = policy(await get(http_client, base_url, "/"))
    assert rules["script-src"] == f"{base_url}/static/"
    assert rules["style-src"] == f"{base_url}/static/"
    assert rules["img-src"] == rules["media-src"] == "'self'"


@pytest.mark.gen_test
async def test_pages_have_no_inline_script_or_style(http_client, base_url):
    file = await upload(http_client, base_url, png(), "blue.png")
    for path in ("/", "/docs", f"/p/{file['id']}", "/p/NoSuchFile"):
        page = (await get(http_client, base_url, path)).body.decode()
        assert re.findall(r"<script(?![^>]* src=)", page) == []
        assert "<style" not in page
        assert " style=" not in page


@pytest.mark.settings(content_url=CONTENT)
@pytest.mark.gen_test
async def test_the_content_origin_is_allowed_for_images_and_media(
    http_client, base_url
):
    rules = policy(await get(http_client, base_url, "/"))
    assert rules["img-src"] == rules["media-src"] == f"'self' {CONTENT}"


@pytest.mark.gen_test
async def test_a_pdf_preview_embeds_the_pdf_and_allows_only_that_object(
    http_client, base_url
):
    file = await upload(http_client, base_url, pdf(), "doc.pdf")
    response = await get(http_client, base_url, f"/p/{file['id']}")
    assert policy(response)["object-src"] == policy(response)["frame-src"] == "'self'"
    assert f'<object class="pdf-frame" data="/{file["id"]}" type="application/pdf"' in (
        response.body.decode()
    )


@pytest.mark.settings(max_upload_bytes=3 * 1024 * 1024)
@pytest.mark.gen_test
async def test_home_page_shows_the_live_size_limit(http_client, base_url):
    page = (await get(http_client, base_url, "/")).body.decode()
    assert 'data-max-bytes="3145728"' in page
    assert "Up to <strong>3 MB</strong> per file" in page


@pytest.mark.gen_test
async def test_home_page_works_as_a_plain_form(http_client, base_url):
    page = (await get(http_client, base_url, "/")).body.decode()
    assert (
        'method="post" action="/upload"\n        enctype="multipart/form-data"' in page
    )
    assert '<input id="file-input" class="file-input" type="file" name="file">' in page
    assert '<input id="url-input" name="url" type="url"' in page


@pytest.mark.gen_test
async def test_preview_shows_name_size_type_date_and_views(http_client, base_url):
    file, page = await preview(http_client, base_url, b"x" * 3000 + b"\n", "notes.txt")
    assert '<h1 id="file-name" class="file-name">notes.txt</h1>' in page
    assert "<dd>2.9 KB</dd>" in page
    assert "<code>text/plain</code>" in page
    assert f'<time datetime="{file["created_at"]}">' in page
    assert "<dt>Views</dt><dd>1</dd>" in page
    assert f'href="/{file["id"]}" download>Download</a>' in page


@pytest.mark.gen_test
async def test_each_render_counts_one_view(http_client, base_url, services):
    file, _ = await preview(http_client, base_url, b"count me\n", "count.txt")
    page = (await get(http_client, base_url, f"/p/{file['id']}")).body.decode()
    assert "<dt>Views</dt><dd>2</dd>" in page
    assert services.views.pending(file["id"]) == 2
    info = await get(http_client, base_url, f"/api/info?id={file['id']}")
    assert json.loads(info.body)["views"] == 2


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.gen_test
async def test_hostile_names_are_shown_as_text(http_client, base_url, name):
    file, page = await preview(http_client, base_url, b"harmless\n", name)
    assert file["file_name"] == name
    assert "<img src=x" not in page
    assert ">49<" not in page
    escaped = str(markupsafe.escape(name))
    assert f'<h1 id="file-name" class="file-name">{escaped}</h1>' in page
    assert f"<title>{escaped} · imgyx</title>" in page
    assert meta(page, "og:title") == name


@pytest.mark.gen_test
async def test_text_with_a_script_tag_is_shown_as_text(http_client, base_url):
    _, page = await preview(
        http_client, base_url, b"<script>alert(1)</script>\n", "page.html"
    )
    assert "<script>alert(1)" not in page
    assert "&lt;</span><span" in page or "&lt;script&gt;" in page
    assert 'class="highlight"' in page


@pytest.mark.gen_test
async def test_source_code_is_highlighted(http_client, base_url):
    code = b"def greet(name):\n    return 'hello ' + name\n"
    _, page = await preview(http_client, base_url, code, "greet.py")
    assert '<span class="k">def</span>' in page
    assert '<p class="code-meta">Python</p>' in page
    assert "static/highlight.css" in page


@pytest.mark.gen_test
async def test_long_text_is_cut_with_a_note(http_client, base_url):
    line = b"0123456789abcdef" * 4 + b"\n"
    _, page = await preview(http_client, base_url, line * 2000, "long.txt")
    assert "Showing the first 64 KB of 127 KB." in page
    assert page.count("0123456789abcdef" * 4) == 64 * 1024 // len(line)


@pytest.mark.gen_test
async def test_a_cut_inside_a_character_shows_no_replacement_mark(
    http_client, base_url
):
    text = ("é" * 40_000).encode()  # two bytes each: the cut falls between them
    _, page = await preview(http_client, base_url, b"x" + text, "accents.txt")
    assert "\ufffd" not in page
    assert page.count("é") == (64 * 1024 - 1) // 2


@pytest.mark.gen_test
async def test_short_text_has_no_cut_note(http_client, base_url):
    _, page = await preview(http_client, base_url, b"short\n", "short.txt")
    assert "Showing the first" not in page


@pytest.mark.gen_test
async def test_image_preview_shows_the_image_linking_to_the_file(http_client, base_url):
    file, page = await preview(http_client, base_url, png(), "blue.png")
    image = file["thumbnail_url"] or file["url"]
    link = f'<a class="image-link" href="/{file["id"]}">'
    assert f'{link}<img src="{image}" alt="blue.png">' in page
    assert "<code>image/png</code>" in page
    assert f"![blue.png]({base_url}/{file['id']})" in page


@pytest.mark.parametrize(
    ("content", "name", "element"),
    [(webm(), "clip.webm", "<video"), (wav(), "tone.wav", "<audio")],
)
@pytest.mark.gen_test
async def test_video_and_audio_get_native_players(
    http_client, base_url, content, name, element
):
    file, page = await preview(http_client, base_url, content, name)
    assert (
        f'{element} id="player" controls preload="metadata" src="/{file["id"]}"' in page
    )


@pytest.mark.gen_test
async def test_other_types_show_an_icon(http_client, base_url):
    _, page = await preview(http_client, base_url, zip_archive(), "bundle.zip")
    assert 'class="icon icon-archive"' in page
    assert "Archive: no preview for this type." in page


@pytest.mark.gen_test
async def test_open_graph_tags_are_absolute(http_client, base_url):
    file, page = await preview(http_client, base_url, png(), "blue.png")
    image = file["thumbnail_url"] or file["url"]
    assert meta(page, "og:title") == "blue.png"
    assert meta(page, "og:description") == f"PNG image, {len(png())} bytes"
    assert meta(page, "og:url") == f"{base_url}/p/{file['id']}"
    assert meta(page, "og:image") == base_url + image
    assert meta(page, "twitter:card") == "summary_large_image"
    assert meta(page, "og:video") is None


@pytest.mark.gen_test
async def test_open_graph_names_the_video(http_client, base_url):
    file, page = await preview(http_client, base_url, webm(), "clip.webm")
    assert meta(page, "og:type") == "video.other"
    assert meta(page, "og:video") == f"{base_url}/{file['id']}"
    assert meta(page, "og:video:type") == "video/webm"


@pytest.mark.settings(public_url=PUBLIC)
@pytest.mark.gen_test
async def test_open_graph_uses_the_public_url(http_client, base_url):
    file, page = await preview(http_client, base_url, png(), "blue.png")
    image = file["thumbnail_url"] or file["url"]
    assert meta(page, "og:url") == f"{PUBLIC}/p/{file['id']}"
    assert meta(page, "og:image") == PUBLIC + image
    assert f'value="{PUBLIC}/{file["id"]}"' in page


@pytest.mark.settings(content_url=CONTENT)
@pytest.mark.gen_test
async def test_raw_links_point_to_the_content_origin(http_client, base_url):
    file, page = await preview(http_client, base_url, png(), "blue.png")
    assert meta(page, "og:image").startswith(CONTENT)
    assert f'href="{CONTENT}/{file["id"]}" download>' in page
    assert meta(page, "og:url") == f"{base_url}/p/{file['id']}"


@pytest.mark.gen_test
async def test_unknown_id_gets_an_html_404_page(http_client, base_url):
    response = await get(http_client, base_url, "/p/NoSuchFile")
    assert response.code == 404
    page = response.body.decode()
    assert page.startswith("<!doctype html>")
    assert '<h1 id="error-title">Not found</h1>' in page
    assert "No file with that ID." in page


@pytest.mark.settings(max_upload_bytes=1048576, rate_limit_per_hour=77)
@pytest.mark.gen_test
async def test_docs_show_the_live_limits_and_examples(http_client, base_url):
    page = (await get(http_client, base_url, "/docs")).body.decode()
    assert "1 MB (1048576 bytes)" in page
    assert "77 per hour" in page
    assert f'curl -F "file=@photo.png" {base_url}/api/upload' in page
    assert "requests.post(" in page
    assert "await fetch(" in page
    for code in ("NO_FILE", "FILE_TOO_LARGE", "RATE_LIMITED", "STORAGE_ERROR"):
        assert f"<code>{code}</code>" in page


@pytest.mark.gen_test
async def test_sharex_config_is_a_json_attachment_for_this_instance(
    http_client, base_url
):
    response = await get(http_client, base_url, "/sharex.sxcu")
    assert response.code == 200
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert ".sxcu" in response.headers["Content-Disposition"]
    config = json.loads(response.body)
    assert config["RequestMethod"] == "POST"
    assert config["RequestURL"] == f"{base_url}/api/upload"
    assert config["Body"] == "MultipartFormData"
    assert config["FileFormName"] == "file"
    assert config["URL"] == base_url + "{json:url}"
    assert config["ErrorMessage"] == "{json:error}"
    assert "FileUploader" in config["DestinationType"]


@pytest.mark.settings(public_url=PUBLIC, content_url=CONTENT)
@pytest.mark.gen_test
async def test_sharex_config_uses_the_public_and_content_urls(http_client, base_url):
    config = json.loads((await get(http_client, base_url, "/sharex.sxcu")).body)
    assert config["RequestURL"] == f"{PUBLIC}/api/upload"
    # Raw links in answers are absolute already on a content origin.
    assert config["URL"] == "{json:url}"


@pytest.mark.gen_test
async def test_the_plain_form_redirects_to_the_preview(http_client, base_url):
    body, headers = multipart([("file", "plain.txt", b"sent without javascript\n")])
    response = await http_client.fetch(
        base_url + "/upload",
        method="POST",
        body=body,
        headers=headers,
        follow_redirects=False,
        raise_error=False,
    )
    assert response.code == 303
    assert re.fullmatch(r"/p/[A-Za-z0-9]{5,16}", response.headers["Location"])


@pytest.mark.gen_test
async def test_the_plain_form_answers_errors_as_pages(http_client, base_url):
    body, headers = multipart([("file", "empty.txt", b"")])
    response = await http_client.fetch(
        base_url + "/upload",
        method="POST",
        body=body,
        headers=headers,
        raise_error=False,
    )
    assert response.code == 400
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "Send a non-empty file" in response.body.decode()
    assert "Content-Security-Policy" in response.headers


@pytest.mark.gen_test
async def test_the_plain_form_refuses_a_file_over_the_limit(http_client, base_url):
    body, headers = multipart([("file", "big.bin", b"x" * 300_000)])
    response = await http_client.fetch(
        base_url + "/upload",
        method="POST",
        body=body,
        headers=headers,
        raise_error=False,
    )
    assert response.code == 413
    assert "The file is larger than 200000 bytes." in response.body.decode()


@pytest.mark.settings(fetch_allow_networks=(ipaddress.ip_network("127.0.0.1/32"),))
@pytest.mark.gen_test
async def test_the_plain_url_form_fetches_and_redirects(http_client, base_url):
    file = await upload(http_client, base_url, b"fetch me back\n", "back.txt")
    form = urllib.parse.urlencode({"url": f"{base_url}/{file['id']}"})
    response = await http_client.fetch(
        base_url + "/upload",
        method="POST",
        body=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
        raise_error=False,
    )
    assert response.code == 303
    assert response.headers["Location"] == f"/p/{file['id']}"


@pytest.mark.gen_test
async def test_the_plain_url_form_shows_why_a_url_was_refused(http_client, base_url):
    form = urllib.parse.urlencode({"url": "http://10.0.0.1/secret"})
    response = await http_client.fetch(
        base_url + "/upload",
        method="POST",
        body=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        raise_error=False,
    )
    assert response.code == 400
    assert "Cannot fetch that URL" in response.body.decode()
