"""Hostile settings, task options, DSNs and payloads, refused or hidden before anything runs (issue 12)."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import pytest

from notifyq.client import _dumps
from notifyq.config import (
    Settings,
    check_dsn,
    load_settings,
    misspelled_environment,
    redact_dsn,
    scrub_secrets,
)
from notifyq.errors import ConfigError
from notifyq.registry import Registry
from notifyq.retry import Backoff

_FLOAT_SETTINGS = [name for name, field in Settings.model_fields.items() if field.annotation is float]


def test_every_float_setting_is_covered() -> None:
    assert "retention_seconds" in _FLOAT_SETTINGS and len(_FLOAT_SETTINGS) >= 6


@pytest.mark.parametrize("name", _FLOAT_SETTINGS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", "inf", "1e300"])
def test_no_float_setting_takes_a_non_finite_or_huge_value(name: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"^invalid setting {name}: "):
        load_settings(**{name: value})


@pytest.mark.parametrize("value", ["inf", "nan", "1e300"])
def test_a_non_finite_setting_from_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("NOTIFYQ_RETENTION_SECONDS", value)
    with pytest.raises(ConfigError, match=r"^invalid setting retention_seconds: "):
        load_settings()


def test_finite_settings_still_pass() -> None:
    settings = load_settings(retention_seconds=0, lease_seconds=1.5, poll_interval_seconds=0.05)
    assert (settings.retention_seconds, settings.lease_seconds) == (0.0, 1.5)


@pytest.mark.parametrize(
    "options",
    [
        {"timeout": math.nan},
        {"timeout": math.inf},
        {"timeout": -1},
        {"timeout": 0},
        {"timeout": 10**400},
        {"timeout": True},
        {"timeout": "5"},
        {"max_attempts": 2.5},
        {"max_attempts": True},
        {"max_attempts": 0},
        {"max_attempts": math.nan},
        {"backoff": Backoff(base_seconds=math.nan)},
        {"backoff": Backoff(cap_seconds=math.inf)},
        {"backoff": Backoff(factor=math.inf)},
        {"backoff": Backoff(factor=1e10)},
        {"backoff": Backoff(cap_seconds=1e300)},
    ],
    ids=repr,
)
def test_task_options_must_be_finite_and_in_range(options: dict[str, Any]) -> None:
    registry = Registry()
    with pytest.raises(ValueError, match="task 't': "):
        registry.task("t", **options)
    assert len(registry) == 0


def test_registry_backoff_must_be_finite() -> None:
    with pytest.raises(ValueError, match="Registry: backoff base_seconds"):
        Registry(backoff=Backoff(base_seconds=math.nan))


def test_task_options_in_range_still_pass() -> None:
    registry = Registry(backoff=Backoff(base_seconds=0, cap_seconds=0, jitter=0))
    registry.task("t", timeout=0.001, max_attempts=1000, backoff=Backoff(factor=100.0))(lambda job: None)
    assert registry["t"].timeout == 0.001


def _sync_gen(job: Any) -> Any:
    yield job


async def _async_gen(job: Any) -> Any:
    yield job


class _GenCallable:
    def __call__(self, job: Any) -> Any:
        yield job


@pytest.mark.parametrize(
    "handler",
    [_sync_gen, _async_gen, _GenCallable(), functools.partial(_sync_gen)],
    ids=["sync", "async", "callable", "partial"],
)
def test_a_generator_handler_is_refused_at_registration(handler: Any) -> None:
    registry = Registry()
    with pytest.raises(ValueError, match="handler of task 't' is a generator function"):
        registry.task("t")(handler)
    assert "t" not in registry


@pytest.mark.parametrize(
    ("dsn", "needle"),
    [
        ("host=db user=app password=pw", "key=value connection strings are not supported"),
        ("postgresql+asyncpg://db/app", "postgresql:// or postgres://"),
        ("postgresql://u:p@db:0/app", "port must be a number from 1 to 65535"),
        ("postgresql://u:p@db:65536/app", "port must be a number from 1 to 65535"),
        ("postgresql://u:p@db:\uff15\uff14/app", "port must be a number from 1 to 65535"),
        ("postgresql://db/app?port=x", "port must be a number from 1 to 65535"),
        ("postgresql://u:p@[::1/app", "IPv6"),
        ("postgresql://u:p@::1/app", "IPv6"),
        ("postgresql://u:p@[::1]x/app", "IPv6"),
        ("postgresql://u:a@b@db/app", "percent-encode"),
        ("postgresql://u:a#b@db/app", "percent-encode"),
        ("postgresql://u:a b@db/app", "white space"),
        ("postgresql://db/app?sslmode=on", "sslmode must be one of"),
        ("postgresql://db/app?junk", "malformed query string"),
        ("postgresql://h1,,h2/app", "empty host"),
    ],
)
def test_a_malformed_dsn_is_refused_without_quoting_it(dsn: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=r"^invalid setting dsn: ") as caught:
        load_settings(dsn=dsn)
    assert needle in str(caught.value)
    assert "pw" not in str(caught.value) and "a@b" not in str(caught.value)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:p%40ss@db:5432/app?sslmode=require&application_name=x",
        "postgres://db/app",
        "postgresql:///app",
        "postgresql://[::1]:5432/app",
        "postgresql://h1:5432,h2:5433/app",
        "postgresql://db/app?port=5433",
    ],
)
def test_well_formed_dsns_pass(dsn: str) -> None:
    assert load_settings(dsn=dsn).dsn == dsn


def test_an_empty_dsn_means_unset() -> None:
    assert load_settings(dsn="").dsn is None
    assert check_dsn("postgresql://db:5433/app") and not check_dsn("postgresql://db/app")


def test_pgport_is_checked_only_where_it_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPORT", "abc")
    with pytest.raises(ConfigError, match=r"^invalid environment variable PGPORT: "):
        load_settings()
    with pytest.raises(ConfigError, match="PGPORT"):
        load_settings(dsn="postgresql://db/app")
    assert load_settings(dsn="postgresql://db:5432/app").dsn  # the DSN's port wins: PGPORT is unused


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://postgres:S3cr@etPW@host/db", "postgresql://postgres:***@host/db"),
        ("postgresql://u:123/S3cr@host/db", "postgresql://u:***@host/db"),
        ("postgresql://u:a?S3cr@host/db", "postgresql://u:***@host/db"),
        (
            "postgresql://h/d?password=ab&S3cr&sslmode=require",
            "postgresql://h/d?password=***&***&sslmode=require",
        ),
        ("postgresql://h/d?pass%77ord=S3cr", "postgresql://h/d?pass%77ord=***"),
        ("postgresql://h/d?sslpassword=S3cr", "postgresql://h/d?sslpassword=***"),
        ("postgresql://u@h/d?application_name=a@S3cr", "postgresql://u@h/d?application_name=a@S3cr"),
    ],
)
def test_redaction_takes_the_userinfo_up_to_the_last_at(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown


def test_log_text_is_scrubbed_of_dsn_passwords() -> None:
    text = "cannot connect to postgresql://u:S3cr@et@h/db: refused (password=S3cr2 sslpassword='S3 cr')"
    scrubbed = scrub_secrets(text)
    assert "S3cr" not in scrubbed and "S3 cr" not in scrubbed
    assert scrubbed.startswith("cannot connect to postgresql://u:***@h/db: refused")


def test_misspelled_variables_are_found_with_the_setting_they_are_near() -> None:
    environ = {
        "NOTIFYQ_CONCURENCY": "4",
        "NOTIFYQ_RETENTION": "60",
        "notifyq_loglevel": "debug",
        "NOTIFYQ_DSN": "postgresql://db/app",
        "NOTIFYQ_CONFIG": "x.toml",
        "NOTIFYQ_TEST_ADMIN_DSN": "postgresql://db/postgres",  # the test suite's own: not a typo
        "NOTIFYQ_RECORDER_JOURNAL": "/tmp/j",
        "PATH": "/bin",
    }
    assert misspelled_environment(environ) == [
        ("NOTIFYQ_CONCURENCY", "NOTIFYQ_CONCURRENCY"),
        ("NOTIFYQ_RETENTION", "NOTIFYQ_RETENTION_SECONDS"),
        ("notifyq_loglevel", "NOTIFYQ_LOG_LEVEL"),
    ]


@dataclasses.dataclass
class _Line:
    sku: str
    price: float


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        (math.nan, "payload"),
        ({"a": [1, {"b": math.inf}]}, "payload['a'][1]['b']"),
        ((1, -math.inf), "payload[1]"),
        ({"line": _Line("x", math.nan)}, "payload['line'].price"),
    ],
)
def test_payload_with_non_finite_floats_is_refused_naming_the_field(payload: Any, where: str) -> None:
    with pytest.raises(ValueError, match=r"NaN and Infinity are not JSON") as caught:
        _dumps(payload, "payload")
    assert str(caught.value).startswith(f"{where}: ")


def test_payload_nulls_and_deep_nesting_pass() -> None:
    deep: Any = None
    for _ in range(200):
        deep = [deep]
    assert _dumps({"a": None, "b": 1.5, "deep": deep}, "payload").startswith('{"a":null,"b":1.5,')
    assert _dumps(None, "payload") == "{}"


def test_log_level_and_format_take_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFYQ_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("NOTIFYQ_LOG_FORMAT", " JSON ")
    settings = load_settings()
    assert (settings.log_level, settings.log_format) == ("debug", "json")
    with pytest.raises(ConfigError, match="log_level"):
        load_settings(log_level="LOUD")
