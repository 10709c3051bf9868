"""Thumbnails of uploaded images: small, upright, stripped of every piece of metadata.

Every image is hostile until decoded: only an allowlist of formats is opened, a
decompression bomb is an error (never MAX_IMAGE_PIXELS = None), and any failure
means "no thumbnail", never a failed upload.
"""

from __future__ import annotations

import asyncio
import io
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
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


class Thumbnailer:
    """Renders thumbnails in a small thread pool, each within a time bound."""

    def __init__(
        self, timeout: float, max_side: int = MAX_SIDE, threads: int = 2
    ) -> None:
        self._timeout = timeout
        self._max_side = max_side
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="thumbnails")

    async def make(self, path: Path, mimetype: str) -> Thumbnail | None:
        """A thumbnail of the file, or None (not an image we render, or it failed)."""
        if mimetype not in ALLOWED_TYPES:
            return None
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._pool, render, path, self._max_side)
        try:
            return await asyncio.wait_for(work, self._timeout)
        except TimeoutError:
            metrics.thumbnail_failed()
            logger.warning("thumbnail took longer than %.2f s; skipped", self._timeout)
        except Exception as error:  # noqa: BLE001 - any failure means "no thumbnail"
            metrics.thumbnail_failed()
            logger.info("no thumbnail: %s", type(error).__name__)
        return None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
