"""Pure pieces: settings, DSN redaction, query loading, the registry, the public surface."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import notifyq
from notifyq import queries
from notifyq.config import load_settings, redact_dsn
from notifyq.errors import ConfigError
from notifyq.registry import Registry
from notifyq.retry import Backoff

pytestmark = pytest.mark.timeout(10)


def test_public_surface() -> None:
    assert sorted(notifyq.__all__) == sorted(
        [
            "Backoff",
            "Context",
            "Discard",
            "Job",
            "JobState",
            "NewJob",
            "NotifyqError",
            "Registry",
            "Retry",
            "Snooze",
            "cancel",
            "enqueue",
            "enqueue_many",
        ]
    )
    for name in notifyq.__all__:
        assert getattr(notifyq, name) is not None
    assert (Path(notifyq.__file__).parent / "py.typed").exists()


def test_backoff_grows_caps_and_never_comes_early() -> None:
    b = Backoff(base_seconds=1, factor=2, cap_seconds=60, jitter=0.25)
    assert [b.floor(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert b.floor(50) == 60 and b.floor(10_000) == 60
    rng = random.Random(7)
    for attempt in range(1, 30):
        d = b.delay(attempt, rng)
        assert b.floor(attempt) <= d <= b.floor(attempt) * 1.25
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=2)


def test_settings_precedence_flags_env_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "notifyq.toml"
    toml.write_text('concurrency = 3\nqueues = ["a", "b"]\nlease_seconds = 12\npoll_interval_seconds = 9\n')
    monkeypatch.setenv("NOTIFYQ_LEASE_SECONDS", "20")
    monkeypatch.setenv("NOTIFYQ_QUEUES", "x,y")
    s = load_settings(toml, poll_interval_seconds=2.5)
    assert s.concurrency == 3  # file
    assert s.lease_seconds == 20  # env over file
    assert s.queues == ("x", "y")  # comma list from env
    assert s.poll_interval_seconds == 2.5  # flag over all
    assert s.listen_dsn is None and s.effective_listen_dsn is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"concurrency": 0}, "invalid setting concurrency: Input should be greater than or equal to 1"),
        ({"queues": "Bad!"}, "invalid setting queues: 'Bad!' must match"),
        ({"app": "nocolon"}, "invalid setting app: must look like MODULE:ATTRIBUTE"),
        ({"http_address": "nowhere"}, "invalid setting http_address: must be HOST:PORT"),
        ({"log_format": "xml"}, "invalid setting log_format:"),
        ({"prefetch_max": 2001}, "invalid setting prefetch_max: Input should be less than or equal to 2000"),
    ],
)
def test_bad_settings_name_the_setting(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_unknown_toml_key_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("concurrancy = 4\n")
    with pytest.raises(ConfigError, match="invalid setting concurrancy: unknown setting"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app"),
        (
            "postgresql://app@db/app?password=s3cret&sslmode=require",
            "postgresql://app@db/app?password=***&sslmode=require",
        ),
        ("host=db user=app password=s3cret dbname=app", "host=db user=app password=*** dbname=app"),
        ("host=db password='s3 cret' dbname=app", "host=db password=*** dbname=app"),
        ("postgresql://db/app", "postgresql://db/app"),
    ],
)
def test_redact_dsn(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown
    assert "s3cret" not in redact_dsn(dsn) and "s3 cret" not in redact_dsn(dsn)


def test_settings_repr_hides_the_password() -> None:
    s = load_settings(dsn="postgresql://u:hunter2@h/d")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)


def test_every_named_query_loads() -> None:
    loaded = queries.load()
    for name in (
        "claim_jobs",
        "record_outcomes",
        "extend_leases",
        "rescue_expired",
        "enqueue",
        "take_idle_locks",
        "migrate_lock",
        "ledger_bootstrap",
    ):
        assert loaded[name].strip()
    assert all("-- name:" not in sql for sql in loaded.values())
    with pytest.raises(ValueError, match="duplicate"):
        queries.parse("-- name: a :one\nSELECT 1;\n-- name: a :one\nSELECT 2;\n")


def test_registry_validates_its_options() -> None:
    r = Registry()

    @r.task("ok", max_attempts=3, timeout=1)
    async def ok(job: notifyq.Job) -> None: ...

    assert "ok" in r and r["ok"].is_async and r["ok"].max_attempts == 3
    with pytest.raises(ValueError, match="registered twice"):
        r.task("ok")(ok)
    with pytest.raises(ValueError, match="max_attempts"):
        r.task("x", max_attempts=0)
    with pytest.raises(ValueError, match="timeout"):
        r.task("x", timeout=0)
    with pytest.raises(ValueError, match="task name"):
        r.task("")


def test_every_mutation_edit_applies_to_the_code_as_it_is() -> None:
    """The mutation gate's entries name exact text; a change that moves it makes the gate error in CI
    (minutes later). Checked here, in memory, in milliseconds."""
    from tests.mutations.__main__ import ROOT, mutated
    from tests.mutations.catalogue import CATALOGUE

    problems = []
    for mutation in CATALOGUE:
        try:
            mutated(ROOT, mutation)
        except LookupError as exc:
            problems.append(str(exc))
    assert problems == []


def test_no_mutation_edits_a_function_a_later_migration_replaced() -> None:
    """A mutation of a function's text in a migration that a later migration redefines changes nothing
    live, and survives (the guard's entries did, twice): they must edit the latest definition."""
    import re

    from tests.mutations.__main__ import ROOT
    from tests.mutations.catalogue import CATALOGUE

    migrations = sorted((ROOT / "sql" / "migrations").glob("*.sql"))
    stale = []
    for mutation in CATALOGUE:
        for edit in mutation.edits:
            path = ROOT / edit.path
            if path not in migrations:
                continue
            text = path.read_text()
            before = text[: text.index(edit.old)]
            created = list(re.finditer(r"CREATE (?:OR REPLACE )?FUNCTION ([\w.]+)\(", before))
            if not created or "$$;" in before[created[-1].start() :]:
                continue  # not inside a function body
            name = created[-1].group(1)
            later = [m for m in migrations if m.name > path.name and f"FUNCTION {name}(" in m.read_text()]
            if later:
                stale.append(f"{mutation.name}: {name} is redefined in {later[-1].name}")
    assert stale == []
