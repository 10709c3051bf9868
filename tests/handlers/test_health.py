"""GET /healthz (the process answers) and GET /readyz (its database and store do)."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tornado import httpclient, ioloop, netutil

from config import Settings
from handlers import Services
from server import close_services, make_http_server, open_services, prepare_data


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def unreachable_store(tmp_path: Path, io_loop: ioloop.IOLoop) -> Iterator[Services]:
    """Services whose S3 store is an endpoint where nothing answers."""
    settings = dataclasses.replace(
        Settings(),
        storage="s3",
        s3_endpoint=f"127.0.0.1:{closed_port()}",
        s3_access_key="imgyx-test",
        s3_secret_key="imgyx-test-secret",
        s3_secure=False,
        data_dir=tmp_path / "data",
        spool_dir=tmp_path,
    )
    services = open_services(settings, *prepare_data(settings))
    yield services
    io_loop.run_sync(lambda: close_services(services))


@pytest.mark.gen_test
async def test_healthz_answers_200(http_client, base_url):
    response = await http_client.fetch(base_url + "/healthz")

    assert response.code == 200
    assert json.loads(response.body) == {"status": "ok"}
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.gen_test
async def test_readyz_answers_200_when_database_and_store_answer(http_client, base_url):
    response = await http_client.fetch(base_url + "/readyz")

    assert response.code == 200
    assert json.loads(response.body) == {
        "status": "ok",
        "database": "ok",
        "store": "ok",
    }
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.gen_test(timeout=20)
async def test_readyz_answers_503_within_seconds_when_the_store_is_unreachable(
    unreachable_store,
):
    server = make_http_server(unreachable_store)
    sockets = netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    client = httpclient.AsyncHTTPClient(force_instance=True)
    try:
        started = time.monotonic()
        response = await client.fetch(
            f"http://127.0.0.1:{port}/readyz", raise_error=False, request_timeout=15
        )
        elapsed = time.monotonic() - started
    finally:
        client.close()
        server.stop()
        await server.close_all_connections()

    assert response.code == 503
    assert json.loads(response.body) == {
        "status": "unavailable",
        "database": "ok",
        "store": "error",
    }
    assert elapsed < 5
