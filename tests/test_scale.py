"""Several processes, one service: `python server.py` processes that share one
PostgreSQL database and one S3 bucket prefix, as two machines behind a balancer do."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import urllib3
from minio import Minio

from config import Settings
from models import open_database
from models.migrations import MIGRATIONS, migrate
from tests.conftest import fresh_postgres_url, multipart, payload
from tests.services import PostgresServer, S3Server
from tests.support import Server

MIB = 1024 * 1024
StartServers = Callable[..., list[Server]]


class Machine(Server):
    """One server of the deployment; closes its log when it fails to start, which
    Server leaves open."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        try:
            super().__init__(data_dir, **env)
        except RuntimeError:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.log.close()
            raise


@pytest.fixture
def shared_environment(
    s3_server: S3Server, s3_bucket: str, postgres_server: PostgresServer
) -> dict[str, str]:
    """The IMGYX_* settings every process of one deployment shares."""
    return {
        "IMGYX_STORAGE": "s3",
        "IMGYX_S3_ENDPOINT": s3_server.endpoint,
        "IMGYX_S3_ACCESS_KEY": s3_server.access_key,
        "IMGYX_S3_SECRET_KEY": s3_server.secret_key,
        "IMGYX_S3_BUCKET": s3_bucket,
        "IMGYX_S3_PREFIX": f"scale-{uuid.uuid4().hex[:16]}/",
        "IMGYX_S3_SECURE": "false",
        "IMGYX_DATABASE_URL": fresh_postgres_url(postgres_server),
        "IMGYX_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
    }


@pytest.fixture
def start_servers(
    tmp_path: Path, shared_environment: dict[str, str]
) -> Iterator[StartServers]:
    """Starts servers of one deployment together, each on its own data and spool
    folders (its own machine); every server still running at the end is stopped."""
    started: list[Server] = []

    def start_one(name: str, env: dict[str, str]) -> Server:
        spool = tmp_path / f"spool-{name}"
        spool.mkdir()
        data = tmp_path / f"data-{name}"
        return Machine(data, **shared_environment, IMGYX_SPOOL_DIR=str(spool), **env)

    def start(*names: str, **env: str) -> list[Server]:
        with ThreadPoolExecutor(len(names)) as pool:
            starting = [pool.submit(start_one, name, env) for name in names]
        started.extend(job.result() for job in starting if not job.exception())
        return [job.result() for job in starting]

    yield start
    stop_all([server for server in started if server.process.poll() is None])


def stop_all(servers: list[Server]) -> None:
    """SIGTERM to every server at once; each flushes its view counts and exits 0."""
    with ThreadPoolExecutor(max(len(servers), 1)) as pool:
        list(pool.map(Server.stop, servers))


def database_row(
    server: PostgresServer, statement: str, *parameters: object
) -> tuple[Any, ...]:
    connection = psycopg2.connect(
        host=server.host, port=server.port, user="postgres", dbname="imgyx"
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement, parameters)
            row = cursor.fetchone()
    finally:
        connection.close()
    assert row is not None
    return tuple(row)


def objects_under_prefix(s3_server: S3Server, bucket: str, prefix: str) -> list[str]:
    connections = urllib3.PoolManager()
    client = Minio(
        s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        secure=False,
        http_client=connections,
    )
    try:
        listing = client.list_objects(bucket, prefix=prefix, recursive=True)
        return [str(found.object_name)[len(prefix) :] for found in listing]
    finally:
        connections.clear()


def post_file(server: Server, content: bytes, name: str) -> tuple[int, dict[str, Any]]:
    body, headers = multipart([("file", name, content)])
    status, answer = server.request("/api/upload", body, headers)
    return status, json.loads(answer)


def json_of(server: Server, path: str) -> dict[str, Any]:
    status, answer = server.request(path)
    assert status == 200, answer
    document: dict[str, Any] = json.loads(answer)
    return document


def children_after_fork(server: Server, expected: int) -> list[str]:
    """The server's child processes, once `expected` are there or after 10 s: it
    logs its address before it forks."""
    deadline = time.monotonic() + 10
    while True:
        children = subprocess.run(
            ["ps", "--ppid", str(server.process.pid), "-o", "pid="],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if len(children) >= expected or time.monotonic() > deadline:
            return children
        time.sleep(0.05)


def test_two_processes_migrating_a_new_database_at_once_both_succeed(
    tmp_path, postgres_server
):
    """What every server does on start, on two connections at the same instant, as
    when two machines of a new deployment start together. Whole processes (as in
    start_servers) hit this race only when their slow start-ups happen to line up."""
    settings = dataclasses.replace(
        Settings(),
        data_dir=tmp_path,
        database_url=fresh_postgres_url(postgres_server),
    )
    database = open_database(settings)
    together = threading.Barrier(2)

    def start() -> int:
        together.wait(timeout=10)
        try:
            return migrate(database)
        finally:
            database.close()

    with ThreadPoolExecutor(2) as pool:
        versions = [job.result() for job in [pool.submit(start) for _ in range(2)]]

    assert versions == [MIGRATIONS[-1][0]] * 2


def test_a_file_uploaded_on_one_server_is_served_by_the_other(start_servers):
    first, second = start_servers("a", "b")
    content = payload(300_000, seed=21)
    stored = first.upload(content, "shared.bin")

    info_path = f"/api/info?id={stored['id']}"
    assert json_of(second, info_path) == json_of(first, info_path)
    assert json_of(second, info_path)["file_name"] == "shared.bin"
    assert second.request(stored["url"]) == (200, content)


def test_a_file_deleted_on_one_server_is_gone_from_the_others_memory(start_servers):
    """Each server runs a worker per core, each keeping hot files in memory; a
    delete on one machine must reach every worker of the other at once."""
    first, second = start_servers("a", "b")
    content = payload(40_000, seed=24)
    stored = first.upload(content, "hot.bin")
    for _ in range(10):  # new connections: every worker answers, from memory
        assert second.request(stored["url"]) == (200, content)
        assert first.request(stored["url"]) == (200, content)

    status, _, _ = first.fetch(
        f"/api/files/{stored['id']}",
        headers={"X-Delete-Token": stored["delete_token"]},
        method="DELETE",
    )

    assert status == 200
    for _ in range(10):
        assert second.request(stored["url"])[0] == 404
        assert second.fetch(stored["url"], method="HEAD")[0] == 404


def test_the_same_file_raced_to_both_servers_is_stored_once(
    start_servers, shared_environment, s3_server, s3_bucket, postgres_server
):
    servers = start_servers("a", "b")
    content = payload(20 * MIB, seed=22)
    together = threading.Barrier(len(servers))

    def race(server: Server) -> tuple[int, dict[str, Any]]:
        together.wait(timeout=10)
        return post_file(server, content, "race.bin")

    with ThreadPoolExecutor(len(servers)) as pool:
        answers = list(pool.map(race, servers))

    assert sorted((status, answer["duplicate"]) for status, answer in answers) == [
        (200, True),
        (201, False),
    ]
    assert answers[0][1]["id"] == answers[1][1]["id"]
    count, object_key = database_row(
        postgres_server, "SELECT count(*), max(object_key) FROM files"
    )
    assert count == 1
    prefix = shared_environment["IMGYX_S3_PREFIX"]
    assert objects_under_prefix(s3_server, s3_bucket, prefix) == [object_key]


def test_the_upload_rate_limit_is_shared_by_both_servers(start_servers):
    first, second = start_servers("a", "b", IMGYX_RATE_LIMIT_PER_HOUR="4")
    for index, server in enumerate((first, second, first, second)):
        server.upload(payload(1000, seed=30 + index), f"{index}.bin")

    refusals = [
        post_file(server, payload(1000, seed=39), "5.bin") for server in (first, second)
    ]

    assert [(status, answer["code"]) for status, answer in refusals] == [
        (429, "RATE_LIMITED"),
        (429, "RATE_LIMITED"),
    ]


def test_views_counted_on_both_servers_add_up(start_servers, postgres_server):
    first, second = start_servers("a", "b")
    stored = first.upload(payload(2000, seed=40), "viewed.bin")
    for server, views in ((first, 3), (second, 2)):
        for _ in range(views):
            assert server.request(stored["url"])[0] == 200

    stop_all([first, second])

    row = database_row(
        postgres_server,
        "SELECT f.views, t.views FROM files f, totals t WHERE f.id = %s",
        stored["id"],
    )
    assert row == (5, 5)


def test_stats_equal_what_the_database_holds_after_load(start_servers, postgres_server):
    servers = start_servers("a", "b")
    contents = [payload(5000 + index * 997, seed=50 + index) for index in range(8)]
    # Every file goes to both servers at once, so each upload races a twin.
    jobs = [
        (servers[(index + turn) % 2], content)
        for index, content in enumerate(contents)
        for turn in range(2)
    ]
    with ThreadPoolExecutor(8) as pool:
        stored = list(pool.map(lambda job: job[0].upload(job[1], "load.bin"), jobs))
        reads = [(server, file["url"]) for server in servers for file in stored[::2]]
        statuses = set(pool.map(lambda read: read[0].request(read[1])[0], reads))
    assert statuses == {200}
    stop_all(servers)

    (third,) = start_servers("c")
    stats = json_of(third, "/api/stats")

    held = database_row(
        postgres_server, "SELECT count(*), sum(size), sum(views) FROM files"
    )
    assert held == (8, sum(len(content) for content in contents), 16)
    assert (
        stats["total_files"],
        stats["total_storage_bytes"],
        stats["total_views"],
    ) == held


def test_forked_workers_on_postgresql_and_s3_serve_as_one(
    start_servers, postgres_server
):
    (server,) = start_servers("workers", IMGYX_PROCESSES="2")
    assert len(children_after_fork(server, 2)) == 2
    contents = [payload(3000 + index * 101, seed=60 + index) for index in range(10)]
    with ThreadPoolExecutor(4) as pool:
        stored = list(
            pool.map(lambda content: server.upload(content, "w.bin"), contents)
        )

    assert len({file["id"] for file in stored}) == 10
    for file, content in zip(stored, contents, strict=True):
        assert server.request(file["url"]) == (200, content)
    stats = json_of(server, "/api/stats")
    assert (stats["total_files"], stats["total_storage_bytes"]) == (
        10,
        sum(len(content) for content in contents),
    )
    server.stop()
    assert database_row(postgres_server, "SELECT sum(views) FROM totals") == (10,)
