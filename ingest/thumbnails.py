"""Thumbnails of uploaded images: small, upright, stripped of every piece of metadata.

Every image is hostile until decoded: only an allowlist of formats is opened, a
decompression bomb is an error (never MAX_IMAGE_PIXELS = None), and any failure
means "no thumbnail", never a failed upload.
"""

from __future__ import annotations

import asyncio
import io
import logging
import multiprocessing
import signal
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from PIL import Image, features

import metrics

logger = logging.getLogger(__name__)

MAX_SIDE = 480
# Larger images (over 40 megapixels) get no thumbnail.
MAX_PIXELS = 40_000_000
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"}) | (
    frozenset({"AVIF"}) if features.check("avif") else frozenset()
)
ALLOWED_TYPES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/webp",
        "image/bmp",
        "image/x-ms-bmp",
        "image/tiff",
        "image/avif",
    }
)


@dataclass(frozen=True)
class Thumbnail:
    data: bytes
    mimetype: str


def render(path: Path, max_side: int = MAX_SIDE) -> Thumbnail:
    """Decode the image at `path` and return its thumbnail. Blocking; raises on
    anything that is not a well-formed image of an allowed format."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path, formats=sorted(ALLOWED_FORMATS)) as image:
            # Checked by hand too: the warning filter above is process-wide, and a
            # tiny file can declare a canvas that takes seconds and gigabytes to fill.
            if image.width * image.height > MAX_PIXELS:
                raise Image.DecompressionBombError("too many pixels for a thumbnail")
            if image.format == "JPEG":
                # Decode at a reduced scale straight away: far faster for big photos.
                image.draft("RGB", (max_side, max_side))
            image.seek(0)
            orientation = image.getexif().get(0x0112)
            image.thumbnail((max_side, max_side))
            small = _upright(image, orientation)
            return _encode(small)


def _upright(image: Image.Image, orientation: int | None) -> Image.Image:
    """Apply the EXIF orientation to the small image (cheaper than to the big one)."""
    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation or 1)
    return image.transpose(method) if method is not None else image.copy()


def _encode(image: Image.Image) -> Thumbnail:
    """JPEG for opaque images, PNG where there is transparency; nothing else kept."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    mode = "RGBA" if has_alpha else "RGB"
    pixels = image.convert(mode)
    # A fresh image carries pixels only: no EXIF, ICC, XMP, comments or text chunks.
    clean = Image.frombytes(mode, pixels.size, pixels.tobytes())
    output = io.BytesIO()
    if has_alpha:
        clean.save(output, "PNG", optimize=True)
        return Thumbnail(output.getvalue(), "image/png")
    clean.save(output, "JPEG", quality=82, optimize=True, progressive=True)
    return Thumbnail(output.getvalue(), "image/jpeg")


def _render_in_child(writer: Connection, path: Path, max_side: int) -> None:
    """The forked child: render, send back the thumbnail or the error's name."""
    # The parent's loop wakes on signals through this descriptor; its handlers are
    # not the child's. A stop signal just ends the child.
    signal.set_wakeup_fd(-1)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)
    try:
        outcome: Thumbnail | str = render(path, max_side)
    except Exception as error:  # noqa: BLE001 - reported to the parent by name
        outcome = type(error).__name__
    writer.send(outcome)


class ChildEnded(Exception):
    """The render process ended without an answer (a crash in a decoder, say)."""


def _collect(process: Any, reader: Connection, timeout: float) -> Thumbnail:
    """Wait (in a thread) for the child's answer; stop it past `timeout`."""
    try:
        if not reader.poll(timeout):
            raise TimeoutError
        outcome = reader.recv()
    except EOFError:
        raise ChildEnded from None
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        reader.close()
    if isinstance(outcome, str):
        raise ValueError(outcome)
    assert isinstance(outcome, Thumbnail)
    return outcome


class Thumbnailer:
    """Renders each thumbnail in a process of its own, forked for it and ended
    within a time bound.

    A process, not a thread: decoders hold the GIL for long stretches (a large WebP
    stalled the IO loop for 0.6 s from a thread), a decoder busy in C can only be
    stopped for real by ending its process, and the memory a big decode takes goes
    back to the system with it, instead of staying in the server's heap. Forked
    from the server, a child shares its pages (Pillow and its plugins are loaded
    before), so it costs a few milliseconds and little memory; none is kept idle.
    """

    def __init__(
        self, timeout: float, max_side: int = MAX_SIDE, processes: int = 2
    ) -> None:
        self._timeout = timeout
        self._max_side = max_side
        self._context = multiprocessing.get_context("fork")
        # Threads that wait on the children: `processes` children at most.
        self._waiters = ThreadPoolExecutor(processes, thread_name_prefix="thumbnails")
        Image.init()  # every plugin imported now, not in each child

    async def make(self, path: Path, mimetype: str) -> Thumbnail | None:
        """A thumbnail of the file, or None (not an image we render, or it failed)."""
        if mimetype not in ALLOWED_TYPES:
            return None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._waiters, self._render, path)
        except TimeoutError:
            metrics.thumbnail_failed()
            logger.warning("thumbnail took longer than %.2f s; skipped", self._timeout)
        except ChildEnded:
            metrics.thumbnail_failed()
            logger.warning("a thumbnail process ended without an answer; skipped")
        except Exception as error:  # noqa: BLE001 - any failure means "no thumbnail"
            metrics.thumbnail_failed()
            logger.info("no thumbnail: %s", error)
        return None

    def _render(self, path: Path) -> Thumbnail:
        """Fork, render in the child, collect (blocking; in a waiter thread)."""
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_render_in_child, args=(writer, path, self._max_side), daemon=True
        )
        try:
            process.start()
        finally:
            writer.close()
        return _collect(process, reader, self._timeout)

    def close(self) -> None:
        self._waiters.shutdown(wait=False, cancel_futures=True)
