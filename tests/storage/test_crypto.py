"""The sealed object format: round trips, byte ranges, and tamper detection."""

from __future__ import annotations

import asyncio
import io
import itertools
import random
from collections.abc import AsyncGenerator, Sequence
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.crypto import (
    HEADER,
    HEADER_SIZE,
    SEALED_SEGMENT_SIZE,
    SEGMENT_SIZE,
    TAG_SIZE,
    EncryptingReader,
    IntegrityError,
    SealedRange,
    SegmentCipher,
    StreamSealer,
    decrypt_range,
    locate,
    sealed_size,
    segment_count,
)

BOUNDARY_SIZES = [
    0,
    1,
    SEGMENT_SIZE - 1,
    SEGMENT_SIZE,
    SEGMENT_SIZE + 1,
    2 * SEGMENT_SIZE - 1,
    2 * SEGMENT_SIZE,
    2 * SEGMENT_SIZE + 1,
    3 * SEGMENT_SIZE,
]
MAX_RANDOM_SIZE = 300_000

sizes = st.one_of(st.sampled_from(BOUNDARY_SIZES), st.integers(0, MAX_RANDOM_SIZE))
seeds = st.integers(0, 2**32 - 1)
read_sizes = st.lists(
    st.one_of(st.integers(1, 4096), st.integers(1, 3 * SEGMENT_SIZE)),
    min_size=1,
    max_size=6,
)
property_settings = settings(max_examples=60, deadline=None)


class Outcome(NamedTuple):
    plaintext: bytes  # everything yielded, up to the end or the failure
    error: IntegrityError | None


def plaintext_of(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def data_key_of(seed: int) -> bytes:
    return random.Random(~seed).randbytes(32)


def seal(plaintext: bytes, data_key: bytes, sizes: Sequence[int] = (8192,)) -> bytes:
    """Read the whole sealed object from an EncryptingReader, `sizes` at a time."""
    reader = EncryptingReader(io.BytesIO(plaintext), len(plaintext), data_key)
    sealed = bytearray()
    for size in itertools.cycle(sizes):
        part = reader.read(size)
        sealed += part
        if not part or len(sealed) > reader.length:
            return bytes(sealed)
    raise AssertionError("unreachable")


def part_for(sealed: bytes, plaintext_size: int, start: int, end: int) -> bytes:
    """Exactly the bytes of `sealed` that locate() says to read for start..end."""
    where = locate(plaintext_size, start, end)
    return sealed[where.offset : where.offset + where.length]


def segment_bounds(index: int, plaintext_size: int) -> tuple[int, int]:
    low = HEADER_SIZE + index * SEALED_SEGMENT_SIZE
    plain = min(SEGMENT_SIZE, plaintext_size - index * SEGMENT_SIZE)
    return low, low + plain + TAG_SIZE


def replace_segment(sealed: bytes, index: int, size: int, segment: bytes) -> bytes:
    low, high = segment_bounds(index, size)
    return sealed[:low] + segment + sealed[high:]


def segment_of(sealed: bytes, index: int, size: int) -> bytes:
    low, high = segment_bounds(index, size)
    return sealed[low:high]


def flip_bit(data: bytes, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


async def feed(data: bytes, cuts: Sequence[int]) -> AsyncGenerator[bytes, None]:
    bounds = [0, *sorted(cuts), len(data)]
    for low, high in itertools.pairwise(bounds):
        yield data[low:high]


def assert_released_before(released: bytes, plaintext: bytes, bad: int) -> None:
    """What was released is true plaintext, all of it before the bad segment
    (plaintext goes out a chunk at a time, once every segment of the chunk opened)."""
    assert plaintext[: bad * SEGMENT_SIZE].startswith(released)


def decrypt(
    sealed_part: bytes,
    data_key: bytes,
    plaintext_size: int,
    start: int,
    end: int,
    cuts: Sequence[int] = (),
) -> Outcome:
    """Run decrypt_range over `sealed_part`, split at `cuts`, and collect what it says."""

    async def collect() -> Outcome:
        chunks: list[bytes] = []
        source = feed(sealed_part, cuts)
        try:
            async for chunk in decrypt_range(
                source, data_key, plaintext_size, start, end
            ):
                chunks.append(chunk)
        except IntegrityError as error:
            return Outcome(b"".join(chunks), error)
        return Outcome(b"".join(chunks), None)

    return asyncio.run(collect())


def cut_points(length: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, length), max_size=8)


def positions(size: int) -> st.SearchStrategy[int]:
    """Plaintext offsets in 0..size-1, favouring the ends and segment boundaries."""
    boundaries = range(0, size + SEGMENT_SIZE, SEGMENT_SIZE)
    near = {edge + step for edge in boundaries for step in (-1, 0, 1)}
    points = sorted(point for point in near | {size - 1} if 0 <= point < size)
    return st.one_of(st.sampled_from(points), st.integers(0, size - 1))


def whole(size: int) -> tuple[int, int]:
    return 0, max(size - 1, 0)


@property_settings
@given(size=sizes, seed=seeds, reads=read_sizes, data=st.data())
def test_sealed_object_round_trips_at_any_size(
    size: int, seed: int, reads: list[int], data: st.DataObject
) -> None:
    plaintext = plaintext_of(size, seed)
    data_key = data_key_of(seed)
    sealed = seal(plaintext, data_key, reads)
    assert len(sealed) == sealed_size(size)

    start, end = whole(size)
    sealed_part = part_for(sealed, size, start, end)
    cuts = data.draw(cut_points(len(sealed_part)))
    assert decrypt(sealed_part, data_key, size, start, end, cuts) == Outcome(
        plaintext, None
    )


@property_settings
@given(size=sizes)
def test_whole_range_locates_the_whole_object(size: int) -> None:
    start, end = whole(size)
    assert locate(size, start, end) == SealedRange(
        offset=0,
        length=sealed_size(size),
        first_segment=0,
        last_segment=segment_count(size) - 1,
    )


@property_settings
@given(size=sizes.filter(lambda size: size > 0), seed=seeds, data=st.data())
def test_any_range_decrypts_to_the_same_slice_of_plaintext(
    size: int, seed: int, data: st.DataObject
) -> None:
    plaintext = plaintext_of(size, seed)
    data_key = data_key_of(seed)
    sealed = seal(plaintext, data_key)
    start, end = sorted(data.draw(st.lists(positions(size), min_size=2, max_size=2)))

    sealed_part = part_for(sealed, size, start, end)
    cuts = data.draw(cut_points(len(sealed_part)))
    assert decrypt(sealed_part, data_key, size, start, end, cuts) == Outcome(
        plaintext[start : end + 1], None
    )


RANGES_SIZE = 3 * SEGMENT_SIZE + 5


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, 0),
        (RANGES_SIZE - 1, RANGES_SIZE - 1),
        (0, RANGES_SIZE - 1),
        (SEGMENT_SIZE - 1, SEGMENT_SIZE - 1),
        (SEGMENT_SIZE, SEGMENT_SIZE),
        (SEGMENT_SIZE - 1, SEGMENT_SIZE),
        (SEGMENT_SIZE, 2 * SEGMENT_SIZE - 1),
        (SEGMENT_SIZE + 1, 3 * SEGMENT_SIZE + 1),
        (3 * SEGMENT_SIZE, RANGES_SIZE - 1),
    ],
)
def test_range_decrypts_to_the_same_slice_of_plaintext(start: int, end: int) -> None:
    plaintext = plaintext_of(RANGES_SIZE, seed=7)
    data_key = data_key_of(7)
    sealed = seal(plaintext, data_key)

    sealed_part = part_for(sealed, RANGES_SIZE, start, end)
    assert decrypt(sealed_part, data_key, RANGES_SIZE, start, end) == Outcome(
        plaintext[start : end + 1], None
    )


@pytest.mark.parametrize(
    ("size", "start", "end"),
    [(10, 5, 4), (10, 0, 10), (10, -1, 3), (10, 10, 10), (0, 0, 1), (0, 1, 1)],
)
def test_locate_refuses_a_range_outside_the_plaintext(
    size: int, start: int, end: int
) -> None:
    with pytest.raises(ValueError, match="outside"):
        locate(size, start, end)


def test_empty_file_round_trips() -> None:
    data_key = data_key_of(1)
    sealed = seal(b"", data_key)
    assert len(sealed) == HEADER_SIZE + TAG_SIZE
    assert sealed.startswith(HEADER)

    assert decrypt(part_for(sealed, 0, 0, 0), data_key, 0, 0, 0) == Outcome(b"", None)


def test_reader_reads_everything_when_no_size_is_given() -> None:
    plaintext = plaintext_of(SEGMENT_SIZE + 3, seed=2)
    data_key = data_key_of(2)
    reader = EncryptingReader(io.BytesIO(plaintext), len(plaintext), data_key)

    everything = reader.read()
    assert everything == seal(plaintext, data_key)
    assert reader.read(1) == b""


def test_reader_refuses_a_source_shorter_than_its_declared_size() -> None:
    reader = EncryptingReader(io.BytesIO(b"x" * 99), 100, data_key_of(3))
    with pytest.raises(OSError, match="changed"):
        reader.read()


@pytest.mark.parametrize("length", [0, 16, 31, 33])
def test_cipher_refuses_a_data_key_that_is_not_32_bytes(length: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SegmentCipher(bytes(length))


@property_settings
@given(size=sizes, seed=seeds, data=st.data())
def test_flipped_bit_fails_before_its_segment_is_yielded(
    size: int, seed: int, data: st.DataObject
) -> None:
    plaintext = plaintext_of(size, seed)
    data_key = data_key_of(seed)
    sealed = seal(plaintext, data_key)
    bit = data.draw(st.integers(0, len(sealed) * 8 - 1), label="bit")
    tampered = flip_bit(sealed, bit)

    # A flip in the header counts against segment 0: only reads from there check it.
    segment = max(bit // 8 - HEADER_SIZE, 0) // SEALED_SEGMENT_SIZE
    segment_start = segment * SEGMENT_SIZE
    segment_end = max(min(segment_start + SEGMENT_SIZE, size) - 1, 0)
    start = data.draw(st.integers(0, segment_start), label="start")
    end = data.draw(st.integers(segment_end, max(size - 1, 0)), label="end")
    sealed_part = part_for(tampered, size, start, end)
    cuts = data.draw(cut_points(len(sealed_part)))

    outcome = decrypt(sealed_part, data_key, size, start, end, cuts)
    assert isinstance(outcome.error, IntegrityError)
    assert plaintext[start:].startswith(outcome.plaintext)
    assert len(outcome.plaintext) <= segment_start - start


@property_settings
@given(size=sizes, seed=seeds, data=st.data())
def test_truncated_object_fails(size: int, seed: int, data: st.DataObject) -> None:
    plaintext = plaintext_of(size, seed)
    data_key = data_key_of(seed)
    sealed = seal(plaintext, data_key)
    dropped = data.draw(st.integers(1, len(sealed)), label="dropped")
    truncated = sealed[: len(sealed) - dropped]
    cuts = data.draw(cut_points(len(truncated)))

    start, end = whole(size)
    outcome = decrypt(truncated, data_key, size, start, end, cuts)
    assert isinstance(outcome.error, IntegrityError)
    assert plaintext.startswith(outcome.plaintext)
    assert len(outcome.plaintext) < max(size, 1)


@pytest.mark.parametrize(
    ("size", "first", "second"),
    [
        (2 * SEGMENT_SIZE, 0, 1),
        (3 * SEGMENT_SIZE + 7, 0, 2),
        (3 * SEGMENT_SIZE + 7, 1, 2),
    ],
)
def test_swapped_segments_fail(size: int, first: int, second: int) -> None:
    plaintext = plaintext_of(size, seed=4)
    data_key = data_key_of(4)
    sealed = seal(plaintext, data_key)
    segment_a = segment_of(sealed, first, size)
    segment_b = segment_of(sealed, second, size)
    swapped = replace_segment(sealed, first, size, segment_b)
    swapped = replace_segment(swapped, second, size, segment_a)
    assert len(swapped) == len(sealed)

    outcome = decrypt(swapped, data_key, size, *whole(size))
    assert isinstance(outcome.error, IntegrityError)
    assert_released_before(outcome.plaintext, plaintext, first)
    # Fed a segment at a time, every segment before the bad one is released.
    boundaries = [segment_bounds(index, size)[0] for index in range(1, second + 1)]
    outcome = decrypt(swapped, data_key, size, *whole(size), cuts=boundaries)
    assert outcome.plaintext == plaintext[: first * SEGMENT_SIZE]


def test_duplicated_segment_fails() -> None:
    size = 2 * SEGMENT_SIZE + 9
    plaintext = plaintext_of(size, seed=5)
    data_key = data_key_of(5)
    sealed = seal(plaintext, data_key)
    duplicated = replace_segment(sealed, 1, size, segment_of(sealed, 0, size))

    outcome = decrypt(duplicated, data_key, size, *whole(size))
    assert isinstance(outcome.error, IntegrityError)
    assert_released_before(outcome.plaintext, plaintext, 1)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_segment_from_another_object_under_another_key_fails(index: int) -> None:
    size = 2 * SEGMENT_SIZE + 100
    plaintext = plaintext_of(size, seed=6)
    data_key = data_key_of(6)
    sealed = seal(plaintext, data_key)
    foreign = seal(plaintext_of(size, seed=60), data_key_of(60))
    spliced = replace_segment(sealed, index, size, segment_of(foreign, index, size))

    outcome = decrypt(spliced, data_key, size, *whole(size))
    assert isinstance(outcome.error, IntegrityError)
    assert_released_before(outcome.plaintext, plaintext, index)


@pytest.mark.parametrize("size", [0, 1, SEGMENT_SIZE + 1])
def test_another_objects_data_key_fails(size: int) -> None:
    sealed = seal(plaintext_of(size, seed=8), data_key_of(8))

    outcome = decrypt(sealed, data_key_of(80), size, *whole(size))
    assert outcome.plaintext == b""
    assert isinstance(outcome.error, IntegrityError)


def test_object_cut_back_to_a_whole_segment_fails_as_a_shorter_record() -> None:
    # Segment 0 of a two-segment object was sealed as "not last"; a record that says
    # the object ends there must not accept it.
    plaintext = plaintext_of(SEGMENT_SIZE + 1, seed=9)
    data_key = data_key_of(9)
    cut = seal(plaintext, data_key)[: sealed_size(SEGMENT_SIZE)]

    outcome = decrypt(cut, data_key, SEGMENT_SIZE, *whole(SEGMENT_SIZE))
    assert outcome.plaintext == b""
    assert isinstance(outcome.error, IntegrityError)


def test_object_extended_past_its_last_segment_fails() -> None:
    data_key = data_key_of(10)
    short = seal(plaintext_of(SEGMENT_SIZE, seed=10), data_key)
    longer = seal(plaintext_of(2 * SEGMENT_SIZE, seed=11), data_key)
    extended = short + segment_of(longer, 1, 2 * SEGMENT_SIZE)

    outcome = decrypt(extended, data_key, 2 * SEGMENT_SIZE, *whole(2 * SEGMENT_SIZE))
    assert outcome.plaintext == b""
    assert isinstance(outcome.error, IntegrityError)


@pytest.mark.parametrize(
    "header",
    [
        b"IGYX" + bytes([2, 16]) + bytes(10),
        b"IGYX" + bytes([1, 17]) + bytes(10),
        b"XYGI" + bytes([1, 16]) + bytes(10),
    ],
)
def test_unknown_header_is_refused(header: bytes) -> None:
    data_key = data_key_of(12)
    sealed = seal(plaintext_of(100, seed=12), data_key)

    outcome = decrypt(header + sealed[HEADER_SIZE:], data_key, 100, 0, 99)
    assert outcome.plaintext == b""
    assert isinstance(outcome.error, IntegrityError)


def stream_seal(plaintext: bytes, data_key: bytes, pieces: Sequence[int]) -> bytes:
    """Seal `plaintext` with a StreamSealer, handed over `pieces` bytes at a time."""
    sealer = StreamSealer(data_key)
    sealed = bytearray()
    pending = bytearray()
    position = 0
    for size in itertools.cycle(pieces):
        if position >= len(plaintext):
            break
        pending += plaintext[position : position + size]
        position += size
        out, used = sealer.seal(pending)
        sealed += out
        del pending[:used]
    out, used = sealer.seal(pending, final=True)
    assert used == len(pending)
    return bytes(sealed + out)


@property_settings
@given(size=sizes, seed=seeds, pieces=read_sizes)
def test_stream_sealer_writes_the_same_object_as_the_reader(
    size: int, seed: int, pieces: list[int]
) -> None:
    plaintext = plaintext_of(size, seed)
    data_key = data_key_of(seed)

    sealed = stream_seal(plaintext, data_key, pieces)

    assert sealed == seal(plaintext, data_key)
    start, end = whole(size)
    assert decrypt(sealed, data_key, size, start, end) == Outcome(plaintext, None)


@pytest.mark.parametrize("size", [1, SEGMENT_SIZE, 2 * SEGMENT_SIZE])
def test_stream_sealer_keeps_the_possibly_last_segment_open(size: int) -> None:
    sealer = StreamSealer(data_key_of(1))

    sealed, used = sealer.seal(bytes(size))

    assert used == size - 1 - (size - 1) % SEGMENT_SIZE
    expected_header = HEADER_SIZE if used else 0
    assert len(sealed) == expected_header + used + used // SEGMENT_SIZE * TAG_SIZE


def test_stream_sealer_refuses_an_empty_last_segment_after_full_ones() -> None:
    sealer = StreamSealer(data_key_of(2))
    _, used = sealer.seal(bytes(SEGMENT_SIZE + 1))
    assert used == SEGMENT_SIZE

    # The byte held back was the last one; sealing nothing instead is a caller's bug.
    with pytest.raises(ValueError, match="last bytes"):
        sealer.seal(b"", final=True)


def test_stream_sealer_refuses_more_after_the_end() -> None:
    sealer = StreamSealer(data_key_of(3))
    sealer.seal(b"all of it", final=True)

    with pytest.raises(ValueError, match="already sealed"):
        sealer.seal(b"more")


@pytest.mark.parametrize("length", [0, 16, 31, 33])
def test_stream_sealer_refuses_a_data_key_that_is_not_32_bytes(length: int) -> None:
    with pytest.raises(ValueError):
        StreamSealer(bytes(length))
