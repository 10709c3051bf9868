"""`python server.py rotate-key`: a new master key re-wraps every data key.

Everything runs next to real `python server.py` processes on a temporary data
folder (local store, SQLite): key-file mode, an interrupted rotation and its re-run,
an upload that lands under the old key while the rotation runs, and env mode.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import commands
from config import Settings
from models import open_database
from server import main as imgyx_main
from storage.keys import Keyring, MasterKey, file_keyring_loader, write_key_file
from tests.conftest import payload
from tests.support import ROOT, Server
from tests.test_commands import png

SETTLE = "3"


@dataclasses.dataclass(frozen=True)
class Upload:
    id: str
    url: str
    content: bytes
    thumbnail_url: str | None


def run_command(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "server.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "IMGYX_DATA_DIR": str(data_dir), **env},
        timeout=30,
    )


def upload_files(server: Server, seed: int) -> list[Upload]:
    """Two plain files and a PNG, whose thumbnail is a second object."""
    contents = [
        (payload(5000, seed=seed), "small.bin"),
        (payload(90_000, seed=seed + 1), "large.bin"),
        (png(48 + seed), "picture.png"),
    ]
    uploads = []
    for content, name in contents:
        answer = server.upload(content, name)
        uploads.append(
            Upload(answer["id"], answer["url"], content, answer.get("thumbnail_url"))
        )
    assert uploads[-1].thumbnail_url is not None
    return uploads


def served(server: Server, uploads: list[Upload]) -> dict[str, tuple[int, bytes]]:
    """(status, body) of every file, by ID: compared whole, so every failure shows."""
    answers = {}
    for upload in uploads:
        status, body = server.request(upload.url)
        answers[upload.id] = (status, body)
    return answers


def expected(uploads: list[Upload]) -> dict[str, tuple[int, bytes]]:
    return {upload.id: (200, upload.content) for upload in uploads}


def thumbnails(server: Server, uploads: list[Upload]) -> dict[str, tuple[int, str]]:
    """(status, ETag) of every thumbnail, by ID."""
    answers = {}
    for upload in uploads:
        if upload.thumbnail_url:
            status, headers, _ = server.fetch(upload.thumbnail_url)
            answers[upload.id] = (status, headers["ETag"])
    return answers


def etags(server: Server, uploads: list[Upload]) -> dict[str, str]:
    answers = {}
    for upload in uploads:
        status, headers, _ = server.fetch(upload.url, method="HEAD")
        assert status == 200
        answers[upload.id] = headers["ETag"]
    return answers


def object_files(data_dir: Path) -> dict[str, tuple[int, str]]:
    """(mtime in ns, sha256) of every object file, by path under objects/."""
    root = data_dir / "objects"
    return {
        str(path.relative_to(root)): (
            path.stat().st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in root.rglob("*")
        if path.is_file()
    }


def query(data_dir: Path, sql: str, *values: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(data_dir / "imgyx.db")) as database:
        return database.execute(sql, values).fetchall()


def wrapping_key_ids(data_dir: Path) -> dict[str, set[str]]:
    """Which master keys (by hex ID) wrap the data keys and the deployment secret."""
    files = query(data_dir, "SELECT wrapped_key FROM files")
    thumbnails = query(
        data_dir,
        "SELECT thumbnail_wrapped_key FROM files WHERE thumbnail_wrapped_key IS NOT NULL",
    )
    secrets = query(data_dir, "SELECT wrapped FROM secrets")
    return {
        "files": {bytes(row[0])[1:5].hex() for row in files},
        "thumbnails": {bytes(row[0])[1:5].hex() for row in thumbnails},
        "secrets": {bytes(row[0])[1:5].hex() for row in secrets},
    }


def wrapped_key_of(data_dir: Path, file_id: str) -> str:
    """The hex ID of the master key that wraps one file's data key."""
    rows = query(data_dir, "SELECT wrapped_key FROM files WHERE id = ?", file_id)
    return bytes(rows[0][0])[1:5].hex()


def key_file_id(path: Path) -> str:
    return MasterKey(bytes.fromhex(path.read_text().strip())).key_id.hex()


def old_key_files(data_dir: Path) -> list[str]:
    return sorted(path.name for path in data_dir.glob("master-*.key"))


def encoded(key: bytes) -> str:
    return base64.b64encode(key).decode()


# -- key-file mode: one rotation next to a running server ---------------------------


@dataclasses.dataclass
class KeyFileRotation:
    data_dir: Path
    server: Server
    uploads: list[Upload]
    old_id: str
    new_id: str
    old_key_file: str
    etags: dict[str, str]
    thumbnails: dict[str, tuple[int, str]]
    objects: dict[str, tuple[int, str]]
    result: subprocess.CompletedProcess
    later: Upload


@pytest.fixture(scope="module")
def rotation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyFileRotation]:
    """Upload, note everything observable, then rotate with the server still up."""
    data_dir = tmp_path_factory.mktemp("rotate") / "data"
    server = Server(data_dir)
    try:
        uploads = upload_files(server, seed=40)
        old_key_file = (data_dir / "master.key").read_text()
        old_id = key_file_id(data_dir / "master.key")
        before = (etags(server, uploads), thumbnails(server, uploads))
        objects = object_files(data_dir)

        result = run_command(data_dir, "rotate-key", "--settle", SETTLE)
        # Before this server reads anything (a read of an unknown key ID would
        # reload the keys): only its periodic refresh can have loaded the new key.
        content = payload(3000, seed=49)
        answer = server.upload(content, "later.bin")

        yield KeyFileRotation(
            data_dir=data_dir,
            server=server,
            uploads=uploads,
            old_id=old_id,
            new_id=key_file_id(data_dir / "master.key"),
            old_key_file=old_key_file,
            etags=before[0],
            thumbnails=before[1],
            objects=objects,
            result=result,
            later=Upload(answer["id"], answer["url"], content, None),
        )
    finally:
        server.stop()


def test_rotate_key_exits_0_naming_the_new_key_and_retiring_the_old(rotation):
    # Three data keys, one thumbnail key and the deployment secret.
    assert (rotation.result.returncode, rotation.result.stdout.splitlines()) == (
        0,
        [
            f"new master key {rotation.new_id}; waiting {SETTLE} s for running "
            "servers to load it",
            f"rotate-key: re-wrapped 5 keys under {rotation.new_id}",
            f"retired old master key {rotation.old_id}",
        ],
    )


def test_rotate_key_replaces_the_key_file_and_leaves_no_old_one(rotation):
    assert (rotation.data_dir / "master.key").read_text() != rotation.old_key_file
    assert rotation.new_id != rotation.old_id
    assert old_key_files(rotation.data_dir) == []
    assert (rotation.data_dir / "master.key").stat().st_mode & 0o777 == 0o600


def test_every_wrapped_key_carries_the_new_key_id_after_rotation(rotation):
    assert wrapping_key_ids(rotation.data_dir) == {
        "files": {rotation.new_id},
        "thumbnails": {rotation.new_id},
        "secrets": {rotation.new_id},
    }


def test_objects_are_not_rewritten_by_rotation(rotation):
    after = object_files(rotation.data_dir)

    assert {path: after.get(path) for path in rotation.objects} == rotation.objects


def test_running_server_serves_every_file_byte_exact_after_rotation(rotation):
    assert served(rotation.server, rotation.uploads) == expected(rotation.uploads)


def test_running_server_serves_thumbnails_with_unchanged_etags_after_rotation(
    rotation,
):
    assert thumbnails(rotation.server, rotation.uploads) == rotation.thumbnails


def test_etags_are_unchanged_by_rotation(rotation):
    assert etags(rotation.server, rotation.uploads) == rotation.etags


def test_old_etag_still_answers_304_after_rotation(rotation):
    upload = rotation.uploads[0]

    status, _, body = rotation.server.fetch(
        upload.url, headers={"If-None-Match": rotation.etags[upload.id]}
    )

    assert (status, body) == (304, b"")


def test_reupload_after_rotation_is_deduplicated_to_the_same_id(rotation):
    upload = rotation.uploads[2]

    answer = rotation.server.upload(upload.content, "again.png")

    assert (answer["id"], answer["duplicate"]) == (upload.id, True)


def test_running_server_wraps_uploads_after_rotation_under_the_new_key(rotation):
    assert wrapped_key_of(rotation.data_dir, rotation.later.id) == rotation.new_id
    assert served(rotation.server, [rotation.later]) == expected([rotation.later])


def test_restarted_server_serves_every_file_and_thumbnail_after_rotation(rotation):
    restarted = Server(rotation.data_dir)
    try:
        files = served(restarted, rotation.uploads)
        thumbnail_answers = thumbnails(restarted, rotation.uploads)
        file_etags = etags(restarted, rotation.uploads)
    finally:
        restarted.stop()

    assert files == expected(rotation.uploads)
    assert thumbnail_answers == rotation.thumbnails
    assert file_etags == rotation.etags


def test_scrub_after_rotation_finds_no_problems(rotation):
    result = run_command(rotation.data_dir, "scrub")

    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[-1].endswith(" 0 problems")


# -- an interrupted rotation, and its re-run -----------------------------------------


@dataclasses.dataclass
class Interrupted:
    data_dir: Path
    server: Server
    uploads: list[Upload]
    old_id: str
    new_id: str
    rewrapped: int


def interrupt_rotation_after_one_record(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> int:
    """What a rotation killed after its first record leaves: a new master.key, the
    old one as master-<id>.key, one record re-wrapped. Returns how many keys were."""
    database = open_database(dataclasses.replace(Settings(), data_dir=data_dir))
    try:
        keyring = Keyring(file_keyring_loader(data_dir))
        commands._begin_file_rotation(data_dir, keyring.current)
        keyring.refresh()
        monkeypatch.setattr(commands, "BATCH", 1)
        with database.connection_context():
            _, rows, changed = commands._rewrap_batch(keyring, "")
    finally:
        database.close()
    assert rows == 1
    return changed


@pytest.fixture
def interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Interrupted]:
    data_dir = tmp_path / "data"
    server = Server(data_dir)
    try:
        uploads = upload_files(server, seed=50)
        old_id = key_file_id(data_dir / "master.key")
        rewrapped = interrupt_rotation_after_one_record(data_dir, monkeypatch)
        yield Interrupted(
            data_dir,
            server,
            uploads,
            old_id,
            key_file_id(data_dir / "master.key"),
            rewrapped,
        )
    finally:
        server.stop()


def test_interrupted_rotation_keeps_every_file_readable_under_both_keys(interrupted):
    ids = wrapping_key_ids(interrupted.data_dir)
    files = served(interrupted.server, interrupted.uploads)
    thumbnail_statuses = {
        file_id: status
        for file_id, (status, _) in thumbnails(
            interrupted.server, interrupted.uploads
        ).items()
    }
    fresh = Server(interrupted.data_dir)
    try:
        fresh_files = served(fresh, interrupted.uploads)
    finally:
        fresh.stop()

    assert ids["files"] == {interrupted.old_id, interrupted.new_id}
    assert ids["secrets"] == {interrupted.old_id}
    assert old_key_files(interrupted.data_dir) == [f"master-{interrupted.old_id}.key"]
    assert files == expected(interrupted.uploads)
    assert thumbnail_statuses == {interrupted.uploads[-1].id: 200}
    assert fresh_files == expected(interrupted.uploads)


def test_rerun_after_interruption_finishes_with_the_same_new_key(interrupted):
    result = run_command(interrupted.data_dir, "rotate-key", "--settle", SETTLE)

    assert (result.returncode, result.stdout.splitlines()) == (
        0,
        [
            f"rotate-key: re-wrapped {5 - interrupted.rewrapped} keys under "
            f"{interrupted.new_id}",
            f"retired old master key {interrupted.old_id}",
        ],
    )
    assert key_file_id(interrupted.data_dir / "master.key") == interrupted.new_id
    assert old_key_files(interrupted.data_dir) == []
    assert wrapping_key_ids(interrupted.data_dir) == {
        "files": {interrupted.new_id},
        "thumbnails": {interrupted.new_id},
        "secrets": {interrupted.new_id},
    }
    assert served(interrupted.server, interrupted.uploads) == expected(
        interrupted.uploads
    )


def test_rerun_after_interruption_before_the_new_key_was_written_rotates(
    tmp_path: Path,
):
    # _begin_file_rotation writes master-<old>.key, then the new master.key; killed
    # in between, the data folder holds the current key under both names.
    data_dir = tmp_path / "data"
    assert run_command(data_dir, "stats").returncode == 0
    old_key_file = (data_dir / "master.key").read_text()
    old_id = key_file_id(data_dir / "master.key")
    write_key_file(
        data_dir / f"master-{old_id}.key", bytes.fromhex(old_key_file.strip())
    )

    result = run_command(data_dir, "rotate-key", "--settle", "0")

    assert result.returncode == 0, result.stdout
    new_id = key_file_id(data_dir / "master.key")
    assert (data_dir / "master.key").read_text() != old_key_file, result.stdout
    assert wrapping_key_ids(data_dir)["secrets"] == {new_id}
    assert old_key_files(data_dir) == []


# -- an upload under the old key while the rotation runs -----------------------------


def rotate_in_process(*args: str) -> int:
    """`server.py rotate-key` in this process; main() takes over the root logger."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        return imgyx_main(["rotate-key", *args])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_upload_under_the_old_key_during_rotation_keeps_it_until_a_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    data_dir = tmp_path / "data"
    with contextlib.ExitStack() as servers:
        server = Server(data_dir)
        servers.callback(server.stop)
        old_key = bytes.fromhex((data_dir / "master.key").read_text().strip())
        old_id = MasterKey(old_key).key_id.hex()
        # A server that has not loaded the new key yet: it wraps under the old one.
        stale = Server(data_dir, IMGYX_MASTER_KEY=encoded(old_key))
        servers.callback(stale.stop)
        uploads = upload_files(server, seed=60)
        straggler_content = payload(4000, seed=69)
        stragglers: list[dict[str, Any]] = []
        count_key_ids = commands._key_ids_in_use

        def upload_then_count() -> set[bytes]:
            # Lands after the last batch was re-wrapped, before the keys are counted.
            stragglers.append(stale.upload(straggler_content, "straggler.bin"))
            return count_key_ids()

        monkeypatch.setattr(commands, "_key_ids_in_use", upload_then_count)
        monkeypatch.setenv("IMGYX_DATA_DIR", str(data_dir))
        monkeypatch.delenv("IMGYX_MASTER_KEY", raising=False)
        monkeypatch.delenv("IMGYX_OLD_MASTER_KEYS", raising=False)

        code = rotate_in_process("--settle", "0")

        lines = capsys.readouterr().out.splitlines()
        new_id = key_file_id(data_dir / "master.key")
        (straggler,) = stragglers
        assert (code, lines[-1]) == (1, f"still in use: {old_id}; run again")
        assert not any(line.startswith("retired") for line in lines)
        assert old_key_files(data_dir) == [f"master-{old_id}.key"]
        assert wrapped_key_of(data_dir, straggler["id"]) == old_id
        everything = [
            *uploads,
            Upload(straggler["id"], straggler["url"], straggler_content, None),
        ]
        assert served(server, everything) == expected(everything)

        rerun = run_command(data_dir, "rotate-key", "--settle", "0")

        assert (rerun.returncode, rerun.stdout.splitlines()) == (
            0,
            [
                f"rotate-key: re-wrapped 1 keys under {new_id}",
                f"retired old master key {old_id}",
            ],
        )
        assert wrapping_key_ids(data_dir)["files"] == {new_id}
        assert old_key_files(data_dir) == []
        restarted = Server(data_dir)
        try:
            assert served(restarted, everything) == expected(everything)
        finally:
            restarted.stop()


# -- env mode: IMGYX_MASTER_KEY and IMGYX_OLD_MASTER_KEYS ----------------------------


@dataclasses.dataclass
class EnvRotation:
    data_dir: Path
    uploads: list[Upload]
    first: str
    second: str
    first_id: str
    second_id: str
    before_rotation: dict[str, tuple[int, bytes]]
    result: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def env_rotation(tmp_path_factory: pytest.TempPathFactory) -> EnvRotation:
    """Upload under K1; restart on K2 with K1 as old; rotate on the same settings."""
    data_dir = tmp_path_factory.mktemp("env") / "data"
    first_key, second_key = os.urandom(32), os.urandom(32)
    first, second = encoded(first_key), encoded(second_key)
    server = Server(data_dir, IMGYX_MASTER_KEY=first)
    try:
        uploads = upload_files(server, seed=70)
    finally:
        server.stop()
    both = {"IMGYX_MASTER_KEY": second, "IMGYX_OLD_MASTER_KEYS": first}
    server = Server(data_dir, **both)
    try:
        before_rotation = served(server, uploads)
        result = run_command(data_dir, "rotate-key", "--settle", "0", **both)
    finally:
        server.stop()
    return EnvRotation(
        data_dir,
        uploads,
        first,
        second,
        MasterKey(first_key).key_id.hex(),
        MasterKey(second_key).key_id.hex(),
        before_rotation,
        result,
    )


def test_env_mode_serves_files_with_the_old_key_listed_as_old(env_rotation):
    assert env_rotation.before_rotation == expected(env_rotation.uploads)


def test_env_mode_rotation_says_the_old_key_can_be_removed(env_rotation):
    assert (
        env_rotation.result.returncode,
        env_rotation.result.stdout.splitlines(),
    ) == (
        0,
        [
            f"rotate-key: re-wrapped 5 keys under {env_rotation.second_id}",
            f"old master key {env_rotation.first_id} is no longer used: remove it "
            "from IMGYX_OLD_MASTER_KEYS",
        ],
    )
    assert wrapping_key_ids(env_rotation.data_dir) == {
        "files": {env_rotation.second_id},
        "thumbnails": {env_rotation.second_id},
        "secrets": {env_rotation.second_id},
    }
    assert not (env_rotation.data_dir / "master.key").exists()


def test_env_mode_serves_every_file_with_only_the_new_key_after_rotation(
    env_rotation,
):
    server = Server(env_rotation.data_dir, IMGYX_MASTER_KEY=env_rotation.second)
    try:
        files = served(server, env_rotation.uploads)
        thumbnail_statuses = {
            file_id: status
            for file_id, (status, _) in thumbnails(server, env_rotation.uploads).items()
        }
    finally:
        server.stop()

    assert files == expected(env_rotation.uploads)
    assert thumbnail_statuses == {env_rotation.uploads[-1].id: 200}


def test_env_mode_server_with_only_the_old_key_refuses_to_start(env_rotation):
    result = subprocess.run(
        [sys.executable, "server.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "IMGYX_DATA_DIR": str(env_rotation.data_dir),
            "IMGYX_PORT": "0",
            "IMGYX_MASTER_KEY": env_rotation.first,
        },
        timeout=30,
    )

    assert result.returncode == 2
    assert result.stderr.startswith("imgyx: IMGYX_MASTER_KEY:")


def test_env_mode_rerun_without_the_old_key_exits_2_naming_it(tmp_path: Path):
    # An env-mode rotation interrupted after the deployment secret was re-wrapped,
    # re-run with IMGYX_OLD_MASTER_KEYS forgotten: the server still starts (the
    # secret opens), but the records need the old key.
    data_dir = tmp_path / "data"
    first_key, second_key = os.urandom(32), os.urandom(32)
    server = Server(data_dir, IMGYX_MASTER_KEY=encoded(first_key))
    try:
        server.upload(payload(3000, seed=79), "old.bin")
    finally:
        server.stop()
    database = open_database(dataclasses.replace(Settings(), data_dir=data_dir))
    try:
        with database.connection_context():
            commands._rewrap_secret(Keyring(lambda: (second_key, [first_key])))
    finally:
        database.close()
    first_id = MasterKey(first_key).key_id.hex()

    result = run_command(
        data_dir, "rotate-key", "--settle", "0", IMGYX_MASTER_KEY=encoded(second_key)
    )

    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2
    assert first_id in result.stdout
