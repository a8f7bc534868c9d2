"""Classifying one attempt into an outcome: pure functions, no database."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime

import pytest

from notifyq.errors import MAX_DELAY_SECONDS, Discard, Retry, Snooze
from notifyq.models import Claim, Job, JobState, OutcomeKind, ResultDropped
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


def test_success_stores_small_json_results_only_and_says_why_it_dropped_one() -> None:
    def stored(value: object) -> tuple[str | None, ResultDropped | None]:
        outcome, dropped = outcomes.from_value(_claim(), value)
        assert outcome.state is JobState.SUCCEEDED
        return outcome.result, dropped

    assert stored(None) == (None, None)
    assert stored({"rows": 3}) == ('{"rows":3}', None)
    assert stored(object()) == (None, ResultDropped.NOT_JSON)
    assert stored({1, 2}) == (None, ResultDropped.NOT_JSON)
    assert stored("x" * (outcomes.MAX_RESULT_BYTES + 1)) == (None, ResultDropped.TOO_LARGE)
    assert stored("a\x00b") == (None, ResultDropped.NOT_STORABLE)  # jsonb cannot hold \u0000


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
    assert outcomes.clean_delay(math.inf) == MAX_DELAY_SECONDS
    assert outcomes.clean_delay("10") == 0.0  # a delay replaced after Retry checked it
    assert outcomes.clean_text("a\x00b\ud800") == "ab?"
    assert len(outcomes.clean_text("x" * 10_000)) == outcomes.MAX_ERROR_CHARS


@pytest.mark.parametrize("raised", [ValueError, SystemExit, KeyboardInterrupt, GeneratorExit])
def test_an_exception_whose_str_raises_anything_is_still_a_failed_attempt(raised: type) -> None:
    class Weird(Exception):
        def __str__(self) -> str:
            raise raised("no")

    outcome = outcomes.from_exception(_claim(), _spec(), Weird())
    assert (outcome.state, outcome.kind) == (JobState.QUEUED, OutcomeKind.RETRIED)
    assert outcome.error is not None
    assert outcome.error.startswith(f"Weird: <unprintable: its __str__ raised {raised.__name__}>")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Snooze("10"), "Snooze(seconds) must be a number of seconds or a timedelta (got str)"),
        (lambda: Snooze(math.nan), "Snooze(seconds) must be between 0 and"),
        (lambda: Snooze(-1), "Snooze(seconds) must be between 0 and"),
        (lambda: Snooze(10**400), "Snooze(seconds) must be between 0 and"),
        (lambda: Snooze(True), "Snooze(seconds) must be a number"),
        (lambda: Retry(delay=math.inf), "Retry(delay) must be between 0 and"),
        (lambda: Retry(delay="soon"), "Retry(delay) must be a number"),
        (lambda: Retry(42), "Retry(reason) must be a str (got int)"),  # type: ignore[arg-type]
        (lambda: Discard(b"x"), "Discard(reason) must be a str (got bytes)"),  # type: ignore[arg-type]
    ],
)
def test_job_control_refuses_bad_arguments_when_made(make: object, message: str) -> None:
    with pytest.raises((TypeError, ValueError)) as caught:
        make()  # type: ignore[operator]
    assert str(caught.value).startswith(message)


def test_job_control_takes_timedeltas() -> None:
    from datetime import timedelta

    assert Snooze(timedelta(minutes=2)).seconds == 120.0
    assert Retry("later", delay=timedelta(seconds=1.5)).delay == 1.5


def test_a_reason_replaced_after_it_was_checked_is_still_described() -> None:
    class Bad:
        def __str__(self) -> str:
            raise SystemExit(3)

    retry = Retry("x")
    retry.reason = Bad()  # type: ignore[assignment]
    outcome = outcomes.from_exception(_claim(), _spec(), retry)
    assert outcome.error == "Retry: <unprintable reason: its __str__ raised SystemExit>"
