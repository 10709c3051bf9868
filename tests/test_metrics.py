"""GET /metrics: Prometheus text, summed over every worker process."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import payload
from tests.support import Server


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when it is absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = rf"^{re.escape(name)}(?:\{{{re.escape(wanted)}\}})? ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_metrics_add_up_over_worker_processes(tmp_path: Path):
    server = Server(
        tmp_path / "data", IMGYX_PROCESSES="2", IMGYX_RATE_LIMIT_PER_HOUR="7"
    )
    try:
        files = [server.upload(payload(3000, seed=seed), "m.bin") for seed in range(6)]
        server.upload(payload(3000, seed=0), "again.bin")  # a dedup hit
        refused, _ = server.request("/api/upload", *_multipart_of(payload(10, seed=99)))
        for file in files:
            assert server.request(file["url"])[0] == 200
        status, headers, body = server.fetch("/metrics")
    finally:
        server.stop()
    text = body.decode()
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert refused == 429
    assert (
        sample(text, "imgyx_requests_total", route="UploadHandler", status="201") == 6
    )
    assert (
        sample(text, "imgyx_requests_total", route="UploadHandler", status="200") == 1
    )
    assert (
        sample(text, "imgyx_requests_total", route="RawFileHandler", status="200") == 6
    )
    assert sample(text, "imgyx_dedup_hits_total") == 1
    assert sample(text, "imgyx_rate_limited_total") == 1
    assert sample(text, "imgyx_upload_seconds_count") == 8
    assert sample(text, "imgyx_store_seconds_count", operation="put") == 6
    assert sample(text, "imgyx_bytes_out_total") >= 6 * 3000
    assert sample(text, "imgyx_bytes_in_total") >= 7 * 3000
    assert "imgyx_view_flush_lag_seconds" in text


def _multipart_of(content: bytes) -> tuple[bytes, dict[str, str]]:
    from tests.conftest import multipart

    return multipart([("file", "x.bin", content)])
