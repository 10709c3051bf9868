"""Operator commands: `python server.py takedown|scrub|gc|stats`.

Takedown and scrub run through the real command line next to a running server on
the same data folder (local store); the parser's help and the commands themselves are
also exercised in-process, on both backends.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import commands
from handlers import Services
from server import parse_arguments
from tests.conftest import multipart, payload
from tests.support import ROOT, Server


def run_command(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "server.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "IMGYX_DATA_DIR": str(data_dir)},
        timeout=30,
    )


def object_files(data_dir: Path) -> list[Path]:
    return [path for path in (data_dir / "objects").rglob("*") if path.is_file()]


def object_keys_of(data_dir: Path, file_id: str) -> list[str]:
    """The file's object key, then its thumbnail's when it has one."""
    with contextlib.closing(sqlite3.connect(data_dir / "imgyx.db")) as database:
        row = database.execute(
            "SELECT object_key, thumbnail_key FROM files WHERE id = ?", (file_id,)
        ).fetchone()
    return [str(key) for key in row if key]


def png(side: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def error_code(answer: bytes) -> str:
    return str(json.loads(answer)["code"])


@pytest.fixture(scope="module")
def shared_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("takedown") / "data"


@pytest.fixture(scope="module")
def shared_server(shared_data_dir: Path) -> Iterator[Server]:
    """One server for the takedown tests; each works on its own uploads."""
    server = Server(shared_data_dir)
    yield server
    server.stop()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def server(data_dir: Path) -> Iterator[Server]:
    server = Server(data_dir)
    yield server
    server.stop()


# -- the command line -------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("takedown", "--ban"),
        ("scrub", "usage: server.py scrub"),
        ("gc", "--older-than"),
        ("stats", "usage: server.py stats"),
    ],
)
def test_each_command_explains_itself_with_help(capsys, command, expected):
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments([command, "--help"])

    assert exit_info.value.code == 0
    output = capsys.readouterr().out
    assert output.startswith(f"usage: server.py {command}")
    assert expected in output


def test_takedown_blocks_the_id_with_451_and_removes_its_objects(
    shared_server, shared_data_dir
):
    file = shared_server.upload(png(), "taken.png")
    keys = set(object_keys_of(shared_data_dir, file["id"]))
    assert len(keys) == 2
    assert keys <= {path.name for path in object_files(shared_data_dir)}

    result = run_command(shared_data_dir, "takedown", file["id"])

    assert result.returncode == 0
    assert result.stdout.splitlines() == [f"{file['id']}: taken down"]
    raw_status, raw_answer = shared_server.request(f"/{file['id']}")
    assert (raw_status, error_code(raw_answer)) == (451, "BLOCKED")
    info_status, info_answer = shared_server.request(f"/api/info?id={file['id']}")
    assert (info_status, error_code(info_answer)) == (451, "BLOCKED")
    assert not keys & {path.name for path in object_files(shared_data_dir)}
    assert shared_server.request(file["thumbnail_url"])[0] == 451


def test_no_worker_answers_from_memory_after_a_takedown_or_a_delete(
    shared_server, shared_data_dir
):
    """The server runs its default worker per core, each with its own cache; every
    request is a new connection, so each worker has answered (and kept) both files."""
    taken = shared_server.upload(png(48), "hot.png")
    deleted = shared_server.upload(payload(3000, seed=23), "hot.bin")
    for _ in range(20):
        for path in (taken["url"], taken["thumbnail_url"], deleted["url"]):
            assert shared_server.request(path)[0] == 200

    assert run_command(shared_data_dir, "takedown", taken["id"]).returncode == 0
    status, _, _ = shared_server.fetch(
        f"/api/files/{deleted['id']}",
        headers={"X-Delete-Token": deleted["delete_token"]},
        method="DELETE",
    )
    assert status == 200

    for _ in range(20):
        assert shared_server.request(taken["url"])[0] == 451
        assert shared_server.request(taken["thumbnail_url"])[0] == 451
        assert shared_server.fetch(taken["url"], method="HEAD")[0] == 451
        assert shared_server.request(deleted["url"])[0] == 404


def test_takedown_of_an_unknown_id_exits_1(shared_server, shared_data_dir):
    result = run_command(shared_data_dir, "takedown", "Nobody123")

    assert result.returncode == 1
    assert result.stdout.splitlines() == ["Nobody123: no such file"]


def test_takedown_with_ban_refuses_the_same_bytes_but_not_others(
    shared_server, shared_data_dir
):
    content = payload(3000, seed=21)
    file = shared_server.upload(content, "banned.bin")

    result = run_command(
        shared_data_dir, "takedown", file["id"], "--ban", "--reason", "complaint 7"
    )

    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        f"{file['id']}: taken down and its content banned"
    ]
    body, headers = multipart([("file", "again.bin", content)])
    status, answer = shared_server.request("/api/upload", body, headers)
    assert (status, error_code(answer)) == (451, "BLOCKED")
    other = shared_server.upload(payload(3000, seed=22), "other.bin")
    assert shared_server.request(other["url"])[0] == 200


def test_scrub_of_a_healthy_store_exits_0_with_no_problems(server, data_dir):
    server.upload(payload(5000, seed=23), "a.bin")
    server.upload(png(), "b.png")

    result = run_command(data_dir, "scrub")

    assert result.returncode == 0
    assert result.stdout.splitlines() == ["scrub: 2 files, 0 problems"]


def test_scrub_names_the_file_whose_object_has_a_flipped_bit(server, data_dir):
    damaged = server.upload(payload(5000, seed=24), "damaged.bin")
    healthy = server.upload(payload(5000, seed=25), "healthy.bin")
    (path,) = [
        path
        for path in object_files(data_dir)
        if path.name == object_keys_of(data_dir, damaged["id"])[0]
    ]
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01
    path.write_bytes(bytes(content))

    result = run_command(data_dir, "scrub")

    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{damaged['id']}: failed authentication")
    assert lines[1:] == ["scrub: 2 files, 1 problems"]
    assert not any(line.startswith(healthy["id"]) for line in lines)


# -- in-process, on both backends -------------------------------------------------


async def upload(http_client: Any, base_url: str, content: bytes, name: str) -> dict:
    body, headers = multipart([("file", name, content)])
    response = await http_client.fetch(
        base_url + "/api/upload", method="POST", body=body, headers=headers
    )
    return dict(json.loads(response.body))


async def object_keys(services: Services) -> set[str]:
    return {info.key async for info in services.store.store.list()}


async def read_object(services: Services, key: str) -> bytes:
    size = (await services.store.store.stat(key)).size
    return b"".join([chunk async for chunk in services.store.store.get(key, 0, size)])


async def replace_object(services: Services, key: str, content: bytes) -> None:
    await services.store.store.put(key, io.BytesIO(content), len(content))


async def flip_a_bit(services: Services, key: str) -> None:
    content = bytearray(await read_object(services, key))
    content[len(content) // 2] ^= 0x01
    await replace_object(services, key, bytes(content))


async def cut_in_half(services: Services, key: str) -> None:
    content = await read_object(services, key)
    await replace_object(services, key, content[: len(content) // 2])


async def delete_object(services: Services, key: str) -> None:
    await services.store.delete(key)


@pytest.mark.parametrize(
    ("damage", "which", "expected"),
    [
        (flip_a_bit, "object_key", "failed authentication"),
        (cut_in_half, "object_key", "failed authentication"),
        (delete_object, "object_key", "object missing"),
        (flip_a_bit, "thumbnail_key", "failed authentication"),
        (delete_object, "thumbnail_key", "object missing"),
    ],
    ids=[
        "flipped-bit",
        "truncated",
        "object-deleted",
        "thumbnail-flipped-bit",
        "thumbnail-deleted",
    ],
)
@pytest.mark.gen_test
async def test_scrub_reports_a_damaged_file_by_its_id(
    http_client, base_url, services, capsys, damage, which, expected
):
    from models import files as catalog

    file = await upload(http_client, base_url, png(), "picture.png")
    await upload(http_client, base_url, payload(4000, seed=26), "fine.bin")
    record = await services.database.run(catalog.find, file["id"])
    await damage(services, str(getattr(record, which)))

    code = await commands.run_scrub(services, argparse.Namespace())

    assert code == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{file['id']}: {expected}")
    assert lines[1] == "scrub: 2 files, 1 problems"


@pytest.mark.gen_test
async def test_scrub_reports_an_object_no_record_references(
    http_client, base_url, services, capsys
):
    await upload(http_client, base_url, payload(4000, seed=27), "fine.bin")
    orphan = await services.store.put_bytes(b"left behind by a crashed upload")

    code = await commands.run_scrub(services, argparse.Namespace())

    assert code == 1
    assert capsys.readouterr().out.splitlines() == [
        f"object {orphan.key}: no record references it",
        "scrub: 1 files, 1 problems",
    ]


@pytest.mark.gen_test
async def test_gc_with_no_grace_removes_orphans_and_keeps_referenced_objects(
    http_client, base_url, services, capsys
):
    file = await upload(http_client, base_url, png(), "kept.png")
    referenced = await object_keys(services)
    assert len(referenced) == 2
    await services.store.put_bytes(b"an orphan")
    arguments = parse_arguments(["gc", "--older-than", "0s"])[1]

    code = await commands.run_gc(services, arguments)

    assert code == 0
    assert capsys.readouterr().out.splitlines() == [
        "gc: removed 1 orphan objects; kept 0 younger than the grace period"
    ]
    assert await object_keys(services) == referenced
    for url in (file["url"], file["thumbnail_url"]):
        assert (await http_client.fetch(base_url + url)).code == 200


@pytest.mark.gen_test
async def test_gc_keeps_a_fresh_orphan_within_the_default_grace_period(
    services, capsys
):
    orphan = await services.store.put_bytes(b"an upload still being recorded")
    arguments = parse_arguments(["gc"])[1]

    code = await commands.run_gc(services, arguments)

    assert code == 0
    assert capsys.readouterr().out.splitlines() == [
        "gc: removed 0 orphan objects; kept 1 younger than the grace period"
    ]
    assert await object_keys(services) == {orphan.key}


@pytest.mark.gen_test
async def test_takedown_with_ban_retires_the_id_and_bans_the_bytes(
    http_client, base_url, services, capsys
):
    content = payload(2000, seed=28)
    file = await upload(http_client, base_url, content, "gone.bin")
    arguments = parse_arguments(["takedown", file["id"], "--ban"])[1]

    code = await commands.run_takedown(services, arguments)

    assert code == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{file['id']}: taken down and its content banned"
    ]
    assert await object_keys(services) == set()
    response = await http_client.fetch(base_url + file["url"], raise_error=False)
    assert response.code == 451
    body, headers = multipart([("file", "again.bin", content)])
    again = await http_client.fetch(
        base_url + "/api/upload",
        method="POST",
        body=body,
        headers=headers,
        raise_error=False,
    )
    assert (again.code, error_code(again.body)) == (451, "BLOCKED")


@pytest.mark.gen_test
async def test_stats_prints_totals_and_the_breakdown_by_type_and_size(
    http_client, base_url, services, capsys
):
    small = await upload(http_client, base_url, payload(1000, seed=29), "s.bin")
    large = await upload(http_client, base_url, payload(100_000, seed=30), "l.bin")
    picture = await upload(http_client, base_url, png(), "p.png")
    for _ in range(2):
        await http_client.fetch(base_url + small["url"])
    await services.views.flush()

    code = await commands.run_stats(services, argparse.Namespace())

    assert code == 0
    assert small["mimetype"] == large["mimetype"] != "image/png"
    assert picture["mimetype"] == "image/png"
    assert capsys.readouterr().out.splitlines() == [
        "files: 3",
        "views: 2",
        f"bytes: {1000 + 100_000 + picture['size']}",
        "by type:",
        f"  {small['mimetype']}: 2",
        "  image/png: 1",
        "by size:",
        "  < 64 KiB: 2",
        "  < 1 MiB: 1",
        "  < 10 MiB: 0",
        "  >= 10 MiB: 0",
    ]
