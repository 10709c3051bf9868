"""The per-process cache and the hotlink fast path: same answers as the handlers,
and never a removed file, whichever process removed it."""

from __future__ import annotations

import asyncio
import socket

import pytest

from handlers.cache import Cached, FileCache
from models import files as catalog
from models.epoch import Epoch
from tests.conftest import payload
from tests.handlers.test_serving import fetch
from tests.handlers.test_serving import stored as upload

SMALL = 50_000
# Answers differ in Date only (and it may tick between two requests).
VARYING = {"Date"}


def header_map(response) -> dict[str, list[str]]:
    return {
        name: response.headers.get_list(name)
        for name in response.headers
        if name not in VARYING
    }


@pytest.mark.settings(cache_mb=16)
@pytest.mark.gen_test
async def test_a_repeated_plain_request_is_answered_from_memory_identically(
    http_client, base_url, services
):
    content = payload(SMALL, seed=11)
    file = await upload(http_client, base_url, content)
    first = await fetch(http_client, base_url, file["url"])
    assert services.cache.fast_answers == 0

    second = await fetch(http_client, base_url, file["url"])
    head = await fetch(http_client, base_url, file["url"], "HEAD")

    assert services.cache.fast_answers == 2
    assert first.code == second.code == head.code == 200
    assert first.body == second.body == content
    assert head.body == b""
    assert header_map(second) == header_map(first) == header_map(head)
    assert second.headers["Date"].endswith(" GMT")
    # Both GETs count a view; HEAD counts none.
    assert services.views.pending(file["id"]) == 2


@pytest.mark.settings(cache_mb=16)
@pytest.mark.gen_test
async def test_ranges_conditions_and_queries_go_to_the_handler(
    http_client, base_url, services
):
    content = payload(SMALL, seed=12)
    file = await upload(http_client, base_url, content)
    first = await fetch(http_client, base_url, file["url"])
    etag = first.headers["ETag"]

    ranged = await fetch(http_client, base_url, file["url"], Range="bytes=10-19")
    unchanged = await fetch(http_client, base_url, file["url"], If_None_Match=etag)
    inline = await fetch(http_client, base_url, file["url"] + "?inline")
    since = await fetch(
        http_client,
        base_url,
        file["url"],
        If_Modified_Since=first.headers["Last-Modified"],
    )

    assert services.cache.fast_answers == 0
    assert (ranged.code, ranged.body) == (206, content[10:20])
    assert unchanged.code == 304 and since.code == 304
    assert inline.code == 200 and inline.body == content


@pytest.mark.settings(cache_mb=1)  # files over 32 KiB are not kept
@pytest.mark.gen_test
async def test_a_file_too_big_to_keep_is_streamed_every_time(
    http_client, base_url, services
):
    content = payload(services.cache.max_item + 1, seed=13)
    file = await upload(http_client, base_url, content, "big.bin")
    answers = [await fetch(http_client, base_url, file["url"]) for _ in range(2)]
    head = await fetch(http_client, base_url, file["url"], "HEAD")

    assert [answer.body == content for answer in answers] == [True, True]
    assert services.cache.get(file["id"]).body is None
    # Only the HEAD, which needs no body, was answered from memory.
    assert services.cache.fast_answers == 1
    assert head.headers["Content-Length"] == str(len(content))


@pytest.mark.settings(cache_mb=16)
@pytest.mark.gen_test
async def test_a_deleted_file_is_gone_at_once(http_client, base_url, services):
    file = await upload(http_client, base_url, payload(SMALL, seed=14))
    for _ in range(2):
        assert (await fetch(http_client, base_url, file["url"])).code == 200

    deleted = await fetch(
        http_client,
        base_url,
        f"/api/files/{file['id']}",
        "DELETE",
        X_Delete_Token=file["delete_token"],
    )

    assert deleted.code == 200
    for method in ("GET", "HEAD"):
        assert (await fetch(http_client, base_url, file["url"], method)).code == 404


@pytest.mark.settings(cache_mb=16)
@pytest.mark.gen_test
async def test_a_removal_by_another_process_empties_the_cache(
    http_client, base_url, services, settings
):
    file = await upload(http_client, base_url, payload(SMALL, seed=15))
    for _ in range(2):  # the second answer comes from memory
        await fetch(http_client, base_url, file["url"])
    # Another process removes the record (the database row, nothing more).
    await services.database.run(catalog.remove, file["id"], "deleted")
    answer = await fetch(http_client, base_url, file["url"])

    if services.cache.shared:
        # PostgreSQL: the removal may come from another host, so every answer from
        # memory first reads the count of removals the transaction bumped.
        assert answer.code == 404
    else:
        # SQLite: all processes are on this host; that one also bumps the epoch
        # they all map, which this one has not seen yet.
        assert answer.code == 200
        other = Epoch(settings.data_dir)  # what that process maps: the same counter
        try:
            other.bump()
        finally:
            other.close()
        assert (await fetch(http_client, base_url, file["url"])).code == 404
    assert len(services.cache) == 0
    assert (await fetch(http_client, base_url, file["url"], "HEAD")).code == 404


@pytest.mark.settings(cache_mb=16)
@pytest.mark.gen_test
async def test_connection_headers_of_one_answer_do_not_stick_to_the_next(
    http_client, base_url, services
):
    file = await upload(http_client, base_url, payload(1000, seed=16))
    await fetch(http_client, base_url, file["url"])
    port = int(base_url.rsplit(":", 1)[1])

    def ask(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += client.recv(65536)
            return answer.split(b"\r\n\r\n", 1)[0].lower()

    path = file["url"].encode()
    closing = await off_loop(
        ask, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    old_keep_alive = await off_loop(
        ask, b"GET " + path + b" HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    )
    plain = await off_loop(ask, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")

    assert services.cache.fast_answers == 3
    assert b"\r\nconnection: close" in closing
    assert b"\r\nconnection: keep-alive" in old_keep_alive
    assert b"connection:" not in plain


async def off_loop(function, *args):
    """Run a blocking client off the loop, so the server on this loop can answer."""
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


@pytest.mark.settings(cache_mb=0)
@pytest.mark.gen_test
async def test_with_the_cache_off_every_answer_comes_from_the_handler(
    http_client, base_url, services
):
    content = payload(SMALL, seed=17)
    file = await upload(http_client, base_url, content)
    answers = [await fetch(http_client, base_url, file["url"]) for _ in range(3)]
    assert [answer.body == content for answer in answers] == [True] * 3
    assert services.cache.fast_answers == 0 and len(services.cache) == 0


# -- the cache on its own -----------------------------------------------------------


@pytest.fixture
def epoch(tmp_path):
    epoch = Epoch(tmp_path)
    yield epoch
    epoch.close()


def entry(file_id: str, body: bytes | None = None) -> Cached:
    class File:
        id = file_id

    return Cached(file=File(), etag='"e"', body=body)  # type: ignore[arg-type]


def test_an_entry_read_while_a_file_was_removed_is_not_kept(epoch):
    cache = FileCache(epoch, 1 << 20)
    token = cache.token()
    epoch.bump()  # a removal commits while the record is being read
    cache.put("abcde", entry("abcde"), token)
    assert cache.get("abcde") is None


def test_a_body_read_while_a_file_was_removed_is_not_kept(epoch):
    cache = FileCache(epoch, 1 << 20)
    token = cache.token()
    kept = entry("abcde")
    cache.put("abcde", kept, token)
    epoch.bump()
    cache.keep_body(kept, b"x" * 100, token)
    assert kept.body is None
    assert cache.get("abcde") is None


def test_the_budget_evicts_the_least_recently_used(epoch):
    cache = FileCache(epoch, 32 * 8192)  # bodies up to 8 KiB are kept
    token = cache.token()
    for index in range(80):
        file_id = f"id{index:03d}"
        cache.put(file_id, entry(file_id), token)
        cache.keep_body(cache.get(file_id), b"x" * 4096, token)
        cache.get("id000")  # kept in use, so never the oldest
    assert cache.used <= cache.budget
    assert cache.get("id000") is not None
    assert cache.get("id001") is None
    assert cache.get("id079") is not None


def test_a_body_over_the_item_limit_is_not_kept(epoch):
    cache = FileCache(epoch, 32 * 1024)
    token = cache.token()
    kept = entry("abcde")
    cache.put("abcde", kept, token)
    cache.keep_body(kept, b"x" * 1025, token)
    assert kept.body is None
    cache.keep_body(kept, b"x" * 1024, token)
    assert kept.body == b"x" * 1024


def test_processes_sharing_a_data_folder_share_the_counter(tmp_path):
    first, second = Epoch(tmp_path), Epoch(tmp_path)
    try:
        before = first.value()
        second.bump()
        second.bump()
        assert first.value() == before + 2
        assert (tmp_path / "cache-epoch").stat().st_mode & 0o777 == 0o600
    finally:
        first.close()
        second.close()
