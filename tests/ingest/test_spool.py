"""The spool: a private temporary file that counts, hashes and caps an upload."""

from __future__ import annotations

import hmac
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.spool import HEAD_SIZE, FileTooLarge, Spool

KEY = b"k" * 32
LIMIT = 20_000


def fingerprinter() -> hmac.HMAC:
    return hmac.new(KEY, digestmod="sha256")


def content(size: int) -> bytes:
    filler = bytes(index % 251 for index in range(size))
    return (b"imgyx spool test\n" + filler)[:size]


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    spool = Spool(tmp_path, LIMIT, fingerprinter())
    yield spool
    spool.discard()


@pytest.mark.parametrize("chunk_size", [1, 7, 4096, LIMIT])
def test_spool_counts_every_byte_written(spool: Spool, chunk_size: int) -> None:
    data = content(10_000)

    for chunk in chunks(data, chunk_size):
        spool.write(chunk)
    spool.finish()

    assert spool.size == len(data)
    assert spool.path.read_bytes() == data


@pytest.mark.parametrize("size", [0, 1, 10_000])
def test_spool_fingerprint_is_the_keyed_hash_of_the_content(
    spool: Spool, size: int
) -> None:
    data = content(size)

    for chunk in chunks(data, 999):
        spool.write(chunk)

    assert spool.finish() == hmac.new(KEY, data, digestmod="sha256").hexdigest()


def test_spool_fingerprint_depends_on_the_key(tmp_path: Path) -> None:
    other = Spool(tmp_path, LIMIT, hmac.new(b"j" * 32, digestmod="sha256"))
    other.write(b"same content")
    fingerprint = other.finish()
    other.discard()

    assert fingerprint != hmac.new(KEY, b"same content", "sha256").hexdigest()


@pytest.mark.parametrize("chunk_size", [1, 1000, 8191, 8192, 8193, LIMIT])
def test_spool_keeps_the_first_8192_bytes_as_head(
    spool: Spool, chunk_size: int
) -> None:
    data = content(LIMIT)

    for chunk in chunks(data, chunk_size):
        spool.write(chunk)

    assert HEAD_SIZE == 8192
    assert bytes(spool.head) == data[:HEAD_SIZE]


def test_spool_head_is_all_of_a_short_upload(spool: Spool) -> None:
    spool.write(b"short ")
    spool.write(b"upload")

    assert bytes(spool.head) == b"short upload"


@pytest.mark.parametrize("chunk_size", [1, 3333, LIMIT])
def test_spool_accepts_exactly_the_limit(spool: Spool, chunk_size: int) -> None:
    data = content(LIMIT)

    for chunk in chunks(data, chunk_size):
        spool.write(chunk)
    spool.finish()

    assert spool.size == LIMIT
    assert spool.path.stat().st_size == LIMIT


@pytest.mark.parametrize("last_chunk", [1, 2, 5000])
def test_spool_refuses_a_chunk_past_the_limit_without_writing_it(
    spool: Spool, last_chunk: int
) -> None:
    spool.write(content(LIMIT - last_chunk + 1))

    with pytest.raises(FileTooLarge):
        spool.write(b"x" * last_chunk)
    spool.finish()

    assert spool.size == LIMIT - last_chunk + 1
    assert spool.path.stat().st_size == LIMIT - last_chunk + 1


def test_spool_refuses_one_oversized_first_chunk(spool: Spool) -> None:
    with pytest.raises(FileTooLarge):
        spool.write(content(LIMIT + 1))
    spool.finish()

    assert spool.size == 0
    assert spool.path.stat().st_size == 0


def test_spool_stays_refused_after_the_limit_is_reached(spool: Spool) -> None:
    spool.write(content(LIMIT))

    with pytest.raises(FileTooLarge):
        spool.write(b"x")
    with pytest.raises(FileTooLarge):
        spool.write(b"y")

    assert spool.size == LIMIT


def test_spool_file_lives_in_the_given_folder(tmp_path: Path, spool: Spool) -> None:
    assert spool.path.parent == tmp_path
    assert spool.path.exists()


def test_spool_file_is_private_to_the_owner(spool: Spool) -> None:
    assert stat.S_IMODE(spool.path.stat().st_mode) == 0o600


def test_spool_discard_removes_the_file(spool: Spool) -> None:
    spool.write(b"gone soon")

    spool.discard()

    assert not spool.path.exists()


def test_spool_discard_after_finish_removes_the_file(spool: Spool) -> None:
    spool.write(b"finished")
    spool.finish()

    spool.discard()

    assert not spool.path.exists()


def test_spool_discard_is_idempotent(tmp_path: Path, spool: Spool) -> None:
    spool.discard()
    spool.discard()

    assert not spool.path.exists()
    assert list(tmp_path.iterdir()) == []


def test_spools_in_one_folder_do_not_share_a_file(tmp_path: Path) -> None:
    first = Spool(tmp_path, LIMIT, fingerprinter())
    second = Spool(tmp_path, LIMIT, fingerprinter())

    assert first.path != second.path
    first.discard()
    assert second.path.exists()
    second.discard()
