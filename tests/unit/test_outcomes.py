"""Classifying one attempt into an outcome: pure functions, no database."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime

import pytest

from notifyq.models import Claim, Job, JobState, OutcomeKind
from notifyq.registry import Registry
from notifyq.retry import Backoff
from notifyq.worker import outcomes

pytestmark = pytest.mark.timeout(10)


def _claim(attempt: int = 1, max_attempts: int = 3) -> Claim:
    now = datetime.now(UTC)
    token = uuid.uuid4()
    return Claim(Job(7, "q", "t", {}, attempt, max_attempts, 0, now, now, token), token)


def _spec():  # type: ignore[no-untyped-def]
    r = Registry()

    @r.task("t", backoff=Backoff(base_seconds=2, factor=2, cap_seconds=60, jitter=0))
    async def t(job: Job) -> None: ...

    return r["t"]


def test_success_stores_small_json_results_only() -> None:
    assert outcomes.succeeded(_claim(), None).result is None
    assert outcomes.succeeded(_claim(), {"rows": 3}).result == '{"rows":3}'
    assert outcomes.succeeded(_claim(), object()).result is None  # not JSON
    assert outcomes.succeeded(_claim(), "x" * (outcomes.MAX_RESULT_BYTES + 1)).result is None
    assert outcomes.succeeded(_claim(), "a\x00b").result is None  # jsonb cannot hold \u0000


def test_a_failure_retries_with_backoff_until_attempts_are_spent() -> None:
    retry = outcomes.failed(_claim(attempt=2), _spec(), OutcomeKind.RETRIED, "boom")
    assert (retry.state, retry.kind, retry.delay, retry.refund) == (
        JobState.QUEUED,
        OutcomeKind.RETRIED,
        4.0,
        0,
    )
    last = outcomes.failed(_claim(attempt=3), _spec(), OutcomeKind.RETRIED, "boom")
    assert (last.state, last.kind) == (JobState.FAILED, OutcomeKind.FAILED)
    timed_out = outcomes.failed(_claim(attempt=3), _spec(), OutcomeKind.TIMED_OUT, "slow")
    assert timed_out.kind is OutcomeKind.TIMED_OUT


def test_snooze_release_and_unstarted_give_the_attempt_back() -> None:
    assert outcomes.snoozed(_claim(), 30).refund == 1
    assert outcomes.released(_claim()).refund == 1
    assert outcomes.unstarted(_claim()).refund == 1
    assert outcomes.discarded(_claim(), "no").refund == 0


def test_delays_and_errors_are_made_safe_for_postgres() -> None:
    assert outcomes.clean_delay(math.nan) == 0.0
    assert outcomes.clean_delay(-5) == 0.0
    assert outcomes.clean_delay(math.inf) == outcomes.MAX_DELAY_SECONDS
    assert outcomes.clean_text("a\x00b\ud800") == "ab?"
    assert len(outcomes.clean_text("x" * 10_000)) == outcomes.MAX_ERROR_CHARS


def test_an_exception_whose_str_raises_is_still_described() -> None:
    class Weird(Exception):
        def __str__(self) -> str:
            raise ValueError("no")

    assert outcomes.format_error(Weird()).startswith("Weird: <unprintable>")
