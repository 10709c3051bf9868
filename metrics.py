"""Prometheus metrics, summed over every worker process.

prometheus_client picks its storage when it is first imported, and with several
workers it must keep values in files that all of them share. So it is imported
here, lazily, by `setup()`: the server calls it before forking. Until then every
recording function is a no-op, which keeps the library-free paths (commands, unit
tests) free of it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

_metrics: dict[str, Any] = {}
_state: dict[str, Any] = {"last_flush": time.time()}

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def setup(shared_folder: Path | None) -> None:
    """Create the metrics; with `shared_folder`, in multi-process mode."""
    if _metrics:
        return
    if shared_folder is not None:
        shared_folder.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(shared_folder)
    import prometheus_client as prometheus

    _metrics.update(
        requests=prometheus.Counter(
            "imgyx_requests_total", "Requests answered", ["route", "status"]
        ),
        bytes_in=prometheus.Counter("imgyx_bytes_in_total", "Request body bytes read"),
        bytes_out=prometheus.Counter("imgyx_bytes_out_total", "Response bytes sent"),
        upload_seconds=prometheus.Histogram(
            "imgyx_upload_seconds", "Time to answer an upload", buckets=SECONDS_BUCKETS
        ),
        store_seconds=prometheus.Histogram(
            "imgyx_store_seconds",
            "Object store call latency",
            ["operation"],
            buckets=SECONDS_BUCKETS,
        ),
        store_errors=prometheus.Counter(
            "imgyx_store_errors_total", "Object store failures", ["operation"]
        ),
        dedup_hits=prometheus.Counter(
            "imgyx_dedup_hits_total", "Uploads answered with content already stored"
        ),
        rate_limited=prometheus.Counter(
            "imgyx_rate_limited_total", "Uploads refused by the rate limit"
        ),
        thumbnail_failures=prometheus.Counter(
            "imgyx_thumbnail_failures_total", "Images that got no thumbnail"
        ),
        flush_lag=prometheus.Gauge(
            "imgyx_view_flush_lag_seconds",
            "Seconds since view counts were last written",
            multiprocess_mode="max",
        ),
    )
    _metrics["module"] = prometheus


def enabled() -> bool:
    return bool(_metrics)


def request(route: str, status: int, bytes_in: int, bytes_out: int) -> None:
    if _metrics:
        _metrics["requests"].labels(route, str(status)).inc()
        _metrics["bytes_in"].inc(bytes_in)
        _metrics["bytes_out"].inc(bytes_out)


def upload_answered(seconds: float) -> None:
    if _metrics:
        _metrics["upload_seconds"].observe(seconds)


def store_call(operation: str, seconds: float, failed: bool) -> None:
    if _metrics:
        _metrics["store_seconds"].labels(operation).observe(seconds)
        if failed:
            _metrics["store_errors"].labels(operation).inc()


def dedup_hit() -> None:
    if _metrics:
        _metrics["dedup_hits"].inc()


def rate_limited() -> None:
    if _metrics:
        _metrics["rate_limited"].inc()


def thumbnail_failed() -> None:
    if _metrics:
        _metrics["thumbnail_failures"].inc()


def views_flushed() -> None:
    _state["last_flush"] = time.time()


def render() -> tuple[bytes, str]:
    """The exposition text for GET /metrics, over all workers when there are several."""
    prometheus = _metrics["module"]
    _metrics["flush_lag"].set(time.time() - _state["last_flush"])
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        from prometheus_client import multiprocess

        registry = prometheus.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = prometheus.REGISTRY
    return prometheus.generate_latest(registry), prometheus.CONTENT_TYPE_LATEST
