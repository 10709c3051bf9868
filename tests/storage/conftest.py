"""Store backends for the storage tests: the local folder and a real S3 server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.base import Store
from storage.local import LocalStore
from storage.s3 import S3Store
from tests.services import S3Server


def s3_store(server: S3Server, bucket: str) -> S3Store:
    return S3Store(
        server.endpoint,
        server.access_key,
        server.secret_key,
        bucket,
        prefix=f"contract-{uuid.uuid4().hex[:16]}/",
        secure=False,
    )


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Every backend, ready: the Store contract runs against each of them."""
    backend: Store
    if request.param == "local":
        backend = LocalStore(tmp_path / "objects")
    else:
        server = request.getfixturevalue("s3_server")
        backend = s3_store(server, request.getfixturevalue("s3_bucket"))
    asyncio.run(backend.prepare())
    yield backend
    asyncio.run(backend.close())


@pytest.fixture
def local_store(tmp_path: Path) -> Iterator[LocalStore]:
    backend = LocalStore(tmp_path / "objects")
    yield backend
    asyncio.run(backend.close())
