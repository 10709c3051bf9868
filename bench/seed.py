"""Seed an imgyx database with many file records that all share one stored object.

    IMGYX_DATA_DIR=/tmp/d .venv/bin/python bench/seed.py --total 1000000 \\
        --ids-out /tmp/ids.txt --sample 10000

It reads the same IMGYX_* settings as server.py (data folder, database URL, master
key), so it seeds exactly the database a server with that environment uses; it may
run while that server runs. The records are made with the project's own code: the
source record is opened with `models.records.open_record` (so its data key is
unwrapped by the master key), and every new record gets its own ID (of the server's
alphabet, never a reserved name), a unique fingerprint, a delete-token hash and
metadata sealed for its own ID with `storage.sealed.seal_metadata`, so GET /ID and
GET /api/info work for each of them. They all point at the source record's object
(and thumbnail): the database grows, the store does not.

The source is the oldest record (or --source ID): upload one real file first.
Rows go in as batched inserts (one prepared INSERT for many rows, see Inserter), in
transactions of --batch rows (default 10000), and the
running totals are bumped in the same transactions, so /api/stats stays right.
--total N tops the table up to N records in all (it never deletes). --ids-out writes
a random sample of the new IDs, one per line, for the load benchmark.

Prints one JSON line: inserted, total, seconds, rows_per_s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import re
import secrets
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import peewee  # noqa: E402

import server  # noqa: E402  (prepare_data: master key, schema, deployment secret)
from config import Settings, SettingsError  # noqa: E402
from ingest import delete_token_hash  # noqa: E402
from models import File, RetiredId, Totals, open_database  # noqa: E402
from models import files as catalog  # noqa: E402
from models.records import metadata_context, open_record, sealed_object  # noqa: E402
from storage import SealedStore, make_store  # noqa: E402
from storage.sealed import seal_metadata  # noqa: E402

ID_LENGTH = 6  # what a busy deployment's IDs grow to; lookups do not depend on it
ROWS_PER_STATEMENT = 1000  # rows per VALUES list on PostgreSQL


def random_id(draw: random.Random) -> str:
    """An ID of the form the server issues ([A-Za-z0-9], never a route name)."""
    while True:
        candidate = "".join(draw.choices(catalog.ID_ALPHABET, k=ID_LENGTH))
        if candidate.lower() not in catalog.RESERVED_IDS:
            return candidate


class Inserter:
    """Inserts many File rows with one prepared statement.

    peewee's insert_many builds a node per value (about 250 us a row: four minutes
    for a million); here peewee writes the INSERT for one row, every value goes
    through its field's own db_value(), and the driver runs the statement for all
    rows (executemany on SQLite, execute_values on PostgreSQL).
    """

    def __init__(self, database: peewee.Database, example: dict[str, object]) -> None:
        self.database = database
        sql, _ = File.insert(**example).sql()
        sql = re.sub(r"\s+RETURNING .*$", "", sql)
        names = re.search(r"\((.*?)\)\s+VALUES", sql)
        if names is None:
            raise RuntimeError(f"unexpected INSERT statement: {sql}")
        columns = [name.strip().strip('"`') for name in names.group(1).split(",")]
        by_column = {field.column_name: field for field in File._meta.sorted_fields}
        self.fields = [by_column[column] for column in columns]
        self.sql = sql
        self.postgres = isinstance(database, peewee.PostgresqlDatabase)
        if self.postgres:
            self.sql = re.sub(r"VALUES\s*\(.*\)", "VALUES %s", sql)

    def __call__(self, rows: list[dict[str, object]]) -> None:
        params = [
            tuple(field.db_value(row[field.name]) for field in self.fields)
            for row in rows
        ]
        cursor = self.database.cursor()
        if self.postgres:
            from psycopg2.extras import execute_values

            execute_values(cursor, self.sql, params, page_size=ROWS_PER_STATEMENT)
        else:
            cursor.executemany(self.sql, params)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--total", type=int, required=True, help="records wanted in all"
    )
    parser.add_argument(
        "--batch", type=int, default=10_000, help="rows per transaction (10000)"
    )
    parser.add_argument(
        "--source", default=None, help="ID of the record to share (default: oldest)"
    )
    parser.add_argument(
        "--ids-out", type=Path, default=None, help="write sampled new IDs here"
    )
    parser.add_argument(
        "--sample", type=int, default=10_000, help="how many IDs to write (10000)"
    )
    parser.add_argument("--seed", type=int, default=None, help="for the ID sample")
    arguments = parser.parse_args()
    if arguments.total < 1 or arguments.batch < 1 or arguments.sample < 1:
        parser.error("--total, --batch and --sample must be positive")
    return arguments


def main() -> int:
    arguments = parse_arguments()
    try:
        settings = Settings.from_environ()
        master, _secret = server.prepare_data(settings)
    except SettingsError as error:
        print(f"seed: {error}", file=sys.stderr)
        return 2
    database = open_database(settings)
    database.connect(reuse_if_open=True)
    if isinstance(database, peewee.SqliteDatabase):
        # Room for the indexes being grown (this connection only): random keys
        # would otherwise thrash SQLite's default 2 MB page cache.
        database.execute_sql("PRAGMA cache_size = -262144")
        # A benchmark database: no fsync per checkpoint (this connection only).
        database.execute_sql("PRAGMA synchronous = OFF")
    try:
        return seed(arguments, database, SealedStore(make_store(settings), master))
    finally:
        database.close()


def seed(
    arguments: argparse.Namespace, database: peewee.Database, store: SealedStore
) -> int:
    if arguments.source:
        source = catalog.find(arguments.source)
    else:
        source = File.select().order_by(File.created_at, File.id).first()
    if source is None:
        print("seed: no record to share; upload a file first", file=sys.stderr)
        return 1
    opened = open_record(source, store)  # raises if the master key does not fit
    sealed = sealed_object(source)
    data_key = store.data_key(sealed)
    fields: dict[str, str] = {"type": opened.mimetype}
    if opened.thumbnail_type:
        fields["thumbnail_type"] = opened.thumbnail_type
    thumbnail_wrapped_key = (
        None
        if source.thumbnail_wrapped_key is None
        else bytes(source.thumbnail_wrapped_key)
    )
    _stem, dot, extension = opened.name.rpartition(".")
    suffix = f".{extension}" if dot else ""

    taken = {str(row[0]) for row in File.select(File.id).tuples().iterator()}
    taken |= {str(row[0]) for row in RetiredId.select(RetiredId.id).tuples()}
    existing = File.select().count()
    wanted = max(arguments.total - existing, 0)
    print(
        f"seed: {existing} records; adding {wanted}, all sharing {source.id}",
        file=sys.stderr,
    )
    started = time.perf_counter()
    new_ids: list[str] = []
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    # Fast randomness for test rows (secrets.choice costs a syscall per character).
    draw = random.Random(secrets.token_bytes(32))
    shared = {
        "size": sealed.size,
        "views": 0,
        "created_at": now,
        "object_key": sealed.key,
        "wrapped_key": sealed.wrapped_key,
        "thumbnail_key": source.thumbnail_key,
        "thumbnail_wrapped_key": thumbnail_wrapped_key,
        "thumbnail_size": source.thumbnail_size,
    }
    insert: Inserter | None = None
    while len(new_ids) < wanted:
        count = min(arguments.batch, wanted - len(new_ids))
        rows = []
        for _ in range(count):
            file_id = random_id(draw)
            while file_id in taken:
                file_id = random_id(draw)
            taken.add(file_id)
            new_ids.append(file_id)
            record_fields = {"name": f"seed-{len(new_ids)}{suffix}", **fields}
            rows.append(
                {
                    "id": file_id,
                    **shared,
                    "fingerprint": draw.randbytes(32).hex(),
                    "metadata": seal_metadata(
                        data_key, metadata_context(file_id, sealed.key), record_fields
                    ),
                    "delete_token_hash": delete_token_hash(draw.randbytes(18).hex()),
                }
            )
        insert = insert or Inserter(database, rows[0])
        with database.atomic():
            insert(rows)
            Totals.update(
                files=Totals.files + count,
                storage_bytes=Totals.storage_bytes + count * sealed.size,
            ).where(Totals.id == 1).execute()
        done = len(new_ids)
        if done % 100_000 < arguments.batch or done == wanted:
            rate = done / max(time.perf_counter() - started, 1e-9)
            print(f"seed: {done}/{wanted} ({rate:.0f} rows/s)", file=sys.stderr)
    seconds = time.perf_counter() - started

    if arguments.ids_out is not None:
        pool = new_ids or sorted(taken)
        chooser = random.Random(arguments.seed)
        sample = chooser.sample(pool, min(arguments.sample, len(pool)))
        arguments.ids_out.write_text("".join(f"{i}\n" for i in sample))
    total = File.select().count()
    print(
        json.dumps(
            {
                "inserted": wanted,
                "total": total,
                "seconds": round(seconds, 2),
                "rows_per_s": round(wanted / seconds) if seconds > 0 else None,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
