"""Settings: declared once, read from the environment, refused when bad, documented."""

from __future__ import annotations

import base64
import ipaddress
import re
from pathlib import Path

import pytest

import config
from config import Settings, SettingsError

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults_match_the_documented_ones():
    settings = Settings.from_environ({})
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.data_dir == Path("./data")
    assert settings.database_url == ""
    assert settings.master_key is None
    assert settings.max_upload_bytes == 20971520
    assert settings.rate_limit_per_hour == 1000
    assert settings.trusted_proxies == ()
    assert settings.public_url == ""


def test_environment_values_are_parsed():
    key = bytes(range(32))
    settings = Settings.from_environ(
        {
            "IMGYX_PORT": "9001",
            "IMGYX_MASTER_KEY": base64.b64encode(key).decode(),
            "IMGYX_TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8",
            "IMGYX_PUBLIC_URL": "https://files.example/",
        }
    )
    assert settings.port == 9001
    assert settings.master_key == key
    assert settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert settings.public_url == "https://files.example"


def test_command_line_overrides_win_over_the_environment():
    settings = Settings.from_environ({"IMGYX_PORT": "9001"}, overrides={"port": "9002"})
    assert settings.port == 9002


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IMGYX_PORT", "eighty"),
        ("IMGYX_PORT", "70000"),
        ("IMGYX_MAX_UPLOAD_BYTES", "0"),
        ("IMGYX_RATE_LIMIT_PER_HOUR", "-1"),
        ("IMGYX_MASTER_KEY", "not base64!"),
        ("IMGYX_MASTER_KEY", base64.b64encode(b"short").decode()),
        ("IMGYX_TRUSTED_PROXIES", "10.0.0.0/8, nonsense"),
        ("IMGYX_PUBLIC_URL", "ftp://files.example"),
        ("IMGYX_LOG_LEVEL", "loud"),
        ("IMGYX_STORAGE", "floppy"),
    ],
)
def test_a_bad_value_is_refused_naming_the_setting(name, value):
    with pytest.raises(SettingsError) as caught:
        Settings.from_environ({name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message


@pytest.mark.parametrize("info", config.describe(), ids=lambda info: info.env)
def test_every_setting_is_in_the_readme_table(info):
    table_rows = [
        line for line in README.read_text().splitlines() if line.startswith("|")
    ]
    assert any(re.search(rf"`?{info.env}`?\s*\|", row) for row in table_rows), info.env
