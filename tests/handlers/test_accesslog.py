"""The access log writes its lines in batches, in the shape of every other line."""

from __future__ import annotations

import asyncio
import io
import logging
import re

import pytest

from handlers.accesslog import BATCH_BYTES, FLUSH_SECONDS, AccessLog

LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO imgyx\.access: GET /abcde 200 5 0\.1ms$"
)


@pytest.fixture
def stream_handler(caplog):
    caplog.set_level(logging.INFO, logger="imgyx.access")
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    return handler


@pytest.mark.gen_test
async def test_lines_are_written_together_shortly_after(stream_handler):
    log = AccessLog()
    log.write_to(stream_handler)
    log.add("GET /abcde 200 5 0.1ms")
    log.add("GET /abcde 200 5 0.1ms")
    assert stream_handler.stream.getvalue() == ""

    await asyncio.sleep(FLUSH_SECONDS * 3)

    lines = stream_handler.stream.getvalue().splitlines()
    assert len(lines) == 2
    assert all(LINE.match(line) for line in lines), lines
    # The same shape as the line the handler itself makes of that message.
    record = logging.LogRecord(
        "imgyx.access", logging.INFO, "", 0, "GET /abcde 200 5 0.1ms", (), None
    )
    assert LINE.match(stream_handler.format(record))


@pytest.mark.gen_test
async def test_a_full_batch_is_written_at_once(stream_handler):
    log = AccessLog()
    log.write_to(stream_handler)
    message = "GET /abcde 200 5 0.1ms"
    count = BATCH_BYTES // len(message) + 1
    for _ in range(count):
        log.add(message)
    assert len(stream_handler.stream.getvalue().splitlines()) == count


@pytest.mark.gen_test
async def test_nothing_is_kept_when_info_lines_are_off(stream_handler):
    log = AccessLog()
    log.write_to(stream_handler)
    logger = logging.getLogger("imgyx.access")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        log.add("GET /abcde 200 5 0.1ms")
        log.flush()
    finally:
        logger.setLevel(level)
    assert stream_handler.stream.getvalue() == ""
