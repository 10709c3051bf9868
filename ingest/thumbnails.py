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
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

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


# Seconds a new pool may take to start its first process.
STARTUP_SECONDS = 30.0


def _started() -> bool:
    return True


def _render_bounded(path: Path, max_side: int, seconds: float) -> Thumbnail:
    """`render` in a pool process that the kernel ends if it runs past `seconds`.

    A decoder busy in C never returns to Python to notice a timeout, so the bound is
    SIGALRM left at its default action: the process dies, and its pool with it.
    """
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return render(path, max_side)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


class Thumbnailer:
    """Renders thumbnails in a small pool of processes, each within a time bound.

    Processes, not threads: decoders hold the GIL for long stretches (a large WebP
    stalled the IO loop for 0.6 s from a thread), a slow image can be stopped for
    real, and the memory a big decode leaves behind goes with its process instead
    of staying in the server's heap. The pool starts on the first image and is
    made anew after one of its processes was stopped or crashed.
    """

    def __init__(
        self, timeout: float, max_side: int = MAX_SIDE, processes: int = 2
    ) -> None:
        self._timeout = timeout
        self._max_side = max_side
        self._processes = processes
        self._pool: ProcessPoolExecutor | None = None

    async def _ready_pool(self) -> ProcessPoolExecutor:
        """The pool, started and with a process up: starting one (a fresh
        interpreter importing Pillow) is not the image's time."""
        pool = self._pool
        if pool is None:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context(
                "forkserver" if "forkserver" in methods else "spawn"
            )
            pool = self._pool = ProcessPoolExecutor(self._processes, mp_context=context)
            await asyncio.wait_for(
                asyncio.wrap_future(pool.submit(_started)), STARTUP_SECONDS
            )
        return pool

    async def make(self, path: Path, mimetype: str) -> Thumbnail | None:
        """A thumbnail of the file, or None (not an image we render, or it failed)."""
        if mimetype not in ALLOWED_TYPES:
            return None
        # The process's own bound runs a little past ours, so we never wait on it.
        hard_bound = self._timeout + 0.5
        pool = None
        try:
            pool = await self._ready_pool()
            try:
                future = pool.submit(_render_bounded, path, self._max_side, hard_bound)
            except BrokenProcessPool:  # found broken since its last image
                self._discard(pool)
                pool = await self._ready_pool()
                future = pool.submit(_render_bounded, path, self._max_side, hard_bound)
            return await asyncio.wait_for(asyncio.wrap_future(future), self._timeout)
        except TimeoutError:
            metrics.thumbnail_failed()
            logger.warning("thumbnail took longer than %.2f s; skipped", self._timeout)
            if pool is not None:
                self._discard(pool)  # its process is about to be stopped
        except BrokenProcessPool:
            metrics.thumbnail_failed()
            logger.warning("a thumbnail process ended abruptly; skipped")
            if pool is not None:
                self._discard(pool)
        except Exception as error:  # noqa: BLE001 - any failure means "no thumbnail"
            metrics.thumbnail_failed()
            logger.info("no thumbnail: %s", type(error).__name__)
        return None

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        """Start the next image on a new pool; work already in this one finishes
        (or fails) as it would have."""
        if self._pool is pool:
            self._pool = None
        pool.shutdown(wait=False)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
