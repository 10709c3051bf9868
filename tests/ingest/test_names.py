"""Display names from client file names: path parts, hidden characters, length."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.names import DEFAULT_NAME, MAX_BYTES, sanitise


def assert_displayable(name: str) -> None:
    """The invariants every sanitised name holds, whatever came in."""
    assert name
    assert len(name.encode("utf-8")) <= MAX_BYTES
    assert "/" not in name
    assert "\\" not in name
    assert all(unicodedata.category(char)[0] != "C" for char in name)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("/absolute/path/report.pdf", "report.pdf"),
        ("C:\\x\\y.txt", "y.txt"),
        ("folder\\..\\mixed/separators.png", "separators.png"),
        ("..\\..\\windows\\system.ini", "system.ini"),
    ],
)
def test_sanitise_keeps_only_the_last_path_part(raw: str, expected: str) -> None:
    assert sanitise(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("nul\x00byte.txt", "nulbyte.txt"),
        ("header\r\nX-Injected: 1.txt", "headerX-Injected: 1.txt"),
        ("bell\x07and\x1bescape.txt", "bellandescape.txt"),
        ("delete\x7f.txt", "delete.txt"),
        ("c1\x85\x9bcontrols.txt", "c1controls.txt"),
        ("tab\there.txt", "tabhere.txt"),
    ],
)
def test_sanitise_removes_control_characters(raw: str, expected: str) -> None:
    assert sanitise(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("invoice\u202etxt.exe", "invoicetxt.exe"),  # right-to-left override
        ("a\u202ab\u202cc.txt", "abc.txt"),  # right-to-left embedding, pop
        ("\u2066isolate\u2069.txt", "isolate.txt"),  # left-to-right isolate
        ("\u200fmark\u200e.txt", "mark.txt"),  # right-to-left, left-to-right marks
        ("zero\u200bwidth\u200d.txt", "zerowidth.txt"),  # zero-width space, joiner
        ("\ufeffbom.txt", "bom.txt"),  # byte order mark
        ("soft\u00adhyphen.txt", "softhyphen.txt"),
    ],
)
def test_sanitise_removes_bidi_and_zero_width_characters(
    raw: str, expected: str
) -> None:
    assert sanitise(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"plain.txt", "plain.txt"),
        (b"caf\xc3\xa9.txt", "caf\u00e9.txt"),
        (b"../dir/caf\xc3\xa9.txt", "caf\u00e9.txt"),
        (b"bad\xff\xfebytes.txt", "bad\ufffd\ufffdbytes.txt"),
        (b"cut\xe2\x82.txt", "cut\ufffd.txt"),
    ],
)
def test_sanitise_decodes_bytes_replacing_invalid_utf8(
    raw: bytes, expected: str
) -> None:
    assert sanitise(raw) == expected


@given(st.binary(max_size=600))
def test_sanitise_never_raises_on_bytes(raw: bytes) -> None:
    assert_displayable(sanitise(raw))


@given(st.text(max_size=600))
def test_sanitise_always_returns_a_displayable_name(raw: str) -> None:
    assert_displayable(sanitise(raw))


@pytest.mark.parametrize(
    "raw",
    [None, "", b"", ".", "..", "...", "   ", "../", "dir/", "C:\\", "\u202e", "\x00"],
)
def test_sanitise_falls_back_to_default_for_empty_names(
    raw: str | bytes | None,
) -> None:
    assert sanitise(raw) == DEFAULT_NAME


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(".htaccess", "htaccess"), ("..hidden.txt", "hidden.txt")],
)
def test_sanitise_strips_leading_dots(raw: str, expected: str) -> None:
    assert sanitise(raw) == expected


@pytest.mark.parametrize("raw", [". .htaccess", ".\u200b.bashrc", ". . .profile"])
def test_sanitise_result_never_starts_with_a_dot(raw: str) -> None:
    assert not sanitise(raw).startswith(".")


def test_sanitise_folds_runs_of_whitespace() -> None:
    assert sanitise("  two   spaces\u2028here.txt ") == "two spaces here.txt"


@pytest.mark.parametrize("extension", ["txt", "png", "tar.gz"])
def test_sanitise_cuts_long_names_keeping_the_extension(extension: str) -> None:
    name = sanitise("a" * 300 + "." + extension)

    assert len(name.encode("utf-8")) <= MAX_BYTES
    assert name.endswith("." + extension.rsplit(".", 1)[-1])
    assert name.startswith("a" * 150)


def test_sanitise_cuts_long_names_without_an_extension() -> None:
    assert sanitise("b" * 400) == "b" * MAX_BYTES


def test_sanitise_drops_an_overlong_extension_rather_than_the_stem() -> None:
    name = sanitise("stem." + "x" * 300)

    assert name.startswith("stem.")
    assert len(name.encode("utf-8")) <= MAX_BYTES


@pytest.mark.parametrize(
    "char",
    ["\u00e9", "\u20ac", "\u6587", "\U0001f600"],  # 2, 3, 3 and 4 UTF-8 bytes
)
@pytest.mark.parametrize("suffix", [".png", ""])
def test_sanitise_never_splits_a_multibyte_character(char: str, suffix: str) -> None:
    raw = "x" + char * 300 + suffix
    name = sanitise(raw)
    stem = name.removesuffix(suffix) if suffix else name

    assert len(name.encode("utf-8")) <= MAX_BYTES
    assert name.encode("utf-8").decode("utf-8") == name
    assert "\ufffd" not in name
    assert name.endswith(suffix)
    assert raw.startswith(stem)
    # Nothing was cut that would still have fitted.
    assert len(name.encode("utf-8")) > MAX_BYTES - len(char.encode("utf-8"))


@pytest.mark.parametrize(
    "raw",
    ['say "hello".txt', "it's mine.txt", "back`tick`.txt", "semi;colon.txt"],
)
def test_sanitise_keeps_quotes_and_punctuation_for_display(raw: str) -> None:
    assert sanitise(raw) == raw


def test_sanitise_normalises_to_nfc() -> None:
    assert sanitise("cafe\u0301.txt") == "caf\u00e9.txt"
