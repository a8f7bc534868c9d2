"""Settings, built once at the edge and passed down; the only reader of the environment.

Precedence: explicit values (CLI flags) over `NOTIFYQ_*` environment variables over a TOML file
(`--config PATH`) over defaults. With no `dsn`, the connection falls back to libpq's `PG*` variables and
`PGPASSFILE`, which asyncpg reads itself.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, unquote_plus, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from notifyq.errors import ConfigError

# Now minus a century is still a valid timestamptz, and no one keeps finished jobs longer.
MAX_RETENTION_SECONDS = 100 * 365 * 86400.0

QUEUE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,62}$")
APP_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class EndpointSettings(BaseModel):
    """A callback destination an operator configures (`[endpoints.NAME]` in the TOML file), so that its
    URL, signing secret and headers never sit in job payloads: a job names it (`"endpoint": "NAME"`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    secret: Annotated[tuple[str, ...], NoDecode] = ()  # whsec_ secrets; several during a rotation
    headers: dict[str, str] = Field(default_factory=dict)

    def __repr__(self) -> str:
        # Never the secret, nor a header's value (an Authorization header is a secret too).
        secrets, headers = len(self.secret), sorted(self.headers)
        return f"EndpointSettings(url={self.url!r}, secret={secrets} secret(s), headers={headers})"

    __str__ = __repr__

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        from notifyq.callbacks.addresses import Refused
        from notifyq.callbacks.sender import check_url

        try:
            check_url(value)
        except Refused as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("secret", mode="before")
    @classmethod
    def _split_secret(cls, value: Any) -> Any:
        return _split_secrets(value)

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        from notifyq.callbacks.task import PayloadError, check_headers

        try:
            return check_headers(value)
        except PayloadError as exc:
            raise ValueError(str(exc)) from None


def _split_secrets(value: Any) -> Any:
    """A comma-separated list of `whsec_` secrets, each checked (the message never quotes one)."""
    from notifyq.callbacks.signing import parse_secret

    items = tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else value
    if isinstance(items, list | tuple):
        for item in items:
            if isinstance(item, str):
                parse_secret(item)
    return items


class Settings(BaseSettings):
    """Every setting of the daemon and the CLI. Frozen once built."""

    # allow_inf_nan=False: a NaN passes no range check and an infinity passes any open-ended one; both
    # once reached the SQL (make_interval) and failed there on every turn, long after start-up.
    model_config = SettingsConfigDict(
        env_prefix="NOTIFYQ_", frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False
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
        default=7 * 86400.0,
        ge=0.0,
        le=MAX_RETENTION_SECONDS,
        description="Finished jobs older than this are pruned.",
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
    statement_cache_size: int = Field(
        default=100, ge=0, le=100_000, description="0 for PgBouncer in transaction mode."
    )
    callback_secret: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="whsec_ secrets signing callbacks that have no endpoint; comma-separated.",
    )
    callback_allow: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="CIDRs and host names callbacks may reach despite the SSRF rule (comma list)."
    )
    api_address: str = Field(
        default="off", description="HOST:PORT for the HTTP API (bearer tokens: notifyq tokens), or 'off'."
    )
    endpoints: dict[str, EndpointSettings] = Field(
        default_factory=dict, description="Named callback destinations ([endpoints.NAME] in the TOML file)."
    )

    @field_validator("callback_secret", mode="before")
    @classmethod
    def _split_callback_secret(cls, value: Any) -> Any:
        return _split_secrets(value)

    @field_validator("callback_allow", mode="before")
    @classmethod
    def _split_allow(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        from notifyq.callbacks.addresses import Allowed

        if isinstance(value, list | tuple):
            Allowed.parse(str(v) for v in value)
        return value

    @field_validator("endpoints")
    @classmethod
    def _check_endpoint_names(cls, value: dict[str, EndpointSettings]) -> dict[str, EndpointSettings]:
        for name in value:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", name):
                raise ValueError(f"endpoint name {name!r} must match [a-z0-9][a-z0-9_.-]{{0,62}}")
        return value

    @field_validator("dsn", "listen_dsn")
    @classmethod
    def _check_dsn(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.strip():
            return None  # NOTIFYQ_DSN= (empty) means unset, as for libpq
        check_dsn(value, f"NOTIFYQ_{(info.field_name or 'dsn').upper()}")
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        # DEBUG, Info: what logging and most tools accept.
        return value.strip().lower() if isinstance(value, str) else value

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

    @field_validator("http_address", "api_address")
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
        # Secrets, and endpoint headers (an Authorization header is one), are never shown.
        shown["callback_secret"] = ["***"] * len(self.callback_secret)
        for endpoint in shown["endpoints"].values():
            endpoint["secret"] = ["***"] * len(endpoint["secret"])
            endpoint["headers"] = dict.fromkeys(endpoint["headers"], "***")
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
        settings = Settings(**given)
        _check_libpq_environment(settings, os.environ)
        return settings
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


# What a DSN must look like, for the messages that refuse one; they never echo the DSN itself, since
# any part of a malformed one may be a piece of its password.
_DSN_FORM = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_IPV6_ADVICE = "malformed host: an IPv6 address goes in brackets, as in postgresql://[::1]:5432/db"
_IPV6_HOST = re.compile(r"\[[^\[\]@/]+\](?::(?P<port>[^:]*))?")


def check_dsn(dsn: str, variable: str = "NOTIFYQ_DSN") -> bool:
    """Raise ValueError, naming `variable` but quoting nothing of `dsn`, unless asyncpg can parse it and
    its password is unambiguous; return whether it names a port (else libpq's PGPORT applies)."""
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        raise ValueError(
            f"not a URL (key=value connection strings are not supported): set {variable} to {_DSN_FORM}"
        )
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"the scheme must be postgresql:// or postgres://: set {variable} to {_DSN_FORM}")
    if any(c.isspace() for c in dsn):  # a space would also end the DSN where logs scrub it from text
        raise ValueError("white space in a DSN must be percent-encoded (%20)")
    try:
        parts = urlsplit(dsn)
    except ValueError:  # an unbalanced bracket
        raise ValueError(_IPV6_ADVICE) from None
    # asyncpg (like libpq) ends the password at the first '@' and the host at the first '/', '?' or '#';
    # a password holding one of those would be cut, and its tail taken for a host or a database name.
    if rest.count("@") > 1 or ("@" in rest and "@" not in parts.netloc):
        raise ValueError(
            "'@' must appear once, between USER:PASSWORD and the host: percent-encode '@', '/', '?' and"
            " '#' in the user name, password and database name (%40, %2F, %3F, %23)"
        )
    hosts = parts.netloc.rpartition("@")[2]
    named_port = False
    for host in hosts.split(",") if hosts else []:
        if not host:
            raise ValueError("an empty host in the list of hosts")
        if host.startswith("["):
            bracketed = _IPV6_HOST.fullmatch(host)
            if bracketed is None:
                raise ValueError("malformed IPv6 host: write it as [ADDRESS] or [ADDRESS]:PORT")
            port = bracketed["port"]
        elif host.count(":") > 1:
            raise ValueError(_IPV6_ADVICE)
        else:
            port = host.partition(":")[2]
        if port:
            _check_port(port)
            named_port = True
    try:
        query = parse_qs(parts.query, strict_parsing=True) if parts.query else {}
    except ValueError:
        raise ValueError("malformed query string: expected KEY=VALUE pairs joined by '&'") from None
    for port in query.get("port", [])[-1:]:
        for one in port.split(","):
            _check_port(one)
        named_port = True
    for mode in query.get("sslmode", [])[-1:]:
        if mode not in _SSLMODES:
            raise ValueError(f"sslmode must be one of {', '.join(_SSLMODES)}")
    return named_port


def _check_port(text: str) -> None:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise ValueError("the port must be a number from 1 to 65535")


def _check_libpq_environment(settings: Settings, environ: Mapping[str, str]) -> None:
    """The libpq variables asyncpg reads, where it would use them: a bad PGPORT once gave a traceback."""
    dsns = [d for d in (settings.dsn, settings.listen_dsn) if d]
    if "PGPORT" in environ and not (dsns and all(check_dsn(d) for d in dsns)):
        try:
            for port in environ["PGPORT"].split(","):
                _check_port(port)
        except ValueError as exc:
            raise ConfigError(f"invalid environment variable PGPORT: {exc}") from None
    if environ.get("PGSSLMODE", "prefer") not in _SSLMODES:
        raise ConfigError(f"invalid environment variable PGSSLMODE: must be one of {', '.join(_SSLMODES)}")


def redact_dsn(dsn: str) -> str:
    """The DSN with its passwords hidden: in the URL's userinfo, in `?password=` (or `sslpassword`), or
    in key=value form.

    The userinfo is taken to end at the last '@' of the URL, so a password with an unencoded '@', '/',
    '?' or '#' is hidden whole; an '@' later in the DSN then hides more than the password, never less.
    """
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        return _KV_PASSWORD.sub(r"\1***", dsn)
    userinfo, at, after = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.partition(':')[0]}:***@{after}"
    head, mark, query = rest.partition("?")
    if mark:
        fields = query.split("&")
        secret = False
        for i, field in enumerate(fields):
            key, equals, _ = field.partition("=")
            name = unquote_plus(key).strip().lower()
            if name in _SECRET_PARAMETERS:
                fields[i], secret = f"{key}{equals}***", True
            elif secret and name not in _CONNECTION_PARAMETERS:
                # An unencoded '&' in a password splits it into more fields: after a secret, only the
                # names of real parameters are safe to show.
                fields[i] = "***"
        query = "&".join(fields)
    return f"{scheme}://{head}{mark}{query}"


_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})
_CONNECTION_PARAMETERS = frozenset(
    {
        "host", "hostaddr", "port", "user", "dbname", "database", "passfile", "connect_timeout",
        "application_name", "options", "sslmode", "sslcert", "sslkey", "sslrootcert", "sslcrl",
        "ssl_min_protocol_version", "ssl_max_protocol_version", "sslnegotiation", "service",
        "target_session_attrs", "krbsrvname", "gsslib",
    }
)  # fmt: skip
_KV_PASSWORD = re.compile(r"((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def misspelled_environment(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """`NOTIFYQ_*` variables that are no setting but look like one, each with the variable it is near.

    Only near misses are reported: other tools may use the prefix (this project's test suite does)."""
    names = [*Settings.model_fields, "config"]  # NOTIFYQ_CONFIG is the CLI's --config
    known = {f"NOTIFYQ_{n.upper()}" for n in names}
    # The short form of a *_seconds setting catches NOTIFYQ_RETENTION as well as NOTIFYQ_RETENTION_SECS.
    candidates = {n: n for n in names} | {n.removesuffix("_seconds"): n for n in names}
    found = []
    for variable in sorted(environ):
        upper = variable.upper()  # pydantic-settings matches the prefix in any case
        if not upper.startswith("NOTIFYQ_") or upper in known:
            continue
        close = difflib.get_close_matches(upper.removeprefix("NOTIFYQ_").lower(), candidates, 1, 0.75)
        if close:
            found.append((variable, f"NOTIFYQ_{candidates[close[0]].upper()}"))
    return found


# Any URL: a handler's error may quote a Redis, AMQP or HTTP URL with a password in it just as well.
_DSN_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def scrub_secrets(text: str) -> str:
    """`text` with the password of any URL or DSN in it hidden, in URL or key=value form (for log lines
    and stored errors)."""
    if "://" in text:
        text = _DSN_IN_TEXT.sub(lambda m: redact_dsn(m.group()), text)
    if "ssword" in text or "SSWORD" in text:
        text = _KV_PASSWORD.sub(r"\1***", text)
    return text
