"""MIME type from the content (libmagic), normalised; never the client's claim."""

from __future__ import annotations

import re
import threading

import magic

FALLBACK = "application/octet-stream"
MAX_LENGTH = 100
_TYPE = re.compile(
    r"\A[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}\Z"
)

_detector = magic.Magic(mime=True)
# libmagic handles are not safe to share between threads.
_lock = threading.Lock()


def normalise(value: str | None) -> str:
    """Lowercase `type/subtype` without parameters, or the fallback if it is not one."""
    if not value:
        return FALLBACK
    essence = value.split(";", 1)[0].strip().lower()
    if len(essence) > MAX_LENGTH or not _TYPE.match(essence):
        return FALLBACK
    return essence


def detect(head: bytes) -> str:
    """The normalised MIME type of content that starts with `head`."""
    if not head:
        return FALLBACK
    with _lock:
        try:
            found = _detector.from_buffer(head)
        except magic.MagicException:
            return FALLBACK
    return normalise(found)
