"""The master key that wraps data keys, the key file, and the deployment keys."""

from __future__ import annotations

import re
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.keys import (
    KEY_FILE_NAME,
    DeploymentKeys,
    MasterKey,
    UnwrapError,
    derive,
    load_or_create_master_key,
)

MASTER_SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
DATA_KEY = bytes(range(100, 132))
CONTEXT = b"0123456789abcdef0123456789abcdef"

keys = st.binary(min_size=32, max_size=32)
contexts = st.binary(max_size=64)


@settings(max_examples=50)
@given(key=keys, context=contexts)
def test_wrapped_key_unwraps_to_itself(key: bytes, context: bytes) -> None:
    master = MasterKey(MASTER_SECRET)
    assert master.unwrap(master.wrap(key, context), context) == key


def test_wrapped_key_unwraps_under_a_new_instance_of_the_same_master_key() -> None:
    wrapped = MasterKey(MASTER_SECRET).wrap(DATA_KEY, CONTEXT)
    assert MasterKey(MASTER_SECRET).unwrap(wrapped, CONTEXT) == DATA_KEY


def test_wrapping_twice_gives_different_blobs() -> None:
    master = MasterKey(MASTER_SECRET)
    assert master.wrap(DATA_KEY, CONTEXT) != master.wrap(DATA_KEY, CONTEXT)


def test_wrapped_blob_does_not_contain_the_key() -> None:
    wrapped = MasterKey(MASTER_SECRET).wrap(DATA_KEY, CONTEXT)
    assert DATA_KEY[:8] not in wrapped


@pytest.mark.parametrize(
    "context", [b"", CONTEXT[:-1], CONTEXT + b"0", CONTEXT.upper()]
)
def test_unwrap_with_another_context_fails(context: bytes) -> None:
    master = MasterKey(MASTER_SECRET)
    wrapped = master.wrap(DATA_KEY, CONTEXT)
    with pytest.raises(UnwrapError):
        master.unwrap(wrapped, context)


def test_unwrap_with_another_master_key_fails() -> None:
    wrapped = MasterKey(MASTER_SECRET).wrap(DATA_KEY, CONTEXT)
    with pytest.raises(UnwrapError, match="another master key"):
        MasterKey(OTHER_SECRET).unwrap(wrapped, CONTEXT)


@settings(max_examples=100)
@given(data=st.data())
def test_unwrap_of_a_blob_with_any_bit_flipped_fails(data: st.DataObject) -> None:
    master = MasterKey(MASTER_SECRET)
    wrapped = bytearray(master.wrap(DATA_KEY, CONTEXT))
    bit = data.draw(st.integers(0, len(wrapped) * 8 - 1), label="bit")
    wrapped[bit // 8] ^= 1 << (bit % 8)

    with pytest.raises(UnwrapError):
        master.unwrap(bytes(wrapped), CONTEXT)


@pytest.mark.parametrize("kept", [0, 1, 5, 17, 33, 64])
def test_unwrap_of_a_truncated_blob_fails(kept: int) -> None:
    master = MasterKey(MASTER_SECRET)
    wrapped = master.wrap(DATA_KEY, CONTEXT)
    assert kept < len(wrapped)

    with pytest.raises(UnwrapError):
        master.unwrap(wrapped[:kept], CONTEXT)


def test_key_id_is_stable_for_one_master_key_and_differs_for_another() -> None:
    assert MasterKey(MASTER_SECRET).key_id == MasterKey(MASTER_SECRET).key_id
    assert MasterKey(MASTER_SECRET).key_id != MasterKey(OTHER_SECRET).key_id


def test_derived_keys_differ_by_purpose() -> None:
    first = derive(MASTER_SECRET, "imgyx/v1/one")
    assert len(first) == 32
    assert first == derive(MASTER_SECRET, "imgyx/v1/one")
    assert first != derive(MASTER_SECRET, "imgyx/v1/two")
    assert first != derive(OTHER_SECRET, "imgyx/v1/one")


def test_master_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    created = load_or_create_master_key(None, tmp_path)
    path = tmp_path / KEY_FILE_NAME
    assert len(created) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == created.hex() + "\n"
    assert list(tmp_path.iterdir()) == [path]

    assert load_or_create_master_key(None, tmp_path) == created


def test_master_key_files_in_two_data_folders_differ(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = load_or_create_master_key(None, tmp_path / "one")
    assert first != load_or_create_master_key(None, tmp_path / "two")


def test_configured_master_key_wins_and_creates_no_file(tmp_path: Path) -> None:
    assert load_or_create_master_key(MASTER_SECRET, tmp_path) == MASTER_SECRET
    assert list(tmp_path.iterdir()) == []


def test_configured_master_key_wins_over_an_existing_key_file(tmp_path: Path) -> None:
    from_file = load_or_create_master_key(None, tmp_path)
    assert from_file != MASTER_SECRET
    assert load_or_create_master_key(MASTER_SECRET, tmp_path) == MASTER_SECRET


@pytest.mark.parametrize(
    "content",
    ["", "\n", "not hex at all", "ab" * 31, "ab" * 33, "zz" * 32, "ab" * 16],
)
def test_corrupt_master_key_file_raises_value_error(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / KEY_FILE_NAME
    path.write_text(content)

    with pytest.raises(ValueError, match="master key"):
        load_or_create_master_key(None, tmp_path)
    assert path.read_text() == content


def test_fingerprint_is_deterministic_for_one_deployment_secret() -> None:
    first = DeploymentKeys(MASTER_SECRET).fingerprinter()
    second = DeploymentKeys(MASTER_SECRET).fingerprinter()
    first.update(b"same bytes")
    second.update(b"same ")
    second.update(b"bytes")
    assert first.hexdigest() == second.hexdigest()


def test_fingerprint_is_keyed_by_the_deployment_secret() -> None:
    first = DeploymentKeys(MASTER_SECRET).fingerprinter()
    second = DeploymentKeys(OTHER_SECRET).fingerprinter()
    first.update(b"same bytes")
    second.update(b"same bytes")
    assert first.hexdigest() != second.hexdigest()


def test_each_fingerprinter_starts_fresh() -> None:
    keys = DeploymentKeys(MASTER_SECRET)
    used = keys.fingerprinter()
    used.update(b"earlier upload")
    used.update(b"later upload")

    fresh = keys.fingerprinter()
    fresh.update(b"later upload")
    assert fresh.hexdigest() != used.hexdigest()

    alone = keys.fingerprinter()
    alone.update(b"later upload")
    assert fresh.hexdigest() == alone.hexdigest()


def test_etag_is_deterministic_and_keyed() -> None:
    keys = DeploymentKeys(MASTER_SECRET)
    fingerprint = "a" * 64
    assert keys.etag(fingerprint) == DeploymentKeys(MASTER_SECRET).etag(fingerprint)
    assert keys.etag(fingerprint) != DeploymentKeys(OTHER_SECRET).etag(fingerprint)
    assert keys.etag(fingerprint) != keys.etag("b" * 64)


@settings(max_examples=50)
@given(fingerprint=st.text(alphabet="0123456789abcdef", min_size=8, max_size=64))
def test_etag_is_a_quoted_strong_tag_that_hides_the_fingerprint(
    fingerprint: str,
) -> None:
    etag = DeploymentKeys(MASTER_SECRET).etag(fingerprint)
    assert re.fullmatch(r'"[A-Za-z0-9_-]{20}"', etag)
    assert fingerprint not in etag


def test_client_hash_is_deterministic_and_keyed() -> None:
    keys = DeploymentKeys(MASTER_SECRET)
    client = "203.0.113.7"
    assert keys.client_hash(client) == DeploymentKeys(MASTER_SECRET).client_hash(client)
    assert keys.client_hash(client) != DeploymentKeys(OTHER_SECRET).client_hash(client)
    assert keys.client_hash(client) != keys.client_hash("203.0.113.8")


@settings(max_examples=100)
@given(client=st.text(min_size=1, max_size=64))
def test_client_hash_is_32_hex_digits(client: str) -> None:
    digest = DeploymentKeys(MASTER_SECRET).client_hash(client)
    assert len(digest) == 32
    assert set(digest) <= set("0123456789abcdef")


# Hex-looking clients, so a hash that merely re-encoded its input would show it.
@settings(max_examples=100)
@given(client=st.text(alphabet="0123456789abcdef", min_size=8, max_size=64))
def test_client_hash_never_contains_the_client(client: str) -> None:
    digest = DeploymentKeys(MASTER_SECRET).client_hash(client)
    assert client not in digest
    assert client.encode().hex()[:16] not in digest


def start_together(data_dir: Path, workers: int) -> list[str]:
    """Call load_or_create_master_key from `workers` threads released at once; each
    outcome is the key in hex or the error's name."""
    barrier = threading.Barrier(workers)
    outcomes = [""] * workers

    def start(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = load_or_create_master_key(None, data_dir).hex()
        except ValueError:
            outcomes[index] = "ValueError"

    threads = [
        threading.Thread(target=start, args=(index,)) for index in range(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_workers_starting_together_agree_on_one_master_key(tmp_path: Path) -> None:
    # The race window is short, so the start is repeated; a correct implementation
    # passes every round.
    disagreements = []
    for round_number in range(20):
        data_dir = tmp_path / str(round_number)
        data_dir.mkdir()
        outcomes = start_together(data_dir, workers=4)
        leftovers = sorted(path.name for path in data_dir.iterdir())
        if len(set(outcomes)) != 1 or leftovers != [KEY_FILE_NAME]:
            disagreements.append((outcomes, leftovers))

    assert disagreements == []
