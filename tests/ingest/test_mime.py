"""MIME types from content (libmagic) and the normalising of type strings."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from ingest.mime import _TYPE, FALLBACK, MAX_LENGTH, detect, normalise


def image_bytes(format_name: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 90)).save(buffer, format=format_name)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("format_name", "expected"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif")],
)
def test_detect_types_real_images(format_name: str, expected: str) -> None:
    assert detect(image_bytes(format_name)) == expected


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (
            b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
            "application/pdf",
        ),
        (b"imgyx test payload\njust some plain words\n", "text/plain"),
        (
            b"<!DOCTYPE html>\n<html><head><title>t</title></head>"
            b"<body><p>hi</p></body></html>\n",
            "text/html",
        ),
    ],
)
def test_detect_types_documents_by_their_header(head: bytes, expected: str) -> None:
    assert detect(head) == expected


def test_detect_types_svg_with_an_xml_prolog_as_xml_or_svg() -> None:
    head = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4">'
        b'<rect width="4" height="4"/></svg>\n'
    )

    assert detect(head) in {"text/xml", "image/svg+xml"}


def test_detect_empty_content_is_octet_stream() -> None:
    assert detect(b"") == FALLBACK


def test_detect_types_only_the_head_it_is_given() -> None:
    # The spool keeps at most 8 KiB; a truncated PNG head still types as PNG.
    assert detect(image_bytes("PNG")[:64]) == "image/png"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("image/png", "image/png"),
        ("IMAGE/PNG", "image/png"),
        ("Text/HTML; charset=x", "text/html"),
        ("text/plain;charset=utf-8", "text/plain"),
        ("  application/json  ", "application/json"),
        ("image/svg+xml", "image/svg+xml"),
        ("application/vnd.ms-excel", "application/vnd.ms-excel"),
        ("multipart/form-data; boundary=abc", "multipart/form-data"),
    ],
)
def test_normalise_lowercases_and_strips_parameters(value: str, expected: str) -> None:
    assert normalise(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "text",
        "text/",
        "/html",
        "text/html/extra",
        "text html",
        "text /html",
        "tëxt/html",
        "text/html\r\nX-Injected: yes",
        "text/html\x00",
        "<script>/x",
        "; charset=utf-8",
        "-text/html",
        "a/" + "b" * 65,
    ],
)
def test_normalise_rejects_junk_as_octet_stream(value: str | None) -> None:
    assert normalise(value) == FALLBACK


def test_normalise_rejects_an_essence_over_the_length_limit() -> None:
    # Each half is within the per-part limit; together they pass MAX_LENGTH.
    value = "a" * 50 + "/" + "b" * 50

    assert len(value) > MAX_LENGTH
    assert normalise(value) == FALLBACK


@given(st.text(max_size=200))
def test_normalise_returns_a_plain_type_or_the_fallback(value: str) -> None:
    result = normalise(value)

    assert result == FALLBACK or (_TYPE.match(result) and len(result) <= MAX_LENGTH)
    assert result == result.lower()


@given(st.binary(max_size=512))
def test_detect_always_returns_a_normalised_type(head: bytes) -> None:
    result = detect(b"imgyx test payload\n" + head)

    assert normalise(result) == result
