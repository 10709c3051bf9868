"""File names made safe for display and headers. Never used for storage keys."""

from __future__ import annotations

import re
import unicodedata

DEFAULT_NAME = "file"
MAX_BYTES = 200

_SPACES = re.compile(r"\s+")


def sanitise(raw: str | bytes | None) -> str:
    """A display name from whatever the client sent.

    Keeps the last path part, drops control, format (bidi overrides, zero-width) and
    unassigned characters, folds runs of whitespace, strips leading dots, and cuts
    the name to MAX_BYTES of UTF-8 while keeping a short extension.
    """
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not raw:
        return DEFAULT_NAME
    name = unicodedata.normalize("NFC", raw)
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(char for char in name if _allowed(char))
    name = _SPACES.sub(" ", name).lstrip(". ").rstrip()
    if not name:
        return DEFAULT_NAME
    return _truncate(name)


def _allowed(char: str) -> bool:
    category = unicodedata.category(char)
    return category[0] != "C" or char == " "


def _truncate(name: str) -> str:
    if len(name.encode()) <= MAX_BYTES:
        return name
    stem, dot, extension = name.rpartition(".")
    if not dot or len(extension.encode()) > 16 or not stem:
        stem, extension = name, ""
    budget = MAX_BYTES - (len(extension.encode()) + 1 if extension else 0)
    stem = stem.encode()[:budget].decode("utf-8", "ignore").rstrip()
    return f"{stem}.{extension}" if extension else stem
