"""BufferPool: buffers kept by size, within a bound, and let go once idle."""

from __future__ import annotations

from storage.buffers import BufferPool


def test_a_buffer_given_back_is_taken_again_for_its_size_only() -> None:
    pool = BufferPool(keep_bytes=1 << 20)
    buffer = pool.take(4096)
    pool.give_back(buffer)

    assert pool.take(8192) is not buffer
    assert pool.take(4096) is buffer
    assert pool.take(4096) is not buffer  # taken already: a new one


def test_no_more_than_keep_bytes_are_kept() -> None:
    pool = BufferPool(keep_bytes=10_000)
    first, second, third = pool.take(4000), pool.take(4000), pool.take(4000)
    for buffer in (first, second, third):
        pool.give_back(buffer)

    assert pool.kept_bytes == 8000
    kept = {id(pool.take(4000)), id(pool.take(4000))}
    assert kept == {id(first), id(second)}
    assert pool.kept_bytes == 0


def test_kept_buffers_go_after_a_round_in_which_none_was_taken() -> None:
    pool = BufferPool(keep_bytes=1 << 20)
    buffer = pool.take(4096)
    pool.give_back(buffer)
    pool.release_if_idle()  # taken in this round: kept
    assert pool.kept_bytes == 4096

    pool.release_if_idle()  # nothing taken since: dropped

    assert pool.kept_bytes == 0
    assert pool.take(4096) is not buffer
