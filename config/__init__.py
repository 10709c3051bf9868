"""Settings: every IMGYX_* variable is declared once here, parsed and checked at start.

Each field of `Settings` carries its default, its help text and its parser, so the
command line, the README table and the validation all come from one declaration.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ENV_PREFIX = "IMGYX_"


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the setting."""


def parse_str(raw: str) -> str:
    return raw.strip()


def parse_int(raw: str) -> int:
    try:
        return int(raw.strip(), 10)
    except ValueError:
        raise ValueError(f"expected a whole number, got {raw!r}") from None


def parse_positive_int(raw: str) -> int:
    value = parse_int(raw)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def parse_non_negative_int(raw: str) -> int:
    value = parse_int(raw)
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return value


def parse_bounded_int(raw: str, low: int, high: int) -> int:
    value = parse_int(raw)
    if not low <= value <= high:
        raise ValueError(f"must be between {low} and {high}, got {value}")
    return value


def parse_port(raw: str) -> int:
    value = parse_int(raw)
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a TCP port between 0 and 65535, got {value}")
    return value


def parse_path(raw: str) -> Path:
    if not raw.strip():
        raise ValueError("must not be empty")
    return Path(raw.strip()).expanduser()


def parse_optional_path(raw: str) -> Path | None:
    return Path(raw.strip()).expanduser() if raw.strip() else None


def parse_networks(raw: str) -> tuple[IPNetwork, ...]:
    networks = []
    for part in raw.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def parse_ports(raw: str) -> frozenset[int]:
    ports = set()
    for part in raw.replace(",", " ").split():
        port = parse_port(part)
        if port == 0:
            raise ValueError("port 0 is not a port one can fetch from")
        ports.add(port)
    return frozenset(ports)


def parse_seconds(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {raw!r}") from None
    if not 0 < value <= 3600:
        raise ValueError(f"must be between 0 and 3600 seconds, got {value}")
    return value


def parse_master_key(raw: str) -> bytes | None:
    if not raw.strip():
        return None
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64 (of 32 random bytes)") from None
    if len(key) != 32:
        raise ValueError(f"must decode to 32 bytes, got {len(key)}")
    return key


def parse_public_url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"must be an http(s) URL such as https://files.example, got {raw!r}"
        )
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return value


STORAGE_BACKENDS = ("local", "s3")


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def parse_choice(raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
    return value


def parse_log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be one of debug, info, warning, error")
    return value


def setting(
    default: Any, help: str, parse: Callable[[str], Any], shown: str | None = None
) -> Any:
    """Declare one setting: its default, help text and parser for the raw string."""
    metadata = {"help": help, "parse": parse, "shown": shown}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    """Every setting of the service. Build with `Settings.from_environ()`."""

    host: str = setting("127.0.0.1", "Address to listen on.", parse_str)
    port: int = setting(8000, "TCP port to listen on (0 picks a free one).", parse_port)
    processes: int = setting(
        0,
        "Worker processes to fork (0 means one per CPU core).",
        parse_non_negative_int,
    )
    data_dir: Path = setting(
        Path("./data"),
        "Folder for the database, the master key file and the local objects.",
        parse_path,
        shown="./data",
    )
    database_url: str = setting(
        "",
        "Database URL; empty means the SQLite file imgyx.db in the data folder.",
        parse_str,
    )
    master_key: bytes | None = setting(
        None,
        "Base64 of 32 random bytes that wrap every data key. When empty, a key file "
        "(master.key, mode 0600) is created in the data folder and reused.",
        parse_master_key,
        shown="",
    )
    storage: str = setting(
        "local",
        "Object store backend: local (files under <data dir>/objects) or s3 (MinIO "
        "or any S3 service, see the IMGYX_S3_* settings).",
        lambda raw: parse_choice(raw, STORAGE_BACKENDS),
    )
    s3_endpoint: str = setting(
        "", "S3 endpoint as host:port (with IMGYX_STORAGE=s3).", parse_str
    )
    s3_access_key: str = setting("", "S3 access key.", parse_str)
    s3_secret_key: str = setting("", "S3 secret key.", parse_str)
    s3_bucket: str = setting(
        "imgyx", "S3 bucket for the objects; created when missing.", parse_str
    )
    s3_prefix: str = setting(
        "",
        "Prefix for object names, to share one bucket (e.g. 'imgyx/'); empty for none.",
        parse_str,
    )
    s3_secure: bool = setting(
        True,
        "Talk TLS to the S3 endpoint (false only on a private network).",
        parse_bool,
    )
    s3_region: str = setting("", "S3 region; empty lets the client ask.", parse_str)
    old_master_keys: tuple[bytes, ...] = setting(
        (),
        "Earlier master keys (base64, comma separated) that still unwrap data keys "
        "while rotate-key re-wraps them; remove each once rotate-key says so.",
        lambda raw: tuple(
            key
            for part in raw.split(",")
            if (key := parse_master_key(part)) is not None
        ),
        shown="",
    )
    spool_dir: Path | None = setting(
        None,
        "Folder for uploads in progress; empty means the system temporary folder. "
        "Never inside the data folder, which holds no plaintext.",
        parse_optional_path,
        shown="",
    )
    max_upload_bytes: int = setting(
        20 * 1024 * 1024, "Largest accepted file, in bytes.", parse_positive_int
    )
    rate_limit_per_hour: int = setting(
        1000,
        "Uploads per client in a sliding hour; 0 turns the limit off.",
        parse_non_negative_int,
    )
    trusted_proxies: tuple[IPNetwork, ...] = setting(
        (),
        "CIDRs of reverse proxies whose X-Forwarded-For is believed (comma or "
        "space separated).",
        parse_networks,
        shown="",
    )
    fetch_allow_ports: frozenset[int] = setting(
        frozenset({80, 443, 8080, 8443}),
        "Ports remote-URL uploads may connect to (comma or space separated).",
        parse_ports,
        shown="80,443,8080,8443",
    )
    fetch_allow_networks: tuple[IPNetwork, ...] = setting(
        (),
        "CIDRs of internal networks remote-URL uploads may reach, on any port "
        "(empty: only globally routable addresses).",
        parse_networks,
        shown="",
    )
    fetch_timeout: float = setting(
        60.0, "Seconds a remote-URL upload may take in all.", parse_seconds
    )
    fetch_connect_timeout: float = setting(
        10.0,
        "Seconds to wait for a remote server to accept a connection.",
        parse_seconds,
    )
    fetch_max_per_client: int = setting(
        2, "Remote-URL uploads one client may run at once.", parse_positive_int
    )
    thumbnail_size: int = setting(
        480,
        "Longest side of thumbnails, in pixels (32 to 480).",
        lambda raw: parse_bounded_int(raw, 32, 480),
    )
    thumbnail_timeout: float = setting(
        10.0,
        "Seconds a thumbnail may take to render; slower images get none.",
        parse_seconds,
    )
    public_url: str = setting(
        "",
        "Public base URL, e.g. https://files.example; used for absolute links.",
        parse_public_url,
    )
    content_url: str = setting(
        "",
        "Separate origin for raw files, e.g. https://usercontent.example. When set, "
        "raw links point there and raw requests to the main origin redirect there.",
        parse_public_url,
    )
    cache_max_age: int = setting(
        31536000,
        "Seconds browsers and CDNs may cache a raw file (content at an ID never "
        "changes).",
        parse_non_negative_int,
    )
    cache_mb: int = setting(
        16,
        "MiB each worker may use to keep opened records and small files (up to "
        "1/32 of it each) in memory; 0 turns the cache off.",
        parse_non_negative_int,
    )
    idle_timeout: int = setting(
        60,
        "Seconds a connection may sit idle, or take to send its request headers.",
        parse_positive_int,
    )
    body_timeout: int = setting(
        300, "Seconds a client may take to send a request body.", parse_positive_int
    )
    shutdown_timeout: float = setting(
        30.0,
        "Seconds a stopping server lets uploads and downloads in flight finish.",
        parse_seconds,
    )
    log_level: str = setting("INFO", "debug, info, warning or error.", parse_log_level)

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, str] | None = None,
    ) -> Settings:
        """Read every setting from `environ` (default os.environ).

        `overrides` are raw strings keyed by field name (from the command line); they
        win over the environment. Raises SettingsError naming the first bad setting.
        """
        environ = os.environ if environ is None else environ
        overrides = overrides or {}
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            raw = overrides.get(item.name)
            if raw is None:
                raw = environ.get(env_name(item.name))
            if raw is None:
                continue
            try:
                values[item.name] = item.metadata["parse"](raw)
            except ValueError as error:
                raise SettingsError(f"{env_name(item.name)}: {error}") from None
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Checks across settings; raises SettingsError naming the first one missing."""
        if self.storage == "s3":
            for name in ("s3_endpoint", "s3_access_key", "s3_secret_key", "s3_bucket"):
                if not getattr(self, name):
                    raise SettingsError(
                        f"{env_name(name)}: required with IMGYX_STORAGE=s3"
                    )

    @property
    def cache_bytes(self) -> int:
        """The per-worker memory cache budget."""
        return self.cache_mb * 1024 * 1024

    @property
    def shared_database(self) -> bool:
        """Whether other hosts may use the same database (PostgreSQL)."""
        return self.database_url.lower().startswith("postgres")

    @property
    def spool_folder(self) -> Path:
        return self.spool_dir or Path(tempfile.gettempdir())

    @property
    def log_level_number(self) -> int:
        return logging.getLevelName(self.log_level)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class SettingInfo:
    """One setting as documentation shows it."""

    name: str
    env: str
    default: str
    help: str


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def describe() -> list[SettingInfo]:
    """Every declared setting, for --help and the README table."""
    infos = []
    for item in dataclasses.fields(Settings):
        shown = item.metadata["shown"]
        default = shown if shown is not None else str(item.default)
        infos.append(
            SettingInfo(item.name, env_name(item.name), default, item.metadata["help"])
        )
    return infos
