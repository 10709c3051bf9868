"""How a stored type is delivered: which types may render in our origin, and how.

Anything an anonymous stranger uploads is hostile. Only an allowlist is ever served
as itself inline; markup, scripts and unknown types are served as plain text or as
downloads, so nothing uploaded runs in our origin or, hotlinked, in anybody's.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from ingest.mime import normalise

RASTER_IMAGES = frozenset(
    {
        "image/png",
        "image/apng",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/bmp",
        "image/x-ms-bmp",
        "image/x-icon",
        "image/vnd.microsoft.icon",
        "image/tiff",
    }
)
INLINE_BY_DEFAULT = RASTER_IMAGES | {"application/pdf"}

# Passive formats served as themselves when downloaded (never rendered by a page).
PASSIVE_DOWNLOADS = frozenset(
    {
        "text/plain",
        "text/csv",
        "application/zip",
        "application/gzip",
        "application/x-gzip",
        "application/x-tar",
        "application/x-xz",
        "application/x-bzip2",
        "application/x-7z-compressed",
        "application/vnd.rar",
        "application/x-rar",
        "application/zstd",
        "application/epub+zip",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "application/msword",
        "application/vnd.ms-excel",
        "application/octet-stream",
    }
)

TEXT_AS_PLAIN = "text/plain; charset=utf-8"
DOWNLOAD = "application/octet-stream"

# What a document of an allowed type needs, and nothing else: no scripts, no
# forms, no plugins beyond the browser's own viewers, no network but our own files.
SANDBOX_POLICY = (
    "sandbox; default-src 'none'; img-src 'self' data:; media-src 'self'; "
    "style-src 'unsafe-inline'; object-src 'self'"
)


@dataclass(frozen=True)
class Delivery:
    content_type: str
    inline: bool


def _is_media(mimetype: str) -> bool:
    return mimetype.startswith(("audio/", "video/"))


def _is_textual(mimetype: str) -> bool:
    return (
        mimetype.startswith("text/")
        or mimetype.endswith(("+xml", "+json", "/xml", "/json"))
        or "javascript" in mimetype
        or "ecmascript" in mimetype
        or mimetype in ("application/x-sh", "application/x-httpd-php")
    )


def delivery(stored_type: str, inline_requested: bool) -> Delivery:
    """The Content-Type and disposition for a file of `stored_type`."""
    mimetype = normalise(stored_type)
    if mimetype in INLINE_BY_DEFAULT:
        return Delivery(mimetype, inline=True)
    if inline_requested:
        if _is_media(mimetype):
            return Delivery(mimetype, inline=True)
        if _is_textual(mimetype):
            return Delivery(TEXT_AS_PLAIN, inline=True)
        return Delivery(DOWNLOAD, inline=False)
    if _is_media(mimetype):
        return Delivery(mimetype, inline=False)
    if mimetype in PASSIVE_DOWNLOADS:
        served = TEXT_AS_PLAIN if mimetype == "text/plain" else mimetype
        return Delivery(served, inline=False)
    return Delivery(DOWNLOAD, inline=False)


def content_disposition(inline: bool, name: str) -> str:
    """RFC 6266 with an ASCII fallback and an RFC 5987 UTF-8 name.

    Names are sanitised at upload; this still escapes anything that could end the
    quoted string or the header, so a record from anywhere can never split it.
    """
    kind = "inline" if inline else "attachment"
    fallback = "".join(
        char if 32 <= ord(char) < 127 and char not in '"\\%' else "_" for char in name
    )
    encoded = quote(name.encode("utf-8", "replace"), safe="!#$&+-.^_`|~")
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
