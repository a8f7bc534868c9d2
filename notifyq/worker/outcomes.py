"""Classify one attempt into an Outcome: pure functions, no I/O.

Everything written back to the row is made safe for Postgres here, so that no handler's return value or
exception can make the completer's statement fail: text loses NUL characters and unpaired surrogates
(neither fits a text or jsonb value), results that are not small JSON are dropped, and delays are finite
and capped.
"""

from __future__ import annotations

import math
import traceback
from typing import Any

import orjson

from notifyq.models import Claim, JobState, Outcome, OutcomeKind
from notifyq.registry import TaskSpec

MAX_ERROR_CHARS = 4000
MAX_RESULT_BYTES = 64 * 1024
MAX_DELAY_SECONDS = 10 * 365 * 86400.0  # far enough for any sane retry; timestamptz would overflow later


def clean_text(text: str) -> str:
    """Text Postgres accepts: no NUL, no unpaired surrogates, bounded length."""
    text = text.replace("\x00", "")
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:MAX_ERROR_CHARS]


def clean_delay(seconds: float | None) -> float:
    if seconds is None or math.isnan(seconds):
        return 0.0
    return min(max(float(seconds), 0.0), MAX_DELAY_SECONDS)


def encode_result(value: Any) -> str | None:
    """The handler's return value as JSON text when it is JSON, small, and storable in jsonb."""
    if value is None:
        return None
    try:
        encoded = orjson.dumps(value)
    except (TypeError, ValueError):
        return None
    if not 0 < len(encoded) <= MAX_RESULT_BYTES or b"\\u0000" in encoded:
        return None  # jsonb refuses \u0000; a result is a convenience, never worth failing the job
    return encoded.decode()


def format_error(exc: BaseException) -> str:
    """Type, message and the innermost frames: enough to debug, bounded in size."""
    try:
        message = str(exc)
    except Exception:  # an exception whose __str__ raises must not take the daemon with it
        message = "<unprintable>"
    frames = traceback.format_tb(exc.__traceback__, limit=-5)
    return clean_text(f"{type(exc).__name__}: {message}\n" + "".join(frames))


def make(
    claim: Claim,
    kind: OutcomeKind,
    state: JobState,
    *,
    delay: float = 0.0,
    refund: int = 0,
    error: str | None = None,
    result: str | None = None,
) -> Outcome:
    return Outcome(
        job_id=claim.job.id,
        lease_token=claim.lease_token,
        kind=kind,
        state=state,
        delay=clean_delay(delay),
        refund=refund,
        error=None if error is None else clean_text(error),
        result=result,
        queue=claim.job.queue,
        task=claim.job.task,
    )


def succeeded(claim: Claim, value: Any) -> Outcome:
    job = claim.job
    if value is None:  # the common case, without make()'s cleaning of fields it leaves at defaults
        return Outcome(
            job.id,
            claim.lease_token,
            OutcomeKind.SUCCEEDED,
            JobState.SUCCEEDED,
            queue=job.queue,
            task=job.task,
        )
    return make(claim, OutcomeKind.SUCCEEDED, JobState.SUCCEEDED, result=encode_result(value))


def failed(
    claim: Claim, spec: TaskSpec | None, kind: OutcomeKind, error: str, delay: float | None = None
) -> Outcome:
    """An attempt that failed: retry after a backoff while attempts remain, else `failed`."""
    job = claim.job
    if spec is None or job.attempt >= job.max_attempts:
        final = kind if kind is OutcomeKind.TIMED_OUT else OutcomeKind.FAILED
        return make(claim, final, JobState.FAILED, error=error)
    wait = spec.backoff.delay(job.attempt) if delay is None else delay
    return make(claim, kind, JobState.QUEUED, delay=wait, error=error)


def discarded(claim: Claim, reason: str) -> Outcome:
    return make(claim, OutcomeKind.DISCARDED, JobState.FAILED, error=f"Discard: {reason}")


def snoozed(claim: Claim, seconds: float) -> Outcome:
    return make(claim, OutcomeKind.SNOOZED, JobState.QUEUED, delay=seconds, refund=1)


def released(claim: Claim) -> Outcome:
    """Cancelled while running, at shutdown: back to the queue at once, and the attempt is given back."""
    return make(claim, OutcomeKind.RELEASED, JobState.QUEUED, refund=1)


def unstarted(claim: Claim) -> Outcome:
    """Given back from the prefetch buffer before it ran (the jobs turned slow, or shutdown): back to the
    queue, the attempt given back, and not counted as completed, since it never started."""
    return make(claim, OutcomeKind.UNSTARTED, JobState.QUEUED, refund=1)


def lease_lost(claim: Claim) -> Outcome:
    """Another daemon owns the job now: nothing is written for this one."""
    return make(claim, OutcomeKind.LEASE_LOST, JobState.RUNNING)
