"""Thumbnails: allowed formats only, small and upright, no metadata, hostile input
refused without an exception escaping."""

from __future__ import annotations

import asyncio
import io
import logging
import multiprocessing
import os
import signal
import struct
import time
import warnings
import zlib
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from PIL import ExifTags, Image, ImageCms, features
from PIL.PngImagePlugin import PngInfo

from ingest.thumbnails import (
    MAX_SIDE,
    ChildEnded,
    Thumbnail,
    Thumbnailer,
    _collect,
    render,
)

SECRET = "imgyx-secret-marker"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
COLOURS = {"red": RED, "green": GREEN, "blue": BLUE, "white": WHITE}
NEEDS_AVIF = pytest.mark.skipif(not features.check("avif"), reason="no AVIF in Pillow")
AVIF = pytest.param("AVIF", marks=NEEDS_AVIF)


def quadrants(size: tuple[int, int] = (800, 600), mode: str = "RGB") -> Image.Image:
    """Red, green, blue and white quarters (top left, top right, bottom left and
    right), so a turn or a flip shows in the corners."""
    width, height = size
    image = Image.new("RGB", size, WHITE)
    image.paste(RED, (0, 0, width // 2, height // 2))
    image.paste(GREEN, (width // 2, 0, width, height // 2))
    image.paste(BLUE, (0, height // 2, width // 2, height))
    return image.convert(mode)


def saved(image: Image.Image, path: Path, image_format: str, **options) -> Path:
    image.save(path, image_format, **options)
    return path


def png_chunk(kind: bytes, body: bytes) -> bytes:
    checksum = zlib.crc32(kind + body)
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", checksum)


def declared_png(width: int, height: int) -> bytes:
    """A tiny 1-bit PNG whose header claims `width` x `height` pixels."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(bytes(64)))
        + png_chunk(b"IEND", b"")
    )


def psd(width: int, height: int) -> bytes:
    """A minimal uncompressed RGB Photoshop file, which Pillow itself can read."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)
    return header + sections + struct.pack(">H", 0) + bytes(width * height * 3)


def opened(thumbnail: Thumbnail) -> Image.Image:
    image = Image.open(io.BytesIO(thumbnail.data))
    image.load()
    return image


def colour_name(pixel: tuple[int, ...]) -> str:
    """The name of the quadrant colour nearest to `pixel` (lossy formats shift it)."""
    return min(
        COLOURS,
        key=lambda name: sum(
            (have - want) ** 2
            for have, want in zip(pixel[:3], COLOURS[name], strict=True)
        ),
    )


def corners(image: Image.Image) -> list[str]:
    """The colours a little inside the top-left, top-right, bottom-left and
    bottom-right corners."""
    width, height = image.size
    inset = 10
    rgb = image.convert("RGB")
    return [
        colour_name(rgb.getpixel((x, y)))
        for x, y in [
            (inset, inset),
            (width - inset, inset),
            (inset, height - inset),
            (width - inset, height - inset),
        ]
    ]


def make(path: Path, mimetype: str, timeout: float = 10.0) -> Thumbnail | None:
    thumbnailer = Thumbnailer(timeout)
    try:
        return asyncio.run(thumbnailer.make(path, mimetype))
    finally:
        thumbnailer.close()


@pytest.mark.parametrize(
    "image_format", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", AVIF]
)
def test_each_allowed_format_is_scaled_to_480_on_the_long_side(
    tmp_path: Path, image_format: str
) -> None:
    source = saved(quadrants((960, 720)), tmp_path / "source", image_format)

    thumbnail = render(source)

    assert thumbnail.mimetype == "image/jpeg"
    image = opened(thumbnail)
    assert image.format == "JPEG"
    assert image.size == (MAX_SIDE, 360)
    assert corners(image) == ["red", "green", "blue", "white"]


@pytest.mark.parametrize("size", [(200, 100), (1, 1), (480, 480)])
def test_small_images_are_not_enlarged(tmp_path: Path, size: tuple[int, int]) -> None:
    source = saved(Image.new("RGB", size, BLUE), tmp_path / "small.png", "PNG")

    assert opened(render(source)).size == size


def test_a_tall_image_is_bounded_by_its_height(tmp_path: Path) -> None:
    source = saved(quadrants((500, 2000)), tmp_path / "tall.png", "PNG")

    assert opened(render(source)).size == (120, MAX_SIDE)


def test_the_longest_side_follows_the_max_side_given(tmp_path: Path) -> None:
    source = saved(quadrants((1000, 500)), tmp_path / "wide.png", "PNG")

    assert opened(render(source, max_side=64)).size == (64, 32)


@pytest.mark.parametrize(
    ("orientation", "size", "expected_corners"),
    [
        (1, (480, 360), ["red", "green", "blue", "white"]),
        (3, (480, 360), ["white", "blue", "green", "red"]),
        (6, (360, 480), ["blue", "red", "white", "green"]),
        (8, (360, 480), ["green", "white", "red", "blue"]),
    ],
    ids=["upright", "upside-down", "turned-right", "turned-left"],
)
def test_exif_orientation_is_applied(
    tmp_path: Path,
    orientation: int,
    size: tuple[int, int],
    expected_corners: list[str],
) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    source = saved(quadrants((800, 600)), tmp_path / "photo.jpg", "JPEG", exif=exif)

    image = opened(render(source))

    assert image.size == size
    assert corners(image) == expected_corners


def exif_with_gps() -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.ImageDescription] = SECRET
    exif[ExifTags.Base.Make] = "imgyx-camera"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (52.0, 22.0, 7.0)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (4.0, 53.0, 41.0)
    return exif


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def with_metadata(path: Path, image_format: str, mode: str) -> Path:
    """An image carrying EXIF with GPS, an ICC profile and, where the format has
    them, text chunks, a comment and XMP; all with SECRET somewhere."""
    image = quadrants((640, 480), mode)
    options: dict = {"exif": exif_with_gps(), "icc_profile": srgb_profile()}
    if image_format == "PNG":
        text = PngInfo()
        text.add_text("Comment", SECRET)
        text.add_text("Author", SECRET, zip=True)
        text.add_itxt("Description", SECRET, lang="en")
        options["pnginfo"] = text
    if image_format == "JPEG":
        options["comment"] = SECRET
    if image_format in ("JPEG", "WEBP"):
        options["xmp"] = f"<x:xmpmeta>{SECRET}</x:xmpmeta>".encode()
    return saved(image, path, image_format, **options)


@pytest.mark.parametrize(
    ("image_format", "mode"),
    [("JPEG", "RGB"), ("PNG", "RGB"), ("PNG", "RGBA"), ("WEBP", "RGB")],
)
def test_the_thumbnail_keeps_no_metadata(
    tmp_path: Path, image_format: str, mode: str
) -> None:
    source = with_metadata(tmp_path / "source", image_format, mode)
    with Image.open(source) as original:  # the source really carries it all
        assert original.getexif().get_ifd(ExifTags.IFD.GPSInfo)
        assert original.info.get("icc_profile")

    thumbnail = render(source)

    image = opened(thumbnail)
    assert dict(image.getexif()) == {}
    assert not image.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    assert set(image.info) & {"exif", "icc_profile", "comment", "xmp"} == set()
    assert getattr(image, "text", {}) == {}
    assert SECRET.encode() not in thumbnail.data
    assert b"imgyx-camera" not in thumbnail.data


def test_png_text_chunks_are_not_copied(tmp_path: Path) -> None:
    source = with_metadata(tmp_path / "source.png", "PNG", "RGBA")

    data = render(source).data

    assert data.startswith(PNG_SIGNATURE)
    kinds = [b"tEXt", b"zTXt", b"iTXt", b"iCCP", b"eXIf"]
    assert [kind for kind in kinds if kind in data] == []


@pytest.mark.parametrize(
    ("image_format", "mode"),
    [("PNG", "RGBA"), ("PNG", "LA"), ("WEBP", "RGBA"), ("TIFF", "RGBA")],
)
def test_transparent_images_get_a_png_thumbnail_with_alpha(
    tmp_path: Path, image_format: str, mode: str
) -> None:
    image = quadrants((1000, 500), "RGBA")
    image.paste((0, 0, 0, 0), (500, 0, 1000, 250))  # the top-right quarter is clear
    source = saved(image.convert(mode), tmp_path / "clear", image_format)

    thumbnail = render(source)

    assert thumbnail.mimetype == "image/png"
    small = opened(thumbnail)
    assert small.format == "PNG"
    assert small.mode == "RGBA"
    assert small.size == (480, 240)
    assert small.getpixel((470, 10))[3] == 0
    assert small.getpixel((10, 230))[3] == 255


def test_a_palette_png_with_a_transparent_colour_keeps_it(tmp_path: Path) -> None:
    image = Image.new("P", (600, 600), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(0, (0, 0, 300, 600))
    source = saved(image, tmp_path / "palette.png", "PNG", transparency=0)

    small = opened(render(source))

    assert small.mode == "RGBA"
    assert small.getpixel((10, 240))[3] == 0
    assert small.getpixel((470, 240)) == (255, 0, 0, 255)


def test_an_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (600, 400), colour) for colour in (RED, GREEN, BLUE)]
    source = tmp_path / "animated.gif"
    frames[0].save(source, "GIF", save_all=True, append_images=frames[1:], duration=50)
    with Image.open(source) as original:
        assert original.n_frames == 3

    small = opened(render(source))

    assert small.size == (480, 320)
    assert colour_name(small.convert("RGB").getpixel((240, 160))) == "red"


@pytest.mark.parametrize(
    ("width", "height", "refusal"),
    [
        (10_000, 9_000, Image.DecompressionBombWarning),
        (100_000, 100_000, Image.DecompressionBombError),
        (0xFFFF_FFF0 // 8, 64, Image.DecompressionBombError),
    ],
    ids=["over-the-limit", "over-twice-the-limit", "very-wide"],
)
def test_decompression_bombs_are_refused_before_decoding(
    tmp_path: Path, width: int, height: int, refusal: type[Exception]
) -> None:
    assert width * height > Image.MAX_IMAGE_PIXELS
    source = tmp_path / "bomb.png"
    source.write_bytes(declared_png(width, height))

    with warnings.catch_warnings():
        # As in production, where the warning is not an error unless render says so.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(refusal):
            render(source)
        assert make(source, "image/png") is None


def jpeg_bytes() -> bytes:
    output = io.BytesIO()
    quadrants((800, 600)).save(output, "JPEG", quality=90)
    return output.getvalue()


def avif_without_its_image() -> bytes:
    """A valid AVIF whose primary-item box names an item that does not exist."""
    output = io.BytesIO()
    quadrants((64, 48)).save(output, "AVIF")
    data = bytearray(output.getvalue())
    box = data.index(b"pitm")
    data[box + 8 : box + 10] = b"\x00\x07"  # after the version and flags: the item ID
    return bytes(data)


def webp_canvas(width: int, height: int) -> bytes:
    """A 38-byte lossless WebP of one colour whose header declares `width` x
    `height`: such a stream costs no bits per pixel, so only the header changes."""
    output = io.BytesIO()
    Image.new("RGB", (16, 16), BLUE).save(
        output, "WEBP", lossless=True, quality=0, method=0
    )
    data = bytearray(output.getvalue())
    assert data[12:16] == b"VP8L" and data[20] == 0x2F
    (bits,) = struct.unpack_from("<I", data, 21)
    bits = (bits & ~0x0FFF_FFFF) | (width - 1) | ((height - 1) << 14)
    struct.pack_into("<I", data, 21, bits)
    return bytes(data)


HOSTILE = {
    "empty": ("image/png", lambda: b""),
    "truncated-jpeg": ("image/jpeg", lambda: jpeg_bytes()[:-100]),
    "half-a-jpeg": ("image/jpeg", lambda: jpeg_bytes()[: len(jpeg_bytes()) // 2]),
    "jpeg-header-only": ("image/jpeg", lambda: jpeg_bytes()[:600]),
    "png-signature-then-garbage": (
        "image/png",
        lambda: PNG_SIGNATURE + bytes(range(256)) * 8,
    ),
    "png-header-without-data": ("image/png", lambda: declared_png(64, 64)[:33]),
    "png-huge-declared-size": ("image/png", lambda: declared_png(200_000, 200_000)),
    "gif-header-then-garbage": ("image/gif", lambda: b"GIF89a\xff\x7f" + bytes(300)),
    "bmp-header-then-garbage": ("image/bmp", lambda: b"BM" + b"\xff" * 200),
    "tiff-header-then-garbage": (
        "image/tiff",
        lambda: b"II*\x00\x08\x00\x00\x00" + b"\xff" * 200,
    ),
    "webp-header-then-garbage": (
        "image/webp",
        lambda: b"RIFF\x00\x01\x00\x00WEBPVP8 " + bytes(200),
    ),
    "webp-huge-declared-size": ("image/webp", lambda: webp_canvas(16_000, 16_000)),
    "avif-without-its-image": ("image/avif", avif_without_its_image),
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=NEEDS_AVIF) if "avif" in name else name
        for name in sorted(HOSTILE)
    ],
)
def test_malformed_images_give_no_thumbnail_and_raise_nothing(
    tmp_path: Path, name: str
) -> None:
    mimetype, build = HOSTILE[name]
    source = tmp_path / name
    source.write_bytes(build())

    with warnings.catch_warnings():
        # Pillow warns about some damage (corrupt EXIF) before it fails. In
        # production a warning is no error: here it must not pass for one either.
        warnings.simplefilter("ignore", UserWarning)
        assert make(source, mimetype) is None


@pytest.mark.parametrize(
    "mimetype",
    [
        "image/svg+xml",
        "image/vnd.microsoft.icon",
        "image/x-icon",
        "image/vnd.adobe.photoshop",
        "image/x-portable-pixmap",
        "application/pdf",
        "text/plain",
        "application/octet-stream",
    ],
)
def test_types_outside_the_allowlist_are_never_opened(
    tmp_path: Path, mimetype: str
) -> None:
    # A perfectly good PNG: only the type decides that it is not even looked at.
    source = saved(quadrants(), tmp_path / "fine.png", "PNG")

    assert make(source, mimetype) is None


def other_format(name: str, path: Path) -> Path:
    if name == "SVG":
        path.write_text(
            '<svg xmlns="http://www.w3.org/2000/svg" width="600" height="400">'
            '<rect width="600" height="400" fill="red"/></svg>'
        )
        return path
    if name == "PSD":
        path.write_bytes(psd(60, 40))
        return path
    return saved(quadrants((64, 64)), path, name)


@pytest.mark.parametrize("name", ["ICO", "PSD", "TGA", "PCX", "PPM", "SVG"])
def test_formats_outside_the_allowlist_are_not_decoded_whatever_their_type(
    tmp_path: Path, name: str
) -> None:
    source = other_format(name, tmp_path / f"image.{name.lower()}")
    if name != "SVG":  # Pillow could read it: only the allowlist stops it
        with Image.open(source) as image:
            assert image.format == name

    with pytest.raises(Image.UnidentifiedImageError):
        render(source)
    assert make(source, "image/png") is None


def test_a_render_slower_than_the_timeout_gives_no_thumbnail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A fine image, but 16 megapixels take far longer than 50 ms to decode.
    source = tmp_path / "big.webp"
    source.write_bytes(webp_canvas(4000, 4000))
    with Image.open(source) as image:
        assert image.size == (4000, 4000)

    with caplog.at_level(logging.INFO, logger="ingest.thumbnails"):
        assert make(source, "image/webp", timeout=0.05) is None

    assert "thumbnail took longer" in caplog.text


def test_within_the_timeout_the_same_thumbnailer_renders(tmp_path: Path) -> None:
    source = saved(quadrants(), tmp_path / "fine.png", "PNG")

    thumbnail = make(source, "image/png", timeout=10.0)

    assert thumbnail is not None
    assert opened(thumbnail).size == (480, 360)


def test_after_a_timeout_the_next_image_still_gets_a_thumbnail(tmp_path: Path) -> None:
    slow = tmp_path / "big.webp"
    slow.write_bytes(webp_canvas(6000, 6000))
    fine = saved(quadrants(), tmp_path / "fine.png", "PNG")
    thumbnailer = Thumbnailer(0.05)

    async def both() -> tuple[Thumbnail | None, Thumbnail | None]:
        first = await thumbnailer.make(slow, "image/webp")
        thumbnailer._timeout = 10.0  # the same pool manager, a fair bound now
        return first, await thumbnailer.make(fine, "image/png")

    try:
        first, second = asyncio.run(both())
    finally:
        thumbnailer.close()

    assert first is None
    assert second is not None
    assert opened(second).size == (480, 360)


def _sleep_then_answer(writer: Connection) -> None:
    time.sleep(30)
    writer.send("late")


def _child_with_pipe(target: Callable[..., None]) -> tuple[Any, Connection]:
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=target, args=(writer,), daemon=True)
    process.start()
    writer.close()
    return process, reader


def test_a_render_past_its_timeout_is_killed_not_waited_for() -> None:
    process, reader = _child_with_pipe(_sleep_then_answer)
    started = time.monotonic()

    with pytest.raises(TimeoutError):
        _collect(process, reader, 0.1)

    assert time.monotonic() - started < 5
    assert process.exitcode == -signal.SIGKILL


def test_a_render_process_that_dies_without_answering_is_reported() -> None:
    process, reader = _child_with_pipe(lambda writer: os._exit(3))

    with pytest.raises(ChildEnded):
        _collect(process, reader, 10.0)

    assert process.exitcode == 3


def test_no_render_process_outlives_its_thumbnail(tmp_path: Path) -> None:
    slow = tmp_path / "big.webp"
    slow.write_bytes(webp_canvas(6000, 6000))
    fine = saved(quadrants(), tmp_path / "fine.png", "PNG")

    assert make(slow, "image/webp", timeout=0.05) is None
    assert make(fine, "image/png") is not None

    assert multiprocessing.active_children() == []


def cpu_seconds(work: Callable[[], object]) -> float:
    """The least CPU time of this thread over three runs of `work`."""
    best = float("inf")
    for _ in range(3):
        start = time.thread_time()
        work()
        best = min(best, time.thread_time() - start)
    return best


def test_big_jpegs_are_decoded_at_a_reduced_scale(tmp_path: Path) -> None:
    gradient = Image.linear_gradient("L").resize((6000, 4000)).convert("RGB")
    source = saved(gradient, tmp_path / "big.jpg", "JPEG", quality=80)

    def full_decode() -> None:
        with Image.open(source) as image:
            image.load()

    # libjpeg's draft mode decodes at 1/8 scale: far less work than every pixel.
    assert cpu_seconds(lambda: render(source)) < cpu_seconds(full_decode) / 2
