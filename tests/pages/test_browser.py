"""The pages in real headless Chromium against a real `python server.py`.

Each test saves screenshots to tests/pages/screenshots/ (git-ignored) for people to
look at, and fails on any console error or uncaught exception on its pages.
"""

from __future__ import annotations

import http.server
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, Request, sync_playwright

from tests.support import Server

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LIMIT = 2 * 1024 * 1024
PHONE = {"width": 375, "height": 667}
DESKTOP = {"width": 1280, "height": 860}
REMOTE_NAME = "remote-photo.png"
TIMEOUT = 15_000


def png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    image = Image.new("RGB", (width, height), colour)
    for x in range(0, width, 16):
        for y in range(0, height, 16):
            if (x + y) // 16 % 2:
                image.putpixel((x, y), (255, 255, 255))
    image.save(out, "PNG")
    return out.getvalue()


def tiny_pdf(text: str = "Hello from imgyx") -> bytes:
    """A one-page PDF written by hand, with a correct cross-reference table."""
    stream = f"BT /F1 28 Tf 72 700 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


SOURCE = b"""<!-- shown as text, never run -->
<script>window.pwned = true; alert("xss")</script>
<style>body { display: none }</style>
<p class="greeting">Hello, {{ name }}!</p>
"""


class RemoteFiles(http.server.BaseHTTPRequestHandler):
    """A stand-in for a remote web server, for uploads by URL."""

    body = png(64, 48, (220, 120, 40))

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def remote() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RemoteFiles)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("browser")
    running = Server(
        folder / "data",
        IMGYX_FETCH_ALLOW_NETWORKS="127.0.0.1/32",
        IMGYX_MAX_UPLOAD_BYTES=str(LIMIT),
        IMGYX_SPOOL_DIR=str(folder),
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


class Tab:
    """A page in a fresh browser context, with its console errors collected."""

    def __init__(self, browser: Browser, base: str, **options: Any) -> None:
        self.context = browser.new_context(**{"viewport": DESKTOP, **options})
        self.context.set_default_timeout(TIMEOUT)
        self.page = self.context.new_page()
        self.base = base
        self.errors: list[str] = []
        self.allowed: list[str] = []
        self.requests: list[Request] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.confirm = False
        self.page.on("dialog", self._dialog)
        self.page.on("request", lambda request: self.requests.append(request))

    def _dialog(self, dialog: Any) -> None:
        # Only a confirmation the test asked for is expected; an alert is an attack.
        if self.confirm and dialog.type == "confirm":
            dialog.accept()
            return
        self.errors.append(f"unexpected {dialog.type}: {dialog.message}")
        dialog.dismiss()

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def allow(self, text: str) -> None:
        """An error message this test expects (a 404 page logs its own status)."""
        self.allowed.append(text)

    def open(self, path: str) -> Any:
        return self.page.goto(self.base + path)

    def shoot(self, name: str) -> None:
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in self.allowed)]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tabs(browser: Browser, server: Server) -> Iterator[Any]:
    opened: list[Tab] = []

    def open_tab(**options: Any) -> Tab:
        opened.append(Tab(browser, server.base, **options))
        return opened[-1]

    yield open_tab
    errors = [error for tab in opened for error in tab.unexpected_errors()]
    for tab in opened:
        tab.close()
    assert errors == [], "console errors on the pages"


@pytest.fixture
def tab(tabs: Any) -> Tab:
    return tabs()


def upload(server: Server, content: bytes, name: str) -> dict[str, Any]:
    """An upload through the API; the name is sent as a quoted-string, escaped."""
    return server.upload(content, name.replace("\\", "\\\\").replace('"', '\\"'))


def finished_results(page: Page, count: int) -> list[dict[str, str]]:
    page.wait_for_function(
        "n => document.querySelectorAll('.result:not([data-state=uploading])').length >= n",
        arg=count,
    )
    return page.eval_on_selector_all(
        ".result",
        """items => items.map(item => ({
            state: item.dataset.state,
            progress: item.dataset.progress || '',
            name: item.querySelector('.result-name').textContent,
            status: item.querySelector('.result-status').textContent,
            link: (item.querySelector('input') || {}).value || '',
            preview: (item.querySelector('.preview-link') || {}).href || '',
        }))""",
    )


def no_horizontal_scroll(page: Page) -> bool:
    return bool(
        page.evaluate(
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
    )


def test_choosing_files_shows_progress_and_links(tab: Tab, server: Server):
    tab.open("/")
    tab.shoot("home")
    files = [
        {"name": "first.txt", "mimeType": "text/plain", "buffer": b"first file\n" * 50},
        {
            "name": "second.png",
            "mimeType": "image/png",
            "buffer": png(80, 60, (40, 90, 200)),
        },
    ]
    tab.page.set_input_files("#file-input", files)
    results = finished_results(tab.page, 2)
    assert sorted(result["name"] for result in results) == ["first.txt", "second.png"]
    for result in results:
        assert result["state"] == "done", result
        assert result["progress"] == "100"
        assert result["link"].startswith(server.base + "/")
        assert result["preview"].startswith(server.base + "/p/")
    tab.shoot("home-uploaded")


def test_progress_moves_while_a_slow_upload_is_sent(tab: Tab):
    tab.open("/")
    network = tab.context.new_cdp_session(tab.page)
    network.send("Network.enable")
    network.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": 256 * 1024,
        },
    )
    big = {
        "name": "slow.bin",
        "mimeType": "application/octet-stream",
        "buffer": b"imgyx slow upload\n" + bytes(range(256)) * 2400,
    }
    tab.page.set_input_files("#file-input", [big])
    tab.page.wait_for_function(
        "() => { const p = document.querySelector('.result progress');"
        " return p && p.value > 5 && p.value < 95; }"
    )
    tab.shoot("home-progress")
    results = finished_results(tab.page, 1)
    assert results[0]["state"] == "done"


def test_dropping_a_file_uploads_it(tab: Tab):
    tab.open("/")
    tab.page.evaluate(
        """() => {
            const data = new DataTransfer();
            data.items.add(new File(['dropped in\\n'], 'dropped.txt', {type: 'text/plain'}));
            const target = document.getElementById('drop-target');
            for (const type of ['dragenter', 'dragover', 'drop']) {
                target.dispatchEvent(new DragEvent(type, {
                    dataTransfer: data, bubbles: true, cancelable: true}));
            }
        }"""
    )
    [result] = finished_results(tab.page, 1)
    assert result["name"] == "dropped.txt"
    assert result["state"] == "done"


def test_pasting_an_image_uploads_it(tab: Tab, server: Server):
    tab.open("/")
    tab.page.evaluate(
        """async () => {
            const canvas = document.createElement('canvas');
            canvas.width = 120; canvas.height = 80;
            const draw = canvas.getContext('2d');
            draw.fillStyle = '#2f9e44'; draw.fillRect(0, 0, 120, 80);
            const blob = await new Promise(done => canvas.toBlob(done, 'image/png'));
            const data = new DataTransfer();
            data.items.add(new File([blob], 'image.png', {type: 'image/png'}));
            document.dispatchEvent(new ClipboardEvent('paste', {
                clipboardData: data, bubbles: true, cancelable: true}));
        }"""
    )
    [result] = finished_results(tab.page, 1)
    assert result["state"] == "done"
    assert result["name"].startswith("pasted-") and result["name"].endswith(".png")
    file_id = result["link"].rsplit("/", 1)[1]
    _, body = server.request(f"/api/info?id={file_id}")
    assert json.loads(body)["mimetype"] == "image/png"


def test_uploading_by_url(tab: Tab, remote: str):
    tab.open("/")
    tab.page.fill("#url-input", f"{remote}/{REMOTE_NAME}")
    tab.page.click("#url-form button[type=submit]")
    [result] = finished_results(tab.page, 1)
    assert result["state"] == "done", result
    tab.page.click(".preview-link")
    tab.page.wait_for_url("**/p/*")
    assert tab.page.text_content("h1") == REMOTE_NAME


def test_a_refused_url_shows_the_api_error(tab: Tab):
    tab.allow("status of 400")
    tab.open("/")
    tab.page.fill("#url-input", "http://10.1.2.3/private.png")
    tab.page.press("#url-input", "Enter")
    [result] = finished_results(tab.page, 1)
    assert result["state"] == "error"
    assert "Cannot fetch that URL" in result["status"]
    tab.shoot("home-error")


def test_a_file_over_the_limit_is_refused_before_it_is_sent(tab: Tab):
    tab.open("/")
    too_big = {
        "name": "huge.bin",
        "mimeType": "application/octet-stream",
        "buffer": bytes(LIMIT + 1),
    }
    tab.page.set_input_files("#file-input", [too_big])
    [result] = finished_results(tab.page, 1)
    assert result["state"] == "error"
    assert result["status"] == "This file is larger than the 2 MB limit."
    assert not [r for r in tab.requests if r.url.endswith("/api/upload")]


def test_recent_uploads_are_remembered_and_can_be_cleared(tab: Tab):
    tab.open("/")
    assert tab.page.is_hidden("#recent")
    tab.page.set_input_files(
        "#file-input",
        [{"name": "keep.txt", "mimeType": "text/plain", "buffer": b"keep me\n"}],
    )
    finished_results(tab.page, 1)
    tab.page.reload()
    assert tab.page.is_visible("#recent")
    assert tab.page.text_content("#recent-list .recent-name") == "keep.txt"
    tab.shoot("home-recent")
    tab.page.click("#clear-recent")
    assert tab.page.is_hidden("#recent")
    assert tab.page.evaluate("localStorage.getItem('imgyx.recent')") is None


def test_a_recent_upload_can_be_deleted_with_its_token(tab: Tab, server: Server):
    tab.confirm = True
    tab.open("/")
    tab.page.set_input_files(
        "#file-input",
        [{"name": "oops.txt", "mimeType": "text/plain", "buffer": b"delete me\n"}],
    )
    [result] = finished_results(tab.page, 1)
    raw = result["link"].removeprefix(server.base)
    assert server.request(raw)[0] == 200
    tab.page.reload()
    tab.page.click("#recent-list button.danger")
    tab.page.wait_for_selector("#recent", state="hidden")
    assert server.request(raw)[0] == 404


def test_the_file_picker_opens_from_the_keyboard(tab: Tab):
    # Listening early turns on Chromium's file chooser interception before the key
    # press; expect_file_chooser alone races with it.
    tab.page.on("filechooser", lambda chooser: None)
    tab.open("/")
    for _ in range(10):
        tab.page.keyboard.press("Tab")
        if tab.page.evaluate("document.activeElement.id") == "file-input":
            break
    assert tab.page.evaluate("document.activeElement.id") == "file-input"
    with tab.page.expect_file_chooser() as chooser:
        tab.page.keyboard.press("Enter")
    assert chooser.value.is_multiple()


def test_copy_button_copies_the_absolute_link(tabs: Any, server: Server):
    tab = tabs(permissions=["clipboard-read", "clipboard-write"])
    file = server.upload(b"copy my link\n", "copy.txt")
    tab.open(file["preview_url"])
    tab.page.click("[data-copy-target=raw-link]")
    assert (
        tab.page.evaluate("navigator.clipboard.readText()") == server.base + file["url"]
    )
    assert tab.page.text_content("[data-copy-target=raw-link]") == "Copied"


def test_image_preview_shows_the_image(tab: Tab, server: Server):
    file = server.upload(png(640, 400, (59, 91, 219)), "blue-checks.png")
    tab.open(file["preview_url"])
    image = tab.page.locator(".viewer img")
    image.wait_for()
    tab.page.wait_for_function("document.querySelector('.viewer img').complete")
    assert image.evaluate("img => img.naturalWidth") > 0
    href = tab.page.get_attribute(".image-link", "href")
    assert href == file["url"]
    tab.shoot("preview-image")


def record_webm(page: Page) -> dict[str, Any]:
    """Record two seconds of canvas animation in the browser and upload it."""
    return page.evaluate(
        """async () => {
            const canvas = document.createElement('canvas');
            canvas.width = 320; canvas.height = 180;
            const draw = canvas.getContext('2d');
            const stream = canvas.captureStream(25);
            const recorder = new MediaRecorder(stream, {mimeType: 'video/webm;codecs=vp8'});
            const chunks = [];
            recorder.ondataavailable = event => chunks.push(event.data);
            const stopped = new Promise(done => { recorder.onstop = done; });
            recorder.start(250);
            const started = performance.now();
            await new Promise(done => {
                const frame = () => {
                    const t = (performance.now() - started) / 1000;
                    draw.fillStyle = `hsl(${t * 120}, 70%, 50%)`;
                    draw.fillRect(0, 0, 320, 180);
                    draw.fillStyle = '#fff';
                    draw.font = '32px sans-serif';
                    draw.fillText(t.toFixed(2) + ' s', 100, 100);
                    if (t < 2.5) { requestAnimationFrame(frame); } else { done(); }
                };
                frame();
            });
            recorder.stop();
            await stopped;
            const form = new FormData();
            form.append('file', new Blob(chunks, {type: 'video/webm'}), 'clip.webm');
            const answer = await fetch('/api/upload', {method: 'POST', body: form});
            return answer.json();
        }"""
    )


def test_video_preview_plays_and_seeks_with_ranges(tab: Tab):
    tab.open("/")
    file = record_webm(tab.page)
    assert file["mimetype"] == "video/webm", file
    tab.open(file["preview_url"])
    seeked = tab.page.evaluate(
        """async () => {
            const video = document.getElementById('player');
            video.muted = true;
            const once = type => new Promise(
                done => video.addEventListener(type, done, {once: true}));
            if (video.readyState < 1) {
                await once('loadedmetadata');
            }
            await video.play();
            await new Promise(done => {
                const check = () => video.currentTime > 0.2 ? done() : setTimeout(check, 50);
                check();
            });
            video.pause();
            const seeked = once('seeked');
            video.currentTime = 1.0;
            await seeked;
            return {time: video.currentTime, error: video.error && video.error.code};
        }"""
    )
    assert seeked["error"] is None
    assert abs(seeked["time"] - 1.0) < 0.3
    media = [r for r in tab.requests if r.url == tab.base + file["url"]]
    assert media
    assert all(r.all_headers().get("range", "").startswith("bytes=") for r in media)
    assert any(r.response() and r.response().status == 206 for r in media)
    tab.shoot("preview-video")


def test_pdf_preview_embeds_the_pdf(tab: Tab, server: Server):
    file = server.upload(tiny_pdf(), "hello.pdf")
    assert file["mimetype"] == "application/pdf"
    tab.open(file["preview_url"])
    embed = tab.page.locator("object.pdf-frame")
    assert embed.get_attribute("data") == file["url"]
    assert embed.bounding_box()["height"] > 300
    tab.page.wait_for_timeout(1500)
    tab.shoot("preview-pdf")


def test_text_preview_is_highlighted_and_never_runs(tab: Tab, server: Server):
    file = upload(server, SOURCE, '"><img src=x onerror=alert(1)>{{7*7}}.html')
    tab.open(file["preview_url"])
    assert tab.page.text_content("h1") == '"><img src=x onerror=alert(1)>{{7*7}}.html'
    assert tab.page.evaluate("window.pwned") is None
    assert tab.page.locator(".highlight span").count() > 10
    assert "<script>window.pwned = true" in tab.page.text_content(".highlight")
    assert tab.page.locator("body").is_visible()
    tab.shoot("preview-text")


def test_unknown_id_shows_the_404_page(tab: Tab):
    tab.allow("status of 404")
    response = tab.open("/p/NoSuchFile1")
    assert response.status == 404
    assert tab.page.text_content("h1") == "Not found"
    tab.shoot("not-found")


def test_docs_page(tab: Tab, server: Server):
    tab.open("/docs")
    assert "2 MB (2097152 bytes)" in tab.page.text_content("#limits")
    assert server.base in tab.page.text_content("#upload pre")
    tab.shoot("docs")


def test_dark_mode_is_readable(tabs: Any, server: Server):
    tab = tabs(color_scheme="dark")
    tab.open("/")
    colours = tab.page.evaluate(
        """() => { const style = getComputedStyle(document.body);
                   return [style.backgroundColor, style.color]; }"""
    )
    assert colours == ["rgb(17, 19, 24)", "rgb(230, 232, 238)"]
    tab.shoot("home-dark")
    file = server.upload(SOURCE, "dark.html")
    tab.open(file["preview_url"])
    tab.shoot("preview-text-dark")


@pytest.mark.parametrize(
    "page_name", ["home", "docs", "image", "text", "pdf", "missing"]
)
def test_phone_width_has_no_horizontal_scroll(
    tabs: Any, server: Server, page_name: str
):
    tab = tabs(viewport=PHONE, is_mobile=True, has_touch=True)
    paths = {
        "home": lambda: "/",
        "docs": lambda: "/docs",
        "image": lambda: server.upload(png(1200, 700, (200, 60, 90)), "wide.png")[
            "preview_url"
        ],
        "text": lambda: server.upload(
            b"x = '" + b"long line " * 80 + b"'\n", "wide.py"
        )["preview_url"],
        "pdf": lambda: server.upload(tiny_pdf("Phone"), "phone.pdf")["preview_url"],
        "missing": lambda: "/p/NoSuchFile1",
    }
    if page_name == "missing":
        tab.allow("status of 404")
    tab.open(paths[page_name]())
    assert no_horizontal_scroll(tab.page)
    tab.shoot(f"phone-{page_name}")


def test_without_javascript_the_form_leads_to_the_preview(tabs: Any, server: Server):
    tab = tabs(java_script_enabled=False)
    tab.open("/")
    assert tab.page.is_visible("form#upload-form button[type=submit]")
    assert tab.page.is_hidden("label[for=file-input]")
    tab.page.set_input_files(
        "#file-input",
        [{"name": "plain.txt", "mimeType": "text/plain", "buffer": b"no js\n"}],
    )
    tab.page.click("form#upload-form button[type=submit]")
    tab.page.wait_for_url("**/p/*")
    assert tab.page.text_content("h1") == "plain.txt"
    tab.shoot("nojs-result")
