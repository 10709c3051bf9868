"""Operator commands: `python server.py COMMAND`, on the same settings as the server.

Output is plain text on stdout, one line per finding; the exit code says whether
everything was fine (0), something was wrong (1), or the command could not run (2).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from handlers.base import Services
from models import File, Secret
from models import files as catalog
from models.records import delete_objects, open_record, sealed_object
from storage import IntegrityError, ObjectNotFound, StoreError
from storage.keys import (
    KEY_FILE_NAME,
    OLD_KEY_PATTERN,
    Keyring,
    MasterKey,
    UnwrapError,
    key_id_of,
    write_key_file,
)

Command = Callable[[Services, argparse.Namespace], Coroutine[Any, Any, int]]


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def parse_duration(raw: str) -> datetime.timedelta:
    """'90s', '30m', '6h', '2d' (a bare number is seconds)."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", raw)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {raw!r} (try 6h or 2d)")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return datetime.timedelta(seconds=int(match.group(1)) * unit)


def add_commands(subparsers: Any) -> None:
    takedown = subparsers.add_parser(
        "takedown", help="remove a file; its ID answers 451"
    )
    takedown.add_argument("file_id", metavar="ID")
    takedown.add_argument(
        "--ban", action="store_true", help="also refuse the same bytes"
    )
    takedown.add_argument("--reason", default="", help="a note kept with a ban")
    takedown.set_defaults(run=run_takedown)

    scrub = subparsers.add_parser(
        "scrub", help="authenticate every object; find orphans"
    )
    scrub.set_defaults(run=run_scrub)

    gc = subparsers.add_parser("gc", help="remove objects no record references")
    gc.add_argument(
        "--older-than",
        type=parse_duration,
        default=parse_duration("6h"),
        help="grace period, longer than any upload takes (default 6h)",
    )
    gc.set_defaults(run=run_gc)

    rotate = subparsers.add_parser(
        "rotate-key", help="re-wrap every data key under a new master key"
    )
    rotate.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="seconds to let running servers load the new key (default 5)",
    )
    rotate.set_defaults(run=run_rotate_key)

    stats = subparsers.add_parser(
        "stats", help="totals, and a breakdown by type and size"
    )
    stats.set_defaults(run=run_stats)


async def run_takedown(services: Services, arguments: argparse.Namespace) -> int:
    database = services.database
    record = await database.run(catalog.find, arguments.file_id)
    if record is None:
        say(f"{arguments.file_id}: no such file")
        return 1
    removed = await database.run(
        catalog.take_down, arguments.file_id, arguments.ban, arguments.reason
    )
    services.cache.removed(arguments.file_id)
    if removed is not None and not await delete_objects(services.store, removed):
        say(f"{arguments.file_id}: an object could not be deleted; gc collects it")
    say(
        f"{arguments.file_id}: taken down"
        + (" and its content banned" if arguments.ban else "")
    )
    return 0


async def run_scrub(services: Services, arguments: argparse.Namespace) -> int:
    records = await services.database.run(lambda: list(File.select()))
    referenced: set[str] = set()
    problems = 0
    for count, record in enumerate(records, 1):
        referenced.update(
            str(key) for key in (record.object_key, record.thumbnail_key) if key
        )
        problem = await _check_record(services, record)
        if problem:
            problems += 1
            say(f"{record.id}: {problem}")
        if count % 1000 == 0:
            say(f"... {count} of {len(records)} files checked")
    async for info in services.store.store.list():
        if info.key not in referenced:
            problems += 1
            say(f"object {info.key}: no record references it")
    say(f"scrub: {len(records)} files, {problems} problems")
    return 1 if problems else 0


async def _check_record(services: Services, record: File) -> str | None:
    """Read and authenticate every byte of the file and its thumbnail."""
    try:
        file = open_record(record, services.store)
        for sealed in (sealed_object(record), file.thumbnail):
            if sealed is not None and sealed.size > 0:
                async for _ in services.store.read(sealed, 0, sealed.size - 1):
                    pass
    except ObjectNotFound:
        return "object missing"
    except (IntegrityError, UnwrapError) as error:
        return f"failed authentication ({error})"
    except StoreError as error:
        return f"store error ({error})"
    return None


async def run_gc(services: Services, arguments: argparse.Namespace) -> int:
    keys = await services.database.run(_referenced_keys)
    cutoff = datetime.datetime.now(datetime.UTC) - arguments.older_than
    removed = kept = 0
    async for info in services.store.store.list():
        if info.key in keys:
            continue
        if info.modified > cutoff:
            kept += 1
            continue
        await services.store.delete(info.key)
        removed += 1
    say(
        f"gc: removed {removed} orphan objects; kept {kept} younger than the grace period"
    )
    return 0


def _referenced_keys() -> set[str]:
    keys: set[str] = set()
    rows: list[tuple[str, str | None]] = list(
        File.select(File.object_key, File.thumbnail_key).tuples()  # type: ignore[arg-type]
    )
    for main, thumbnail in rows:
        keys.add(str(main))
        if thumbnail:
            keys.add(str(thumbnail))
    return keys


BATCH = 1000


async def run_rotate_key(services: Services, arguments: argparse.Namespace) -> int:
    """Rotate the master key: objects stay as they are, only wrapped keys change.

    With key files, a new master.key is made and the old one kept as
    master-<id>.key until nothing uses it; a re-run continues a rotation that
    was interrupted. With IMGYX_MASTER_KEY, the new key is IMGYX_MASTER_KEY and the
    old ones are IMGYX_OLD_MASTER_KEYS.
    """
    keyring: Keyring = services.store.master
    settings = services.settings
    if settings.master_key is None and not _rotation_in_progress(
        settings.data_dir, keyring.current
    ):
        _begin_file_rotation(settings.data_dir, keyring.current)
        keyring.refresh()
        say(f"new master key {keyring.current.key_id.hex()}; waiting "
            f"{arguments.settle:.0f} s for running servers to load it")  # fmt: skip
        await asyncio.sleep(arguments.settle)
    rewrapped = await services.database.run(_rewrap_secret, keyring)
    after = ""
    while True:
        after, count, changed = await services.database.run(
            _rewrap_batch, keyring, after
        )
        rewrapped += changed
        if count < BATCH:
            break
        say(f"... re-wrapped {rewrapped} keys so far")
    in_use = await services.database.run(_key_ids_in_use)
    say(f"rotate-key: re-wrapped {rewrapped} keys under {keyring.current.key_id.hex()}")
    return _retire(settings, keyring, in_use)


def _rotation_in_progress(data_dir: Path, current: MasterKey) -> bool:
    """An older key file other than the current key means a rotation to finish.

    A file holding the current key is what an interrupted start leaves behind
    (the old key saved, the new one not yet written): drop it and start anew.
    """
    in_progress = False
    for path in data_dir.glob(OLD_KEY_PATTERN):
        if path.stem.removeprefix("master-") == current.key_id.hex():
            path.unlink()
        else:
            in_progress = True
    return in_progress


def _begin_file_rotation(data_dir: Path, current: MasterKey) -> None:
    old_secret = bytes.fromhex((data_dir / KEY_FILE_NAME).read_text().strip())
    write_key_file(data_dir / f"master-{current.key_id.hex()}.key", old_secret)
    write_key_file(data_dir / KEY_FILE_NAME, os.urandom(32))


def _rewrap(keyring: Keyring, wrapped: bytes, context: bytes) -> bytes | None:
    if key_id_of(wrapped) == keyring.current.key_id:
        return None
    return keyring.wrap(keyring.unwrap(wrapped, context), context)


def _rewrap_secret(keyring: Keyring) -> int:
    row = Secret.get(Secret.name == "deployment")
    new = _rewrap(keyring, bytes(row.wrapped), b"deployment")
    if new is None:
        return 0
    Secret.update(wrapped=new).where(
        (Secret.name == "deployment") & (Secret.wrapped == row.wrapped)
    ).execute()
    return 1


def _rewrap_batch(keyring: Keyring, after: str) -> tuple[str, int, int]:
    """Re-wrap one batch of records (by ID order); returns (last ID, rows, changed)."""
    rows = list(File.select().where(File.id > after).order_by(File.id).limit(BATCH))
    changed = 0
    for row in rows:
        updates: dict[Any, bytes] = {}
        main = _rewrap(keyring, bytes(row.wrapped_key), str(row.object_key).encode())
        if main is not None:
            updates[File.wrapped_key] = main
        if row.thumbnail_key and row.thumbnail_wrapped_key:
            context = str(row.thumbnail_key).encode()
            thumbnail = _rewrap(keyring, bytes(row.thumbnail_wrapped_key), context)
            if thumbnail is not None:
                updates[File.thumbnail_wrapped_key] = thumbnail
        if updates:
            # Only if nobody changed the row meanwhile: a re-run picks up the rest.
            File.update(updates).where(
                (File.id == row.id) & (File.wrapped_key == row.wrapped_key)
            ).execute()
            changed += len(updates)
    return (str(rows[-1].id) if rows else after), len(rows), changed


def _key_ids_in_use() -> set[bytes]:
    used = {key_id_of(bytes(Secret.get(Secret.name == "deployment").wrapped))}
    rows: list[tuple[bytes, bytes | None]] = list(
        File.select(File.wrapped_key, File.thumbnail_wrapped_key).tuples()  # type: ignore[arg-type]
    )
    for main, thumbnail in rows:
        used.add(key_id_of(bytes(main)))
        if thumbnail:
            used.add(key_id_of(bytes(thumbnail)))
    return used


def _retire(settings: Any, keyring: Keyring, in_use: set[bytes]) -> int:
    """Retire older keys nothing uses any more; exit 1 if some are still in use."""
    still_used = in_use - {keyring.current.key_id}
    if settings.master_key is None:
        for path in sorted(settings.data_dir.glob(OLD_KEY_PATTERN)):
            key_id = path.stem.removeprefix("master-")
            if bytes.fromhex(key_id) not in still_used:
                path.unlink()
                say(f"retired old master key {key_id}")
    else:
        for key_id in sorted(keyring.key_ids - {keyring.current.key_id} - still_used):
            say(f"old master key {key_id.hex()} is no longer used: remove it from "
                "IMGYX_OLD_MASTER_KEYS")  # fmt: skip
    if still_used:
        say(
            f"still in use: {', '.join(sorted(k.hex() for k in still_used))}; run again"
        )
        return 1
    return 0


SIZE_BANDS = [
    (64 * 1024, "< 64 KiB"),
    (1024 * 1024, "< 1 MiB"),
    (10 * 1024**2, "< 10 MiB"),
]


async def run_stats(services: Services, arguments: argparse.Namespace) -> int:
    totals = await services.database.run(catalog.totals)
    say(f"files: {totals.files}")
    say(f"views: {totals.views}")
    say(f"bytes: {totals.storage_bytes}")
    records = await services.database.run(lambda: list(File.select()))
    by_type: Counter[str] = Counter()
    by_size: Counter[str] = Counter()
    for record in records:
        by_type[open_record(record, services.store).mimetype] += 1
        by_size[_size_band(int(record.size))] += 1
    say("by type:")
    for mimetype, count in by_type.most_common():
        say(f"  {mimetype}: {count}")
    say("by size:")
    for _, band in [*SIZE_BANDS, (0, ">= 10 MiB")]:
        say(f"  {band}: {by_size.get(band, 0)}")
    return 0


def _size_band(size: int) -> str:
    for limit, band in SIZE_BANDS:
        if size < limit:
            return band
    return ">= 10 MiB"


Closer = Callable[[Services], Coroutine[Any, Any, None]]


def run(services: Services, arguments: argparse.Namespace, close: Closer) -> int:
    """Run the chosen command to its end, then release the services."""
    return asyncio.run(_with_services(services, arguments, close))


async def _with_services(
    services: Services, arguments: argparse.Namespace, close: Closer
) -> int:
    command: Command = arguments.run
    try:
        return await command(services, arguments)
    except StoreError as error:
        say(f"the object store failed: {error}")
        return 2
    except UnwrapError as error:
        say(f"a data key would not unwrap: {error}. Give every master key still in "
            "use (IMGYX_OLD_MASTER_KEYS, or its master-<id>.key file) and run again.")  # fmt: skip
        return 2
    finally:
        await close(services)
