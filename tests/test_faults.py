"""Faults: a store that is down, slow, refusing or missing an object, and a database
that refuses or restarts. The service answers quickly with an error, keeps nothing
half-made, and recovers without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from tornado import httpclient, ioloop

from config import Settings
from handlers import Services
from server import close_services, open_services, prepare_data, prepare_store
from storage.base import ObjectNotFound, StoreError, new_object_key
from storage.s3 import S3Store
from tests.conftest import fresh_postgres_url, multipart, payload
from tests.services import PostgresServer, S3Server, free_port

# Nothing listens here: connections are refused at once.
CLOSED_PORT = free_port()
# A store that is down must fail an upload in seconds, not after a minute.
QUICK = 10.0


class Relay:
    """A TCP relay to the S3 server on a port of its own, which the test can cut (the
    store is down: listener and open connections closed), reopen on the same port
    (the store is back) or slow down (each new connection held `delay` seconds).

    tests.services.DelayProxy cannot do these: closing it leaves pooled connections
    working, and its delay spares the connections a client already holds.
    """

    def __init__(self, target_port: int) -> None:
        self.delay = 0.0
        self.held = 0
        self.port = 0
        self._target = target_port
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(
            target=self._accept, args=(self._listener,), daemon=True
        ).start()

    def cut(self) -> None:
        if self._listener is not None:
            _close(self._listener)
            self._listener = None
        self.drop_connections()

    def slow(self, delay: float) -> None:
        """Hold new connections `delay` seconds; drop the open ones, so the next
        request has to connect anew."""
        self.delay = delay
        self.drop_connections()

    def drop_connections(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            _close(connection)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self.held += 1
        time.sleep(self.delay)
        with self._lock:
            self.held -= 1
        try:
            upstream = socket.create_connection(("127.0.0.1", self._target))
        except OSError:
            self._forget(client)
            return
        with self._lock:
            live = client in self._connections
            if live:
                self._connections.add(upstream)
        if not live:  # cut while it was held
            _close(upstream)
            _close(client)
            return
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(
                target=self._pipe, args=(source, sink), daemon=True
            ).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        self._forget(source)
        self._forget(sink)

    def _forget(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)
        _close(connection)


def _close(connection: socket.socket) -> None:
    # shutdown wakes a thread blocked in accept() or recv() on it; close alone does not.
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
    connection.close()


@pytest.fixture
def relay(s3_server: S3Server) -> Iterator[Relay]:
    relay = Relay(int(s3_server.endpoint.rsplit(":", 1)[1]))
    yield relay
    relay.cut()


@pytest.fixture
def backend(
    relay: Relay, s3_server: S3Server, s3_bucket: str, postgres_server: PostgresServer
) -> dict[str, Any]:
    """S3 and PostgreSQL, the store reached through the relay."""
    return {
        "storage": "s3",
        "s3_endpoint": f"127.0.0.1:{relay.port}",
        "s3_access_key": s3_server.access_key,
        "s3_secret_key": s3_server.secret_key,
        "s3_bucket": s3_bucket,
        "s3_prefix": f"faults-{uuid.uuid4().hex[:16]}/",
        "s3_secure": False,
        "database_url": fresh_postgres_url(postgres_server),
    }


@pytest.fixture
def services(settings: Settings, io_loop: ioloop.IOLoop) -> Iterator[Services]:
    """Opened as server.py opens them: a store that is down at start is not fatal."""
    services = open_services(settings, *prepare_data(settings))
    io_loop.run_sync(lambda: prepare_store(services))
    yield services
    io_loop.run_sync(lambda: close_services(services))


async def upload(
    http_client: Any, base_url: str, content: bytes, name: str = "a.bin"
) -> httpclient.HTTPResponse:
    body, headers = multipart([("file", name, content)])
    return await http_client.fetch(
        base_url + "/api/upload",
        method="POST",
        body=body,
        headers=headers,
        raise_error=False,
    )


async def get(
    http_client: Any, base_url: str, path: str, **headers: str
) -> httpclient.HTTPResponse:
    return await http_client.fetch(base_url + path, headers=headers, raise_error=False)


def code_of(response: httpclient.HTTPResponse) -> tuple[int, str]:
    return response.code, json.loads(response.body)["code"]


async def stats(http_client: Any, base_url: str) -> dict[str, int]:
    response = await get(http_client, base_url, "/api/stats")
    assert response.code == 200
    document: dict[str, int] = json.loads(response.body)
    return document


async def object_keys(services: Services) -> list[str]:
    return [info.key async for info in services.store.store.list()]


def error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.ERROR
    ]


def s3_store(server: S3Server, bucket: str, prefix: str, **credentials: str) -> S3Store:
    keys = {"access_key": server.access_key, "secret_key": server.secret_key}
    keys.update(credentials)
    return S3Store(server.endpoint, **keys, bucket=bucket, prefix=prefix, secure=False)


def postmaster_started(server: PostgresServer) -> datetime.datetime:
    connection = psycopg2.connect(
        host=server.host, port=server.port, user="postgres", dbname="postgres"
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_postmaster_start_time()")
            row = cursor.fetchone()
    finally:
        connection.close()
    assert row is not None
    started: datetime.datetime = row[0]
    return started


def restart(server: PostgresServer) -> None:
    """Restart the cluster with the options it was started with (pg_ctl keeps them
    in postmaster.opts); the log file again, or pg_ctl would hold our pipes."""
    server.ctl("-m", "fast", "-w", "-l", str(server.folder / "server.log"), "restart")


@pytest.mark.settings(s3_endpoint=f"127.0.0.1:{CLOSED_PORT}")
@pytest.mark.gen_test(timeout=30)
async def test_upload_with_the_store_down_answers_502_quickly_and_keeps_nothing(
    http_client, base_url, services, caplog
):
    started = time.monotonic()
    response = await upload(http_client, base_url, payload(5000))

    assert code_of(response) == (502, "STORAGE_ERROR")
    assert time.monotonic() - started < QUICK
    assert (await stats(http_client, base_url))["total_files"] == 0
    assert list(services.settings.spool_folder.iterdir()) == []
    assert any(
        "store failed on POST /api/upload" in line for line in error_lines(caplog)
    )


@pytest.mark.gen_test(timeout=30)
async def test_download_with_the_store_down_answers_502_quickly(
    http_client, base_url, relay, caplog
):
    stored = json.loads((await upload(http_client, base_url, payload(5000))).body)
    relay.cut()

    started = time.monotonic()
    response = await get(http_client, base_url, stored["url"])

    assert code_of(response) == (502, "STORAGE_ERROR")
    assert time.monotonic() - started < QUICK
    assert any(f"GET /{stored['id']}" in line for line in error_lines(caplog))


@pytest.mark.parametrize("wrong", ["access_key", "secret_key"])
@pytest.mark.gen_test(timeout=30)
async def test_the_s3_server_refuses_wrong_credentials(s3_server, s3_bucket, wrong):
    prefix = f"faults-{uuid.uuid4().hex[:16]}/"
    refused = s3_store(s3_server, s3_bucket, prefix, **{wrong: "not-the-" + wrong})
    honest = s3_store(s3_server, s3_bucket, prefix)
    try:
        await honest.prepare()
        with pytest.raises(StoreError) as refusal:
            await refused.put(new_object_key(), io.BytesIO(b"refused"), 7)
        stored = [info.key async for info in honest.list()]
    finally:
        await refused.close()
        await honest.close()

    assert not isinstance(refusal.value, ObjectNotFound)
    assert stored == []


@pytest.mark.settings(s3_secret_key="not-the-secret-key")
@pytest.mark.gen_test(timeout=30)
async def test_upload_with_a_wrong_s3_secret_answers_502(http_client, base_url):
    response = await upload(http_client, base_url, payload(5000))

    assert code_of(response) == (502, "STORAGE_ERROR")
    assert (await stats(http_client, base_url))["total_files"] == 0


@pytest.mark.gen_test(timeout=30)
async def test_a_record_the_database_refuses_answers_500_and_removes_the_object(
    http_client, base_url, services, postgres_server, caplog
):
    postgres_server.execute(
        "CREATE FUNCTION refuse_files() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
        "imgyx",
    )
    postgres_server.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON files "
        "FOR EACH ROW EXECUTE FUNCTION refuse_files()",
        "imgyx",
    )
    content = payload(50_000, seed=7)

    response = await upload(http_client, base_url, content)

    assert code_of(response) == (500, "UPLOAD_FAILED")
    # The insert was reached, so the object had been put before it failed.
    assert "refused by the test" in caplog.text
    assert await object_keys(services) == []
    assert (await stats(http_client, base_url))["total_files"] == 0

    postgres_server.execute("DROP TRIGGER refuse ON files", "imgyx")
    retry = await upload(http_client, base_url, content)
    assert retry.code == 201
    assert len(await object_keys(services)) == 1


@pytest.mark.gen_test(timeout=60)
async def test_requests_succeed_after_postgresql_restarts(
    http_client, base_url, postgres_server
):
    stored = json.loads((await upload(http_client, base_url, payload(5000))).body)
    # Give every database thread a connection of its own to lose.
    warm = [
        get(http_client, base_url, f"/api/info?id={stored['id']}") for _ in range(8)
    ]
    assert {response.code for response in await asyncio.gather(*warm)} == {200}

    before = postmaster_started(postgres_server)
    await asyncio.to_thread(restart, postgres_server)
    assert postmaster_started(postgres_server) > before

    first = await get(http_client, base_url, "/api/stats")
    assert first.code in (200, 500)  # the one request allowed to fail
    codes = [
        (await get(http_client, base_url, f"/api/info?id={stored['id']}")).code,
        (await get(http_client, base_url, stored["url"])).code,
        (await upload(http_client, base_url, payload(6000, seed=1))).code,
        (await upload(http_client, base_url, payload(7000, seed=2))).code,
        (await get(http_client, base_url, "/api/stats")).code,
    ]
    assert codes == [200, 200, 201, 201, 200]
    assert (await stats(http_client, base_url))["total_files"] == 3


@pytest.mark.gen_test(timeout=30)
async def test_a_store_that_comes_back_is_used_without_a_restart(
    http_client, base_url, relay
):
    content = payload(40_000, seed=3)
    relay.cut()
    refused = await upload(http_client, base_url, content)
    assert code_of(refused) == (502, "STORAGE_ERROR")

    relay.restore()
    accepted = await upload(http_client, base_url, content)

    assert accepted.code == 201
    stored = json.loads(accepted.body)
    assert (await get(http_client, base_url, stored["url"])).body == content


@pytest.mark.gen_test(timeout=30)
async def test_a_slow_store_does_not_hold_up_other_requests(
    http_client, base_url, relay
):
    existing = json.loads((await upload(http_client, base_url, payload(5000))).body)
    relay.slow(5)
    started = time.monotonic()
    pending = asyncio.ensure_future(
        upload(http_client, base_url, payload(8000, seed=4))
    )
    while relay.held == 0:
        assert time.monotonic() - started < 4, "the upload never reached the store"
        await asyncio.sleep(0.05)

    for path in ("/api/stats", f"/api/info?id={existing['id']}"):
        asked = time.monotonic()
        assert (await get(http_client, base_url, path)).code == 200
        assert time.monotonic() - asked < 1.0, path
    assert not pending.done()

    assert (await pending).code == 201
    assert time.monotonic() - started >= 5


@pytest.mark.parametrize(
    "headers", [{}, {"Range": "bytes=100-999"}], ids=["whole", "range"]
)
@pytest.mark.gen_test(timeout=30)
async def test_a_record_whose_object_is_gone_answers_502_not_a_short_200(
    http_client, base_url, services, caplog, headers
):
    stored = json.loads((await upload(http_client, base_url, payload(5000))).body)
    (key,) = await object_keys(services)
    await services.store.delete(key)

    response = await get(http_client, base_url, stored["url"], **headers)

    assert code_of(response) == (502, "STORAGE_ERROR")
    assert any(f"/{stored['id']}" in line for line in error_lines(caplog))
