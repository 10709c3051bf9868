"""The master key, the data keys it wraps, and the deployment keys derived for
fingerprints, ETags and client hashes.

Two secrets, two jobs. The *master key* (IMGYX_MASTER_KEY or the key file) only wraps:
data keys, and the deployment secret. The *deployment secret* is random, made once,
stored wrapped in the database, and everything keyed but not wrapped (fingerprints,
ETags, client hashes) is derived from it. Rotating the master key therefore re-wraps
small blobs and leaves objects, fingerprints and ETags untouched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

logger = logging.getLogger(__name__)

KEY_FILE_NAME = "master.key"
OLD_KEY_PATTERN = "master-*.key"
WRAP_FORMAT = 1
KEY_ID_SIZE = 4
NONCE_SIZE = 12


class UnwrapError(Exception):
    """A wrapped key did not unwrap: wrong master key, or a tampered record."""


def derive(secret: bytes, purpose: str) -> bytes:
    """A 32-byte key for one purpose, derived from `secret` with HKDF-SHA256."""
    kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode())
    return kdf.derive(secret)


def load_or_create_master_key(configured: bytes | None, data_dir: Path) -> bytes:
    """The configured master key, else the key file in the data folder (made if absent).

    The file is created with O_EXCL and mode 0600, so two processes starting at once
    agree on one key and nobody else can read it.
    """
    if configured is not None:
        return configured
    path = data_dir / KEY_FILE_NAME
    if path.exists():
        return _read_key_file(path)
    # Written whole under a private name, then linked into place: link() fails if
    # another process got there first, and nobody ever reads a half-written key.
    key = os.urandom(32)
    temp = data_dir / f".{KEY_FILE_NAME}.{os.getpid()}.{os.urandom(4).hex()}"
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(key.hex().encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temp, path)
    except FileExistsError:
        return _read_key_file(path)
    finally:
        temp.unlink(missing_ok=True)
    logger.info("created a new master key file in the data folder")
    return key


def _read_key_file(path: Path) -> bytes:
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ValueError(f"{path} does not hold a 64-hex-digit master key")
    return key


class MasterKey:
    """Wraps and unwraps 32-byte keys, each bound to a context (e.g. its object key)."""

    def __init__(self, secret: bytes) -> None:
        self._aead = AESGCM(derive(secret, "imgyx/v1/wrap"))
        self.key_id = derive(secret, "imgyx/v1/key-id")[:KEY_ID_SIZE]

    def wrap(self, key: bytes, context: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._aead.encrypt(nonce, key, self._aad(context))
        return bytes([WRAP_FORMAT]) + self.key_id + nonce + sealed

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        head = 1 + KEY_ID_SIZE
        if len(wrapped) < head + NONCE_SIZE + 16 or wrapped[0] != WRAP_FORMAT:
            raise UnwrapError("not a wrapped key")
        if wrapped[1:head] != self.key_id:
            raise UnwrapError("wrapped under another master key")
        nonce = wrapped[head : head + NONCE_SIZE]
        try:
            return self._aead.decrypt(
                nonce, wrapped[head + NONCE_SIZE :], self._aad(context)
            )
        except InvalidTag:
            raise UnwrapError("wrapped key failed authentication") from None

    @staticmethod
    def _aad(context: bytes) -> bytes:
        return b"imgyx wrapped key\x00" + context


def key_id_of(wrapped: bytes) -> bytes:
    """Which master key wrapped this blob."""
    return bytes(wrapped[1 : 1 + KEY_ID_SIZE])


class Keyring:
    """The current master key (wraps everything new) and older ones (unwrap only).

    Key rotation adds a new current key and re-wraps every blob; until it is done,
    blobs under either key open. `refresh()` re-reads the keys from their source,
    so a long-running server picks up a rotation that another process started.
    """

    def __init__(self, load: Callable[[], tuple[bytes, list[bytes]]]) -> None:
        self._load = load
        self.refresh()

    def refresh(self) -> None:
        current, older = self._load()
        self.current = MasterKey(current)
        self._keys = {self.current.key_id: self.current}
        for secret in older:
            key = MasterKey(secret)
            self._keys.setdefault(key.key_id, key)

    @property
    def key_ids(self) -> set[bytes]:
        return set(self._keys)

    def wrap(self, key: bytes, context: bytes) -> bytes:
        return self.current.wrap(key, context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        master = self._keys.get(key_id_of(wrapped))
        if master is None:
            self.refresh()  # perhaps a rotation began since we loaded the keys
            master = self._keys.get(key_id_of(wrapped))
        if master is None:
            missing = key_id_of(wrapped).hex()
            raise UnwrapError(f"wrapped under master key {missing}, which is not given")
        return master.unwrap(wrapped, context)


def file_keyring_loader(data_dir: Path) -> Callable[[], tuple[bytes, list[bytes]]]:
    """Keys from the data folder: master.key is current, master-*.key are older."""

    def load() -> tuple[bytes, list[bytes]]:
        current = load_or_create_master_key(None, data_dir)
        older = [
            _read_key_file(path) for path in sorted(data_dir.glob(OLD_KEY_PATTERN))
        ]
        return current, older

    return load


def write_key_file(path: Path, key: bytes) -> None:
    """Write a key file whole, mode 0600, and move it into place atomically."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key.hex().encode() + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    temp.replace(path)


class DeploymentKeys:
    """Keys derived from the deployment secret, stable across master-key rotation."""

    def __init__(self, deployment_secret: bytes) -> None:
        self._fingerprint = derive(deployment_secret, "imgyx/v1/fingerprint")
        self._client = derive(deployment_secret, "imgyx/v1/client")
        self._etag = derive(deployment_secret, "imgyx/v1/etag")

    def fingerprinter(self) -> hmac.HMAC:
        """A fresh keyed hash to feed an upload's bytes into."""
        return hmac.new(self._fingerprint, digestmod=hashlib.sha256)

    def etag(self, fingerprint: str) -> str:
        """A strong ETag for content: stable for the same bytes, revealing nothing."""
        digest = hmac.new(self._etag, fingerprint.encode(), hashlib.sha256).digest()
        return '"' + base64.urlsafe_b64encode(digest[:15]).decode() + '"'

    def client_hash(self, client: str) -> str:
        """A keyed hash of a client address; the address itself is never kept."""
        return hmac.new(self._client, client.encode(), hashlib.sha256).hexdigest()[:32]
