"""What people see: the home page, preview pages, the API docs and the ShareX config.

Server-rendered with Jinja2 (autoescaping on). Every page carries a strict
Content-Security-Policy: scripts and styles load from /static/ only, never inline.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import html
import json
import re
from contextlib import aclosing
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

import jinja2
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import TextLexer, get_lexer_for_filename, get_lexer_for_mimetype
from pygments.util import ClassNotFound
from tornado import web

from handlers.base import ApiError, BaseHandler, absolute, raw_url, thumbnail_url
from handlers.content import RASTER_IMAGES
from handlers.upload import UploadHandler
from models.records import FileView
from storage import StoreError

# Text previews read and highlight at most this much of a file.
TEXT_PREVIEW_BYTES = 64 * 1024

PLAYABLE_VIDEO = frozenset({"video/mp4", "video/webm", "video/ogg", "video/quicktime"})
PLAYABLE_AUDIO = frozenset(
    {
        "audio/mpeg",
        "audio/ogg",
        "audio/opus",
        "audio/wav",
        "audio/x-wav",
        "audio/webm",
        "audio/flac",
        "audio/x-flac",
        "audio/mp4",
        "audio/aac",
        "audio/x-m4a",
    }
)
ARCHIVES = ("zip", "gzip", "tar", "xz", "bzip2", "7z", "rar", "zstd", "compress")
DOCUMENTS = ("pdf", "msword", "document", "sheet", "presentation", "excel", "epub")
TEXT_APPLICATIONS = frozenset({"application/x-sh", "application/x-httpd-php"})

# A Host header we are willing to repeat inside the policy header.
SAFE_HOST = re.compile(r"\A(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?\Z")
BBCODE_BRACKETS = re.compile(r"[\[\]]")


@functools.cache
def environment(template_path: str) -> jinja2.Environment:
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_path),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    templates.filters["human_size"] = human_size
    return templates


def human_size(size: int) -> str:
    """Bytes in the units people read: 1024 bytes to a KB, as the size limit is."""
    if size < 1024:
        return "1 byte" if size == 1 else f"{size} bytes"
    exponent = min((size.bit_length() - 1) // 10, 4)
    number = f"{size / 1024**exponent:.1f}".removesuffix(".0")
    return f"{number} {('KB', 'MB', 'GB', 'TB')[exponent - 1]}"


def is_text(mimetype: str) -> bool:
    return (
        mimetype.startswith("text/")
        or mimetype.endswith(("+xml", "+json", "/xml", "/json"))
        or "javascript" in mimetype
        or mimetype in TEXT_APPLICATIONS
    )


def preview_kind(mimetype: str, size: int) -> str:
    """How the preview page shows a file: image, video, audio, pdf, text or other."""
    if mimetype in RASTER_IMAGES:
        return "image"
    if mimetype in PLAYABLE_VIDEO:
        return "video"
    if mimetype in PLAYABLE_AUDIO:
        return "audio"
    if mimetype == "application/pdf":
        return "pdf"
    return "text" if is_text(mimetype) and size > 0 else "other"


def icon_kind(mimetype: str) -> str:
    major, _, minor = mimetype.partition("/")
    if major in ("image", "video", "audio"):
        return major
    if any(word in minor for word in ARCHIVES):
        return "archive"
    if any(word in minor for word in DOCUMENTS):
        return "document"
    return "text" if is_text(mimetype) else "file"


def describe(mimetype: str) -> str:
    """A short name for a type: 'PNG image', 'PDF document', 'Text file'."""
    major, _, minor = mimetype.partition("/")
    label = minor.removeprefix("x-").split("+")[0].upper()
    if major in ("image", "video", "audio"):
        return f"{label} {major}"
    if mimetype == "application/pdf":
        return "PDF document"
    return {"archive": "Archive", "document": "Document", "text": "Text file"}.get(
        icon_kind(mimetype), "File"
    )


def choose_lexer(file_name: str, mimetype: str) -> Lexer:
    lexer: Lexer
    try:
        lexer = get_lexer_for_filename(file_name, stripnl=False)
    except ClassNotFound:
        try:
            lexer = get_lexer_for_mimetype(mimetype, stripnl=False)
        except ClassNotFound:
            lexer = TextLexer(stripnl=False)
    return lexer


def highlight_text(text: str, file_name: str, mimetype: str) -> tuple[Markup, str]:
    """Pygments' HTML (it escapes the text) and the name of the language."""
    lexer = choose_lexer(file_name, mimetype)
    # A formatter per call: highlighting runs on executor threads.
    code = highlight(text, lexer, HtmlFormatter(cssclass="highlight", wrapcode=True))
    return Markup(code), lexer.name  # noqa: S704 (escaped by Pygments' formatter)


def markdown_label(name: str) -> str:
    return re.sub(r"([\\\[\]])", r"\\\1", name)


def embed_snippets(name: str, kind: str, raw: str, page: str) -> list[tuple[str, str]]:
    """Ready-to-paste ways to share a file, as (label, text) pairs."""
    quoted = html.escape(name)
    if kind == "image":
        markdown = f"![{markdown_label(name)}]({raw})"
        tag = f'<a href="{page}"><img src="{raw}" alt="{quoted}"></a>'
        bbcode = f"[url={page}][img]{raw}[/img][/url]"
    else:
        markdown = f"[{markdown_label(name)}]({raw})"
        tag = (
            f'<{kind} src="{raw}" controls></{kind}>'
            if kind in ("video", "audio")
            else f'<a href="{raw}">{quoted}</a>'
        )
        bbcode = f"[url={raw}]{BBCODE_BRACKETS.sub('', name)}[/url]"
    return [
        ("Direct link", raw),
        ("Markdown", markdown),
        ("HTML", tag),
        ("BBCode", bbcode),
    ]


def sharex_config(base: str, content_url: str) -> dict[str, Any]:
    """A ShareX custom uploader for this instance (ShareX 13.7+ syntax)."""
    host = base.split("://", 1)[-1]
    return {
        "Version": "15.0.0",
        "Name": f"imgyx ({host})",
        "DestinationType": "ImageUploader, TextUploader, FileUploader",
        "RequestMethod": "POST",
        "RequestURL": f"{base}/api/upload",
        "Body": "MultipartFormData",
        "FileFormName": "file",
        # Raw links are absolute already when they point to a content origin.
        "URL": "{json:url}" if content_url else f"{base}{{json:url}}",
        "ErrorMessage": "{json:error}",
    }


ERROR_TITLES = {
    400: "That did not work",
    404: "Not found",
    413: "File too large",
    429: "Too many uploads",
    451: "Taken down",
}


def error_title(status: int) -> str:
    if status >= 500:
        return "Something went wrong"
    return ERROR_TITLES.get(status) or HTTPStatus(status).phrase.capitalize()


def error_message(status: int, error: BaseException | None) -> str:
    if isinstance(error, ApiError):
        return error.message
    if isinstance(error, StoreError):
        return "The file store failed; try again in a moment."
    if status == 404:
        return "There is nothing at this address."
    return "Something went wrong on our side; please try again."


def public_base(handler: BaseHandler) -> str:
    """The base URL of the instance: IMGYX_PUBLIC_URL, else the request's own."""
    request = handler.request
    own = f"{request.protocol}://{request.host}"
    return handler.services.settings.public_url or own


class PageHandler(BaseHandler):
    """Renders templates under the page policy; errors become HTML pages."""

    def page_policy(self, pdf: bool = False) -> str:
        settings = self.services.settings
        request = self.request
        static = {f"{settings.public_url}/static/"} if settings.public_url else set()
        if SAFE_HOST.match(request.host):
            static.add(f"{request.protocol}://{request.host}/static/")
        # Paths narrow 'self': uploaded files (at /ID) can never run as our scripts.
        code = " ".join(sorted(static)) or "'self'"
        media = f"'self' {settings.content_url}".strip()
        # Only a PDF preview embeds anything (Chromium checks the <object> as a frame
        # too), and only from our own origins.
        objects = media if pdf else "'none'"
        return (
            f"default-src 'none'; script-src {code}; style-src {code}; "
            f"img-src {media}; media-src {media}; object-src {objects}; "
            f"frame-src {objects}; "
            "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
            "base-uri 'none'"
        )

    def render_page(
        self, template: str, status: int = 200, pdf: bool = False, **context: Any
    ) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", self.page_policy(pdf))
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Cache-Control", "no-cache")
        page = environment(self.settings["template_path"]).get_template(template)
        self.write(page.render(static_url=self.static_url, **context).encode())

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, ApiError):
            for name, value in error.headers.items():
                self.set_header(name, value)
        self.render_page(
            "error.html",
            status_code,
            code=status_code,
            title=error_title(status_code),
            message=error_message(status_code, error),
        )


class HomeHandler(PageHandler):
    def get(self) -> None:
        self.render_page("home.html", max_bytes=self.services.settings.max_upload_bytes)


class PreviewHandler(PageHandler):
    async def get(self, file_id: str) -> None:
        file = await self.find_file(file_id)
        kind = preview_kind(file.mimetype, file.size)
        text = await self._text(file) if kind == "text" else {}
        self.services.views.add(file.id)
        self.render_page(
            "preview.html", pdf=kind == "pdf", **self._context(file, kind), **text
        )

    async def _text(self, file: FileView) -> dict[str, Any]:
        shown = min(file.size, TEXT_PREVIEW_BYTES)
        reader = self.services.store.read(file.sealed, 0, shown - 1)
        async with aclosing(reader) as chunks:
            data = b"".join([chunk async for chunk in chunks])
        # A cut may split a character: drop its first bytes rather than show U+FFFD.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = decoder.decode(data, final=shown == file.size)
        # Highlighting is pure CPU: keep it off the IO loop.
        code, language = await asyncio.get_running_loop().run_in_executor(
            None, highlight_text, text, file.name, file.mimetype
        )
        return {"code": code, "language": language, "shown_bytes": shown}

    def _context(self, file: FileView, kind: str) -> dict[str, Any]:
        settings = self.services.settings
        base = public_base(self)
        raw = raw_url(settings, file.id)
        thumbnail = thumbnail_url(settings, file)
        raw_absolute = absolute(settings, base, raw)
        page_absolute = absolute(settings, base, f"/p/{file.id}")
        picture = thumbnail or (raw if kind == "image" else None)
        return {
            "file": file,
            "kind": kind,
            "icon_name": icon_kind(file.mimetype),
            "description": describe(file.mimetype),
            "views": file.views + self.services.views.pending(file.id),
            "raw": raw,
            "image_src": thumbnail or raw,
            "raw_absolute": raw_absolute,
            "page_absolute": page_absolute,
            "picture_absolute": picture and absolute(settings, base, picture),
            "snippets": embed_snippets(file.name, kind, raw_absolute, page_absolute),
        }


class DocsHandler(PageHandler):
    def get(self) -> None:
        settings = self.services.settings
        self.render_page("docs.html", base=public_base(self), settings=settings)


class ShareXHandler(BaseHandler):
    def get(self) -> None:
        settings = self.services.settings
        base = public_base(self)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Content-Disposition", 'attachment; filename="imgyx.sxcu"')
        self.write(json.dumps(sharex_config(base, settings.content_url), indent=2))


def is_url_form(content_type: str | None) -> bool:
    essence = (content_type or "").split(";", 1)[0].strip().lower()
    return essence == "application/x-www-form-urlencoded"


@web.stream_request_body
class FormUploadHandler(PageHandler, UploadHandler):
    """POST /upload: the home page's forms without JavaScript.

    The upload itself is the API's (limits, rate limit, URL fetch); only the answer
    differs: a redirect to the preview page, or an error page.
    """

    _url_form = False

    def body_kind(self, content_type: str | None) -> str | None:
        # The URL form is a small urlencoded body; _url_of below reads it.
        self._url_form = is_url_form(content_type)
        return "form" if self._url_form else super().body_kind(content_type)

    def get(self) -> None:
        self.redirect("/")

    def _url_of(self, body: bytes) -> str:
        if not self._url_form:
            return super()._url_of(body)
        form = parse_qs(body.decode("utf-8", errors="replace"))
        url = (form.get("url") or [""])[0].strip()
        if not url:
            raise ApiError(400, "NO_URL", "Enter the address of a file to fetch.")
        return url

    def write_json(self, status: int, body: dict[str, Any]) -> None:
        self.redirect(body["preview_url"], status=303)
