"""The dispatcher's decisions, as pure functions: when to claim, which mode a claim leaves it in, and
how long to wait before the next look."""

from __future__ import annotations

import math

import pytest

from notifyq.wakeup import WakeSource
from notifyq.worker.dispatcher import (
    CONTENDED_RETRY_SECONDS,
    IDLE_RECHECK_SECONDS,
    STREAM_POLL_SECONDS,
    Mode,
    mode_after,
    should_claim,
    wait_plan,
)

pytestmark = pytest.mark.timeout(10)


def test_a_full_claim_or_busy_runners_keep_the_daemon_busy() -> None:
    assert mode_after(claimed=50, wanted=50, hungry=True, streaming=False) is Mode.BUSY
    assert mode_after(claimed=3, wanted=50, hungry=False, streaming=False) is Mode.BUSY


def test_a_short_claim_that_found_several_is_a_stream_and_one_empty_look_ends_it() -> None:
    assert mode_after(claimed=2, wanted=50, hungry=True, streaming=False) is Mode.STREAM
    assert mode_after(claimed=1, wanted=50, hungry=True, streaming=False) is Mode.IDLE
    assert mode_after(claimed=1, wanted=50, hungry=True, streaming=True) is Mode.STREAM
    assert mode_after(claimed=0, wanted=50, hungry=True, streaming=True) is Mode.IDLE


def test_claims_only_when_enough_is_wanted_and_a_runner_is_hungry_or_a_slot_freed() -> None:
    assert should_claim(10, 5, hungry=True, sources=set())
    assert not should_claim(4, 5, hungry=True, sources=set())
    # Every runner busy: a notification or a poll does not refill the buffer, a freed slot does.
    assert not should_claim(10, 5, hungry=False, sources={WakeSource.NOTIFY, WakeSource.POLL})
    assert should_claim(10, 5, hungry=False, sources={WakeSource.SLOT})


def test_busy_waits_for_the_safety_poll() -> None:
    assert wait_plan(poll=10, mode=Mode.BUSY, due_in=1.0, just_idle=True, stale_in=None) == (
        10,
        WakeSource.POLL,
    )


def test_a_stream_looks_again_shortly() -> None:
    assert wait_plan(poll=10, mode=Mode.STREAM, due_in=math.inf, just_idle=False, stale_in=None) == (
        STREAM_POLL_SECONDS,
        WakeSource.TIMER,
    )


def test_idle_waits_for_the_next_scheduled_job_or_the_poll() -> None:
    assert wait_plan(poll=10, mode=Mode.IDLE, due_in=math.inf, just_idle=False, stale_in=None) == (
        10,
        WakeSource.POLL,
    )
    assert wait_plan(poll=10, mode=Mode.IDLE, due_in=3.0, just_idle=False, stale_in=None) == (
        3.0,
        WakeSource.TIMER,
    )
    # A job already due that SKIP LOCKED hid (another daemon is claiming it): look again soon, not at once.
    assert wait_plan(poll=10, mode=Mode.IDLE, due_in=-1.0, just_idle=False, stale_in=None) == (
        CONTENDED_RETRY_SECONDS,
        WakeSource.TIMER,
    )


def test_just_idle_rechecks_within_the_race_window_bound() -> None:
    timeout, reason = wait_plan(poll=10, mode=Mode.IDLE, due_in=math.inf, just_idle=True, stale_in=None)
    assert (timeout, reason) == (IDLE_RECHECK_SECONDS, WakeSource.TIMER)
    assert IDLE_RECHECK_SECONDS < 1.0


def test_a_buffered_job_turning_stale_shortens_any_wait() -> None:
    for mode in Mode:
        timeout, reason = wait_plan(poll=10, mode=mode, due_in=math.inf, just_idle=False, stale_in=0.004)
        assert timeout == min(0.004, STREAM_POLL_SECONDS) and reason is WakeSource.TIMER
    assert wait_plan(poll=10, mode=Mode.BUSY, due_in=math.inf, just_idle=False, stale_in=-2.0)[0] == 0.0
