"""Streaming the `file` part of a multipart body into a spool."""

from __future__ import annotations

import hmac
import itertools
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.multipart import MalformedMultipart, MultipartReader
from ingest.spool import FileTooLarge, Spool
from tests.conftest import multipart

LIMIT = 64 * 1024
CLOSING = b"--\r\n"


def spool_opener(folder: Path, limit: int = LIMIT) -> Callable[[], Spool]:
    def open_spool() -> Spool:
        return Spool(folder, limit, hmac.new(b"k" * 32, digestmod="sha256"))

    return open_spool


@contextmanager
def reader_for(headers: dict[str, str]) -> Iterator[MultipartReader]:
    """A reader spooling into a temporary folder; checks the spool is discarded."""
    with tempfile.TemporaryDirectory() as folder:
        reader = MultipartReader(headers, spool_opener(Path(folder)))
        try:
            yield reader
        finally:
            reader.close()
        assert list(Path(folder).iterdir()) == []


def feed_in_pieces(reader: MultipartReader, body: bytes, cuts: list[int]) -> None:
    edges = [0, *sorted(set(cuts)), len(body)]
    for start, end in itertools.pairwise(edges):
        reader.feed(body[start:end])


def spooled_bytes(reader: MultipartReader) -> bytes:
    assert reader.target.spool is not None
    reader.target.spool.finish()
    return reader.target.spool.path.read_bytes()


@settings(max_examples=60, deadline=None)
@given(content=st.binary(max_size=4000), data=st.data())
def test_reader_spools_the_exact_file_bytes_however_the_body_is_split(
    content: bytes, data: st.DataObject
) -> None:
    body, headers = multipart([("file", "upload.bin", content)])
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=30))

    with reader_for(headers) as reader:
        feed_in_pieces(reader, body, cuts)

        assert reader.target.complete
        assert reader.file_name == "upload.bin"
        assert spooled_bytes(reader) == content


def test_reader_accepts_a_body_fed_one_byte_at_a_time() -> None:
    content = b"imgyx test payload\r\n--not-the-boundary\r\n\r\n"
    body, headers = multipart([("file", "bytes.txt", content)])

    with reader_for(headers) as reader:
        feed_in_pieces(reader, body, list(range(len(body))))

        assert reader.target.complete
        assert spooled_bytes(reader) == content


@pytest.mark.parametrize(
    "file_name",
    ["photo.png", "caf\u00e9 menu.pdf", "../../etc/passwd", "no extension"],
)
def test_reader_reports_the_file_name_as_sent(file_name: str) -> None:
    body, headers = multipart([("file", file_name, b"imgyx test payload\n")])

    with reader_for(headers) as reader:
        reader.feed(body)

        assert reader.file_name == file_name


def test_reader_has_no_file_name_before_the_file_part() -> None:
    _, headers = multipart([])

    with reader_for(headers) as reader:
        assert reader.file_name is None
        assert reader.target.spool is None


def test_reader_refuses_two_file_parts() -> None:
    body, headers = multipart(
        [("file", "one.txt", b"first file"), ("file", "two.txt", b"second file")]
    )

    with reader_for(headers) as reader, pytest.raises(MalformedMultipart):
        reader.feed(body)


@pytest.mark.parametrize(
    "body",
    [
        b"garbage",
        b"\x00" * 100,
        b"this is not multipart at all\r\n\r\n" * 10,
        b'--other-boundary\r\nContent-Disposition: form-data; name="file"; '
        b'filename="a.txt"\r\n\r\nx\r\n--other-boundary--\r\n',
    ],
)
def test_reader_refuses_garbage(body: bytes) -> None:
    with reader_for({"Content-Type": "multipart/form-data; boundary=XyZ"}) as reader:
        with pytest.raises(MalformedMultipart):
            reader.feed(body)

        assert not reader.target.complete


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "multipart/form-data"},
        {"Content-Type": "multipart/form-data; boundary="},
        {"Content-Type": "text/plain"},
        {},
    ],
)
def test_reader_refuses_a_content_type_without_boundary_at_construction(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    with pytest.raises(MalformedMultipart):
        MultipartReader(headers, spool_opener(tmp_path))


@settings(max_examples=60, deadline=None)
@given(content=st.binary(max_size=2000), data=st.data())
def test_reader_leaves_a_truncated_body_incomplete(
    content: bytes, data: st.DataObject
) -> None:
    body, headers = multipart([("file", "cut.bin", content)])
    cut = data.draw(st.integers(0, len(body) - len(CLOSING)))

    with reader_for(headers) as reader:
        reader.feed(body[:cut])

        assert not reader.target.complete


def test_reader_ignores_fields_other_than_file(tmp_path: Path) -> None:
    content = b"imgyx test payload\nthe file itself\n"
    body, headers = multipart(
        [
            ("note", None, b"a text field before"),
            ("other", "decoy.txt", b"a file in the wrong field"),
            ("file", "real.txt", content),
            ("expires", None, b"never"),
        ]
    )
    opened: list[Spool] = []
    open_spool = spool_opener(tmp_path)

    def open_and_remember() -> Spool:
        opened.append(open_spool())
        return opened[-1]

    reader = MultipartReader(headers, open_and_remember)
    reader.feed(body)

    assert len(opened) == 1
    assert reader.target.complete
    assert reader.file_name == "real.txt"
    assert spooled_bytes(reader) == content
    reader.close()


def test_reader_without_a_file_part_opens_no_spool() -> None:
    body, headers = multipart([("note", None, b"only a text field")])

    with reader_for(headers) as reader:
        reader.feed(body)

        assert reader.target.spool is None
        assert not reader.target.complete


def test_reader_lets_file_too_large_through(tmp_path: Path) -> None:
    body, headers = multipart([("file", "big.bin", b"x" * 101)])
    reader = MultipartReader(headers, spool_opener(tmp_path, limit=100))

    with pytest.raises(FileTooLarge):
        reader.feed(body)
    reader.close()

    assert list(tmp_path.iterdir()) == []


def test_reader_close_discards_the_spool(tmp_path: Path) -> None:
    body, headers = multipart([("file", "a.txt", b"imgyx test payload\n")])
    reader = MultipartReader(headers, spool_opener(tmp_path))
    reader.feed(body)

    reader.close()
    reader.close()

    assert list(tmp_path.iterdir()) == []
