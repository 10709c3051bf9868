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


# The backends by the value of IMGYX_STORAGE.
BACKENDS: dict[str, Callable[[Settings], Store]] = {"local": _local}


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
