"""Shared fixtures: a real application on a temporary data folder, served over HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import uuid
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from tornado import httpserver, ioloop, web

from config import Settings
from handlers import Services, make_app
from server import close_services, make_http_server, open_services, prepare_data
from tests.services import PostgresServer, S3Server, postgresql, seaweedfs

TEST_LIMIT = 200_000


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "settings(**values): override test settings")


# Every asyncio loop made during the tests, so stray ones can be closed: pytest-
# tornado and Tornado's IOLoop.current() make loops outside any running one and
# never close them. Left alone, such a loop surfaces as an "unclosed event loop"
# or "unclosed socket" warning in whichever later test the collector picks, or at
# the end of the session, failing a run in which every test passed.
_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_loop_init = asyncio.BaseEventLoop.__init__


def _tracked_loop_init(self: asyncio.BaseEventLoop) -> None:
    _loop_init(self)
    _loops.add(self)


asyncio.BaseEventLoop.__init__ = _tracked_loop_init  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def close_stray_event_loops() -> Iterator[None]:
    yield
    for loop in list(_loops):
        if not loop.is_running() and not loop.is_closed():
            loop.close()


def pytest_sessionfinish() -> None:
    for loop in list(_loops):
        if not loop.is_running() and not loop.is_closed():
            loop.close()


@pytest.fixture
def io_loop() -> Iterator[ioloop.IOLoop]:
    """A fresh loop per test that is closed afterwards (pytest-tornado's own leaves
    the asyncio loop it makes current unclosed, which surfaces as a stray warning in
    whichever later test the garbage collector picks)."""
    loop = ioloop.IOLoop()
    asyncio.set_event_loop(loop.asyncio_loop)  # type: ignore[attr-defined]
    yield loop
    asyncio.set_event_loop(None)
    loop.close(all_fds=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with seaweedfs() as server:
        yield server


@pytest.fixture(scope="session")
def s3_bucket(s3_server: S3Server) -> str:
    """One bucket for the session (each new bucket costs SeaweedFS volumes); tests
    keep apart by object name prefix."""
    return "imgyx-tests"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with postgresql() as server:
        server.execute("CREATE DATABASE imgyx")
        yield server


def fresh_postgres_url(server: PostgresServer) -> str:
    """An empty schema in the test database, so each test starts from nothing."""
    server.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public", "imgyx")
    return server.url("imgyx")


BACKENDS = ["local-sqlite", "s3-postgresql"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Store and database settings; every API test runs on both pairs."""
    if request.param == "local-sqlite":
        return {"storage": "local"}
    s3: S3Server = request.getfixturevalue("s3_server")
    postgres: PostgresServer = request.getfixturevalue("postgres_server")
    return {
        "storage": "s3",
        "s3_endpoint": s3.endpoint,
        "s3_access_key": s3.access_key,
        "s3_secret_key": s3.secret_key,
        "s3_bucket": request.getfixturevalue("s3_bucket"),
        "s3_prefix": f"test-{uuid.uuid4().hex[:16]}/",
        "s3_secure": False,
        "database_url": fresh_postgres_url(postgres),
    }


@pytest.fixture
def settings(
    tmp_path: Any, request: pytest.FixtureRequest, backend: dict[str, Any]
) -> Settings:
    spool = tmp_path / "spool"
    spool.mkdir()
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "spool_dir": spool,
        "max_upload_bytes": TEST_LIMIT,
        **backend,
    }
    marker = request.node.get_closest_marker("settings")
    if marker is not None:
        values.update(marker.kwargs)
    return dataclasses.replace(Settings(), **values)


@pytest.fixture
def services(settings: Settings, io_loop: ioloop.IOLoop) -> Iterator[Services]:
    secrets = prepare_data(settings)
    services = open_services(settings, *secrets)
    io_loop.run_sync(services.store.store.prepare)
    yield services
    io_loop.run_sync(lambda: close_services(services))


@pytest.fixture
def app(services: Services) -> web.Application:
    return make_app(services)


@pytest.fixture
def http_server(
    services: Services, io_loop: ioloop.IOLoop, _unused_port: Any
) -> Iterator[httpserver.HTTPServer]:
    """The server as server.py builds it (our timeouts and body limits), not a bare one."""
    server = make_http_server(services)
    server.add_socket(_unused_port[0])
    yield server
    server.stop()
    io_loop.run_sync(server.close_all_connections)


def multipart(
    fields: list[tuple[str, str | None, bytes]], boundary: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body of (name, filename, content) parts, and its headers."""
    boundary = boundary or uuid.uuid4().hex
    body = io.BytesIO()
    for name, filename, content in fields:
        body.write(f"--{boundary}\r\n".encode())
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body.write(f"Content-Disposition: {disposition}\r\n".encode())
        body.write(b"Content-Type: application/octet-stream\r\n\r\n")
        body.write(content)
        body.write(b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return body.getvalue(), headers


def payload(size: int, seed: int = 0) -> bytes:
    """Test content with a fixed text prefix, so libmagic types it predictably."""
    prefix = b"imgyx test payload\n"
    filler = bytes((index * 31 + seed * 7) % 251 for index in range(4096))
    body = (prefix + filler * (size // len(filler) + 1))[:size]
    return body
