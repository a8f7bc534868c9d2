"""Settings, built once at the edge and passed down; the only reader of the environment.

Precedence: explicit values (CLI flags) over `NOTIFYQ_*` environment variables over a TOML file
(`--config PATH`) over defaults. With no `dsn`, the connection falls back to libpq's `PG*` variables and
`PGPASSFILE`, which asyncpg reads itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from notifyq.errors import ConfigError

QUEUE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,62}$")
APP_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class Settings(BaseSettings):
    """Every setting of the daemon and the CLI. Frozen once built."""

    model_config = SettingsConfigDict(
        env_prefix="NOTIFYQ_", frozen=True, extra="forbid", validate_default=True
    )

    dsn: str | None = Field(default=None, description="Postgres DSN; PG* variables when unset.")
    listen_dsn: str | None = Field(default=None, description="Direct DSN for LISTEN; defaults to dsn.")
    app: str | None = Field(default=None, description="MODULE:ATTR of the task Registry.")
    # NoDecode: NOTIFYQ_QUEUES=a,b is a comma list, not JSON.
    queues: Annotated[tuple[str, ...], NoDecode] = Field(default=("default",), description="Queues to serve.")
    concurrency: int = Field(default=10, ge=1, le=1000, description="Jobs run at once.")
    prefetch: int = Field(
        default=10, ge=0, le=1000, description="Jobs claimed ahead of free slots, so the next starts at once."
    )
    prefetch_max: int = Field(
        default=500,
        ge=0,
        le=2000,
        description="How far the prefetch grows while a backlog of short jobs drains (never below prefetch).",
    )
    lease_seconds: float = Field(default=30.0, ge=1.0, le=86400.0, description="Lease length.")
    poll_interval_seconds: float = Field(
        default=10.0, ge=0.05, le=3600.0, description="Safety poll when no NOTIFY arrives."
    )
    shutdown_timeout_seconds: float = Field(
        default=30.0, ge=0.0, le=86400.0, description="Drain time on SIGTERM before cancelling."
    )
    http_address: str = Field(default="127.0.0.1:9469", description="HOST:PORT for /metrics.")
    log_format: Literal["json", "console", "auto"] = Field(
        default="auto", description="json, console, or auto (console on a terminal)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info")
    probe_interval_seconds: float = Field(
        default=10.0, ge=0.1, le=3600.0, description="Listener self-probe period."
    )
    retention_seconds: float = Field(
        default=7 * 86400.0, ge=0.0, description="Finished jobs older than this are pruned."
    )
    stats_interval_seconds: float = Field(
        default=15.0, ge=1.0, le=3600.0, description="Refresh period of the database gauges."
    )
    synchronous_commit: bool = Field(
        default=False,
        description=(
            "Wait for the WAL flush on the daemon's own writes (claim, outcome, heartbeat). Off: a database"
            " crash can re-run a job, never lose one; producers' inserts are not affected."
        ),
    )
    statement_cache_size: int = Field(default=100, ge=0, description="0 for PgBouncer in transaction mode.")

    @field_validator("queues", mode="before")
    @classmethod
    def _split_queues(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(q.strip() for q in value.split(",") if q.strip())
        return value

    @field_validator("queues")
    @classmethod
    def _check_queues(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one queue is needed")
        for queue in value:
            if not QUEUE_PATTERN.match(queue):
                raise ValueError(f"{queue!r} must match {QUEUE_PATTERN.pattern}")
        return tuple(dict.fromkeys(value))

    @field_validator("app")
    @classmethod
    def _check_app(cls, value: str | None) -> str | None:
        if value is not None and not APP_PATTERN.match(value):
            raise ValueError("must look like MODULE:ATTRIBUTE, e.g. myproject.jobs:registry")
        return value

    @field_validator("http_address")
    @classmethod
    def _check_http(cls, value: str) -> str:
        if value in ("", "off"):
            return "off"
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT (port 0 to 65535) or 'off'")
        return value

    @property
    def effective_listen_dsn(self) -> str | None:
        return self.listen_dsn or self.dsn

    @property
    def heartbeat_interval(self) -> float:
        """Three heartbeats per lease, so one lost beat never costs the lease."""
        return self.lease_seconds / 3

    @property
    def http_host_port(self) -> tuple[str, int] | None:
        if self.http_address == "off":
            return None
        host, _, port = self.http_address.rpartition(":")
        return host.strip("[]"), int(port)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if _toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=_toml_path))
        return tuple(sources)

    def __repr__(self) -> str:
        shown = self.model_dump()
        for key in ("dsn", "listen_dsn"):
            if shown[key]:
                shown[key] = redact_dsn(shown[key])
        return f"Settings({shown})"

    __str__ = __repr__


# Set only for the duration of load_settings(); pydantic-settings asks for sources through a classmethod.
_toml_path: Path | None = None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from flags, environment and an optional TOML file; raise ConfigError on bad input."""
    global _toml_path
    given = {k: v for k, v in overrides.items() if v is not None}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config: file {str(path)!r} does not exist")
        _toml_path = path
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except ValueError as exc:  # TOML syntax errors and the like
        raise ConfigError(f"config: {exc}") from None
    finally:
        _toml_path = None


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    name = ".".join(str(p) for p in first["loc"]) or "settings"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown setting"
    return f"invalid setting {name}: {message}"


_URL_USERINFO = re.compile(r"^(?P<user>[^:@/]*):(?P<pw>[^@]*)@")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced, in URL userinfo, a `?password=` query or key=value form."""
    if "://" not in dsn:
        return _KV_PASSWORD.sub(r"\1***", dsn)
    parts = urlsplit(dsn)
    netloc = _URL_USERINFO.sub(lambda m: f"{m.group('user')}:***@", parts.netloc)
    query = urlencode(
        [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(parts.query)],
        safe="*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
