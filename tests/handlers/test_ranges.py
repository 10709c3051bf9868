"""Range requests on encrypted objects, checked against the plaintext (hypothesis)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.crypto import SEGMENT_SIZE
from tests.conftest import payload
from tests.support import Server

SIZE = 3 * SEGMENT_SIZE + 1234
CONTENT = payload(SIZE, seed=99)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    server = Server(tmp_path_factory.mktemp("ranges") / "data")
    try:
        yield server, server.upload(CONTENT, "ranges.bin")["url"]
    finally:
        server.stop()


def near_boundaries() -> st.SearchStrategy[int]:
    boundary = st.sampled_from(
        [0, SEGMENT_SIZE, 2 * SEGMENT_SIZE, 3 * SEGMENT_SIZE, SIZE]
    )
    return st.one_of(
        st.builds(
            lambda b, d: min(max(b + d, 0), SIZE - 1), boundary, st.integers(-2, 2)
        ),
        st.integers(0, SIZE - 1),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=near_boundaries(), second=near_boundaries())
def test_any_range_equals_the_plaintext_slice(served, first, second):
    server, url = served
    start, end = sorted((first, second))
    status, headers, body = server.fetch(url, headers={"Range": f"bytes={start}-{end}"})
    assert status == 206
    assert headers["Content-Range"] == f"bytes {start}-{end}/{SIZE}"
    assert headers["Content-Length"] == str(end - start + 1)
    assert body == CONTENT[start : end + 1]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=near_boundaries())
def test_open_ended_range_runs_to_the_last_byte(served, start):
    server, url = served
    status, headers, body = server.fetch(url, headers={"Range": f"bytes={start}-"})
    assert (status, body) == (206, CONTENT[start:])
    assert headers["Content-Range"] == f"bytes {start}-{SIZE - 1}/{SIZE}"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(suffix=st.one_of(st.integers(1, SIZE + 10), st.sampled_from([1, SEGMENT_SIZE])))
def test_suffix_range_returns_the_last_bytes(served, suffix):
    server, url = served
    status, headers, body = server.fetch(url, headers={"Range": f"bytes=-{suffix}"})
    assert status == 206
    assert body == CONTENT[-suffix:]
    assert (
        headers["Content-Range"] == f"bytes {max(SIZE - suffix, 0)}-{SIZE - 1}/{SIZE}"
    )


def test_curl_resumes_a_cut_download(served, tmp_path):
    server, url = served
    curl = shutil.which("curl")
    assert curl is not None, "curl is needed for this test (apt-get install curl)"
    partial = tmp_path / "download.bin"
    partial.write_bytes(CONTENT[:100_000])  # as if the transfer had been cut here
    result = subprocess.run(
        [
            curl,
            "--silent",
            "--show-error",
            "-C",
            "-",
            "-o",
            str(partial),
            server.base + url,
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert partial.read_bytes() == CONTENT
