"""The encrypted object store: the Store interface, its backends, and the sealed format."""

from __future__ import annotations

from collections.abc import Callable

from config import Settings
from storage.base import ObjectInfo, ObjectNotFound, Store, StoreError
from storage.crypto import IntegrityError
from storage.local import LocalStore
from storage.sealed import SealedObject, SealedStore


def _local(settings: Settings) -> Store:
    return LocalStore(settings.data_dir / "objects")


def _s3(settings: Settings) -> Store:
    # Imported here: the S3 client and its HTTP stack cost each worker ~8 MB, for
    # nothing when the objects are local.
    from storage.s3 import S3Store

    return S3Store(
        settings.s3_endpoint,
        settings.s3_access_key,
        settings.s3_secret_key,
        settings.s3_bucket,
        prefix=settings.s3_prefix,
        secure=settings.s3_secure,
        region=settings.s3_region,
    )


# The backends by the value of IMGYX_STORAGE.
BACKENDS: dict[str, Callable[[Settings], Store]] = {"local": _local, "s3": _s3}


def make_store(settings: Settings) -> Store:
    return BACKENDS[settings.storage](settings)


__all__ = [
    "BACKENDS",
    "IntegrityError",
    "LocalStore",
    "ObjectInfo",
    "ObjectNotFound",
    "SealedObject",
    "SealedStore",
    "Store",
    "StoreError",
    "make_store",
]
