"""GET /api/openapi.json: a valid OpenAPI 3.1 document of the whole API, which real
answers keep to, and which schemathesis fuzzes a real server against."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import schemathesis
from PIL import Image
from tornado import httpclient

from tests.conftest import TEST_LIMIT, multipart, payload
from tests.support import Server

Exchange = tuple[str, str, httpclient.HTTPResponse]
FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def is_date_time(value: object) -> bool:
    """RFC 3339 with its offset (jsonschema checks the format only with extras)."""
    if not isinstance(value, str):
        return True
    return "T" in value and datetime.fromisoformat(value).tzinfo is not None


async def fetch(
    http_client: Any, base_url: str, path: str, **options: Any
) -> httpclient.HTTPResponse:
    return await http_client.fetch(base_url + path, raise_error=False, **options)


async def openapi(http_client: Any, base_url: str) -> dict:
    response = await fetch(http_client, base_url, "/api/openapi.json")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


async def post_file(
    http_client: Any, base_url: str, content: bytes, field: str = "file"
) -> httpclient.HTTPResponse:
    body, headers = multipart([(field, "a.bin", content)])
    return await fetch(
        http_client, base_url, "/api/upload", method="POST", body=body, headers=headers
    )


def jpeg() -> bytes:
    output = io.BytesIO()
    Image.linear_gradient("L").resize((640, 480)).save(output, "JPEG")
    return output.getvalue()


@pytest.mark.gen_test
async def test_the_document_is_valid_openapi_3_1(http_client, base_url):
    document = await openapi(http_client, base_url)

    assert document["openapi"].startswith("3.1.")
    # Validates against the OpenAPI 3.1 meta-schema; raises on the first error.
    schemathesis.openapi.from_dict(document).validate()


@pytest.mark.gen_test
async def test_the_openapi_check_has_teeth(http_client, base_url):
    document = await openapi(http_client, base_url)
    del document["info"]["title"]

    with pytest.raises(ValueError, match="title"):
        schemathesis.openapi.from_dict(document).validate()


@pytest.mark.parametrize("name", ["Upload", "Info", "Stats", "Error"])
@pytest.mark.gen_test
async def test_each_component_schema_is_valid_json_schema(http_client, base_url, name):
    document = await openapi(http_client, base_url)

    jsonschema.Draft202012Validator.check_schema(
        document["components"]["schemas"][name]
    )


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/api/upload", "post"),
        ("/api/info", "get"),
        ("/api/stats", "get"),
        ("/{id}", "get"),
        ("/{id}", "head"),
        ("/t/{id}", "get"),
        ("/api/files/{id}", "delete"),
    ],
)
@pytest.mark.gen_test
async def test_every_api_route_is_documented(http_client, base_url, path, method):
    document = await openapi(http_client, base_url)

    assert method in document["paths"].get(path, {}), sorted(document["paths"])


@pytest.mark.settings(max_upload_bytes=123_456, rate_limit_per_hour=7)
@pytest.mark.gen_test
async def test_the_document_states_the_live_limits(http_client, base_url):
    document = await openapi(http_client, base_url)

    assert "123456 bytes" in document["paths"]["/api/upload"]["post"]["summary"]
    assert "7 uploads per client per hour" in document["info"]["description"]
    assert document["servers"] == [{"url": base_url}]


@pytest.mark.settings(public_url="https://files.example")
@pytest.mark.gen_test
async def test_the_server_url_is_the_public_url_when_set(http_client, base_url):
    document = await openapi(http_client, base_url)

    assert document["servers"] == [{"url": "https://files.example"}]


async def upload_created(http_client, base_url) -> Exchange:
    response = await post_file(http_client, base_url, payload(1000, seed=1))
    assert response.code == 201
    return "/api/upload", "post", response


async def upload_of_an_image(http_client, base_url) -> Exchange:
    response = await post_file(http_client, base_url, jpeg())
    assert json.loads(response.body)["thumbnail_url"] is not None
    return "/api/upload", "post", response


async def upload_duplicate(http_client, base_url) -> Exchange:
    await post_file(http_client, base_url, payload(1000, seed=2))
    response = await post_file(http_client, base_url, payload(1000, seed=2))
    assert response.code == 200
    return "/api/upload", "post", response


async def upload_without_a_file(http_client, base_url) -> Exchange:
    response = await post_file(http_client, base_url, b"not a file", field="other")
    assert response.code == 400
    return "/api/upload", "post", response


async def upload_too_large(http_client, base_url) -> Exchange:
    response = await post_file(http_client, base_url, payload(TEST_LIMIT + 1))
    assert response.code == 413
    return "/api/upload", "post", response


async def upload_of_another_type(http_client, base_url) -> Exchange:
    response = await fetch(
        http_client,
        base_url,
        "/api/upload",
        method="POST",
        body=b"hello",
        headers={"Content-Type": "text/plain"},
    )
    assert response.code == 415
    return "/api/upload", "post", response


async def upload_of_broken_json(http_client, base_url) -> Exchange:
    response = await fetch(
        http_client,
        base_url,
        "/api/upload",
        method="POST",
        body=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.code == 400
    return "/api/upload", "post", response


async def info_of_a_file(http_client, base_url) -> Exchange:
    created = json.loads((await post_file(http_client, base_url, jpeg())).body)
    response = await fetch(http_client, base_url, f"/api/info?id={created['id']}")
    assert response.code == 200
    return "/api/info", "get", response


async def info_of_an_unknown_id(http_client, base_url) -> Exchange:
    response = await fetch(http_client, base_url, "/api/info?id=ZZZZZZ")
    assert response.code == 404
    return "/api/info", "get", response


async def stats(http_client, base_url) -> Exchange:
    await post_file(http_client, base_url, payload(500, seed=3))
    response = await fetch(http_client, base_url, "/api/stats")
    assert response.code == 200
    return "/api/stats", "get", response


async def raw_of_an_unknown_id(http_client, base_url) -> Exchange:
    response = await fetch(http_client, base_url, "/ZZZZZZ")
    assert response.code == 404
    return "/{id}", "get", response


EXCHANGES: dict[str, Callable[[Any, str], Awaitable[Exchange]]] = {
    function.__name__: function
    for function in [
        upload_created,
        upload_of_an_image,
        upload_duplicate,
        upload_without_a_file,
        upload_too_large,
        upload_of_another_type,
        upload_of_broken_json,
        info_of_a_file,
        info_of_an_unknown_id,
        stats,
        raw_of_an_unknown_id,
    ]
}


def resolved(document: dict, schema: dict) -> dict:
    if "$ref" not in schema:
        return schema
    name = schema["$ref"].removeprefix("#/components/schemas/")
    return document["components"]["schemas"][name]


@pytest.mark.parametrize("exchange", sorted(EXCHANGES))
@pytest.mark.gen_test
async def test_real_answers_match_their_documented_schema(
    http_client, base_url, exchange
):
    document = await openapi(http_client, base_url)
    path, method, response = await EXCHANGES[exchange](http_client, base_url)
    body = json.loads(response.body)

    answers = document["paths"][path][method]["responses"]
    assert str(response.code) in answers
    content = answers[str(response.code)]["content"]
    assert response.headers["Content-Type"].split(";")[0] in content
    schema = content["application/json"]["schema"]
    validator = jsonschema.Draft202012Validator(
        {**schema, "components": document["components"]},
        format_checker=FORMATS,
    )
    assert [error.message for error in validator.iter_errors(body)] == []
    # Nothing the answer carries is left out of the document.
    assert set(body) <= set(resolved(document, schema)["properties"])


# Schemathesis failure codes (`st explain CODE`) by what they would mean here.
FINDINGS = {
    "a-server-error": ("ST101", "ST102"),
    "an-undocumented-status": ("ST103",),
    "an-undocumented-content-type": ("ST104", "ST105", "ST106"),
    "a-body-or-header-off-schema": ("ST107", "ST108", "ST109", "ST110"),
    "an-invalid-request-accepted": ("ST201",),
    "a-405-without-allow-or-another-status-for-an-undeclared-method": ("ST204",),
    "a-deleted-file-still-served": ("ST301",),
    "a-created-file-not-found": ("ST302",),
}
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "unsupported_method",
    "use_after_free",
    "ensure_resource_availability",
]


def schemathesis_run(schema_url: str, report: Path) -> list[str]:
    options = {
        "--checks": ",".join(CHECKS),
        "--max-examples": "10",
        "--seed": "20261203",
        "--request-timeout": "10",
        "--report": "json",
        "--report-json-path": str(report),
    }
    arguments = [part for option in options.items() for part in option]
    return [sys.executable, "-m", "schemathesis.cli", "run", schema_url, *arguments]


@dataclass
class Fuzzing:
    report: dict
    output: str
    server_log: str


@pytest.fixture(scope="module")
def fuzzing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzing]:
    """One schemathesis run against a real `python server.py`, then its stop."""
    folder = tmp_path_factory.mktemp("fuzzing")
    server = Server(
        folder / "data",
        # The URLs schemathesis makes up are refused before any DNS query.
        IMGYX_FETCH_ALLOW_PORTS="1",
        IMGYX_SHUTDOWN_TIMEOUT="3",
    )
    try:
        run = subprocess.run(
            schemathesis_run(f"{server.base}/api/openapi.json", folder / "report.json"),
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        server_log = stop(server)
    report = json.loads((folder / "report.json").read_text())
    yield Fuzzing(report, run.stdout + run.stderr, server_log)


def stop(server: Server) -> str:
    """Stop the server; kill it (it is ours) if it will not stop, and keep its log."""
    try:
        return server.stop()
    except (AssertionError, subprocess.TimeoutExpired):
        server.process.kill()
        server.process.wait()
        server.log.close()
        return server.log_path.read_text() + "\n(the server did not stop on SIGTERM)"


def test_the_fuzzing_run_tested_every_operation(fuzzing: Fuzzing) -> None:
    report = fuzzing.report

    assert report["complete"] is True, fuzzing.output[-3000:]
    assert report["errors"] == [], fuzzing.output[-3000:]
    assert report["operations"]["tested"] == report["operations"]["selected"] >= 5
    assert report["test_cases"]["generated"] >= 50


@pytest.mark.parametrize("finding", sorted(FINDINGS))
def test_schemathesis_finds_no(fuzzing: Fuzzing, finding: str) -> None:
    found = [
        failure
        for failure in fuzzing.report["failures"]
        if failure["code"] in FINDINGS[finding]
    ]

    assert found == [], fuzzing.output[-6000:]


@pytest.mark.parametrize(
    "sign",
    ["Traceback", " ERROR ", "requests still running", "did not stop"],
)
def test_the_fuzzed_server_logged_no_failure_and_stopped_cleanly(
    fuzzing: Fuzzing, sign: str
) -> None:
    lines = [line for line in fuzzing.server_log.splitlines() if sign in line]

    assert lines == [], "\n".join(
        line for line in fuzzing.server_log.splitlines() if "imgyx.access" not in line
    )[-4000:]
