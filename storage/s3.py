"""S3Store: objects in MinIO or any S3 service, through the minio client."""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from storage.base import (
    READ_CHUNK,
    Buffer,
    ObjectInfo,
    ObjectNotFound,
    Readable,
    Store,
    StoreError,
    Transform,
    check_object_key,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# minio buffers one part in memory per upload; 8 MiB parts keep 20 concurrent
# uploads well under 200 MB while staying large enough to be fast.
PART_SIZE = 8 * 1024 * 1024
MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchBucket"})


def http_client(connect_timeout: float, read_timeout: float) -> urllib3.PoolManager:
    """Short timeouts and two quick retries: a store that is down fails in seconds."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        retries=urllib3.Retry(
            total=2, backoff_factor=0.1, status_forcelist=(500, 502, 503, 504)
        ),
        maxsize=32,
    )


class S3Store(Store):
    """One bucket of an S3 service. Blocking client calls run in a bounded pool.

    Puts are multipart uploads streamed from the source in PART_SIZE parts (the
    client aborts the multipart upload if a part fails); reads are ranged GETs.
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        prefix: str = "",
        secure: bool = True,
        region: str | None = None,
        threads: int = 16,
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region or None,
            http_client=http_client(connect_timeout, read_timeout),
        )
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="s3-store")

    def _submit(
        self, function: Callable[..., T], *args: Any, **kwargs: Any
    ) -> asyncio.Future[T]:
        """Start `function` in the pool now (not on the loop's next turn)."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._pool, lambda: function(*args, **kwargs))

    async def _result(self, work: asyncio.Future[T]) -> T:
        try:
            return await work
        except S3Error as error:
            if error.code in MISSING_CODES:
                raise ObjectNotFound("object not found") from None
            raise StoreError(f"s3: {error.code}") from error
        except (
            MinioException,
            urllib3.exceptions.HTTPError,
            OSError,
            ValueError,
        ) as error:
            raise StoreError(f"s3: {type(error).__name__}: {error}") from error

    async def _run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._result(self._submit(function, *args, **kwargs))

    def _name(self, key: str) -> str:
        return self.prefix + check_object_key(key)

    async def prepare(self) -> None:
        """Create the bucket when it is missing (idempotent across processes)."""
        if await self._run(self._client.bucket_exists, self.bucket):
            return
        try:
            await self._run(self._client.make_bucket, self.bucket)
        except StoreError:
            if not await self._run(self._client.bucket_exists, self.bucket):
                raise

    async def put(self, key: str, source: Readable, length: int) -> None:
        await self._run(
            self._client.put_object,
            self.bucket,
            self._name(key),
            source,
            length,
            part_size=PART_SIZE,
            num_parallel_uploads=1,
        )

    async def get(
        self,
        key: str,
        offset: int,
        length: int,
        chunk_size: int = READ_CHUNK,
        transform: Transform | None = None,
    ) -> AsyncGenerator[Buffer, None]:
        if length <= 0:
            return
        response = await self._run(self._open_range, self._name(key), offset, length)
        if response is None:
            return
        # The next chunk is read ahead, submitted before this one is yielded: the
        # caller sends a chunk while the next is read and transformed.
        ahead: asyncio.Future[Buffer | None] | None = self._submit(
            _read_chunk, response, chunk_size, transform
        )
        try:
            while ahead is not None:
                chunk = await self._result(ahead)
                ahead = None
                if chunk is None:
                    return
                ahead = self._submit(_read_chunk, response, chunk_size, transform)
                yield chunk
        finally:
            if ahead is not None:
                # Closed early: the read in flight still uses the response.
                await asyncio.wait([ahead])
                if not ahead.cancelled():
                    ahead.exception()
            response.close()
            response.release_conn()

    def _open_range(self, name: str, offset: int, length: int) -> Any:
        try:
            return self._client.get_object(
                self.bucket, name, offset=offset, length=length
            )
        except S3Error as error:
            if error.code == "InvalidRange":
                return None  # the object ends before `offset`: nothing to yield
            raise

    async def delete(self, key: str) -> None:
        await self._run(self._client.remove_object, self.bucket, self._name(key))

    async def stat(self, key: str) -> ObjectInfo:
        found = await self._run(self._client.stat_object, self.bucket, self._name(key))
        return ObjectInfo(key, int(found.size or 0), _utc(found.last_modified))

    async def list(self) -> AsyncIterator[ObjectInfo]:
        listing = iter(
            self._client.list_objects(
                self.bucket, prefix=self.prefix or None, recursive=True
            )
        )
        while True:
            found = await self._run(next, listing, None)
            if found is None:
                return
            if found.object_name is None or found.is_dir:
                continue
            key = found.object_name[len(self.prefix) :]
            yield ObjectInfo(key, int(found.size or 0), _utc(found.last_modified))

    async def close(self) -> None:
        self._pool.shutdown(wait=True)


def _utc(moment: datetime.datetime | None) -> datetime.datetime:
    if moment is None:
        return datetime.datetime.now(datetime.UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def _read_chunk(response: Any, size: int, transform: Transform | None) -> Buffer | None:
    """The next chunk of a response body (transformed, if asked), None at its end."""
    chunk: bytes = response.read(size)
    if not chunk:
        return None
    return transform(chunk) if transform is not None else chunk
