"""Classify one attempt into an Outcome: pure functions, no I/O.

Everything written back to the row is made safe for Postgres here, so that no handler's return value or
exception can make the completer's statement fail: text loses NUL characters and unpaired surrogates
(neither fits a text or jsonb value), results that are not small JSON are dropped (and the caller told
why, to log and count it), and delays are finite and capped. Whatever a handler raises or returns ends as
an outcome for its job: an exception that cannot even describe itself (its __str__ raises, even
SystemExit) is a failed attempt with what could be said about it.
"""

from __future__ import annotations

import math
import traceback
from typing import Any

import orjson

from notifyq.config import scrub_secrets
from notifyq.errors import MAX_DELAY_SECONDS, Discard, Retry, Snooze
from notifyq.models import Claim, JobState, Outcome, OutcomeKind, ResultDropped
from notifyq.registry import TaskSpec

MAX_ERROR_CHARS = 4000
MAX_RESULT_BYTES = 64 * 1024


def clean_text(text: str) -> str:
    """Text Postgres accepts: no NUL, no unpaired surrogates, bounded length."""
    text = text.replace("\x00", "")
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:MAX_ERROR_CHARS]


def clean_delay(seconds: Any) -> float:
    """A delay the database accepts. Retry and Snooze check theirs when made; this is the backstop for
    one changed afterwards."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or math.isnan(seconds):
        return 0.0
    return min(max(float(seconds), 0.0), MAX_DELAY_SECONDS)


def encode_result(value: Any) -> tuple[str | None, ResultDropped | None]:
    """The handler's return value as JSON text when it is JSON, small, and storable in jsonb; else None
    and why it was dropped (a result is a convenience, never worth failing the job)."""
    if value is None:
        return None, None
    try:
        encoded = orjson.dumps(value)
    except Exception:
        return None, ResultDropped.NOT_JSON
    if len(encoded) > MAX_RESULT_BYTES:
        return None, ResultDropped.TOO_LARGE
    if b"\\u0000" in encoded:
        return None, ResultDropped.NOT_STORABLE
    return encoded.decode(), None


def describe_error(exc: BaseException) -> str:
    """`Type: message`, even for an exception whose __str__ raises (whatever it raises)."""
    try:
        message = str(exc)
    except BaseException as bad:  # even SystemExit or CancelledError: describing must not end the daemon
        message = f"<unprintable: its __str__ raised {type(bad).__name__}>"
    return clean_text(scrub_secrets(f"{type(exc).__name__}: {message}"))


def format_error(exc: BaseException) -> str:
    """Type, message and the innermost frames: enough to debug, bounded in size."""
    try:
        frames = "".join(traceback.format_tb(exc.__traceback__, limit=-5))
    except BaseException:
        frames = ""
    return clean_text(describe_error(exc) + "\n" + scrub_secrets(frames))


def from_exception(claim: Claim, spec: TaskSpec | None, exc: BaseException) -> Outcome:
    """What the handler raised, as this attempt's outcome."""
    if isinstance(exc, Snooze):
        return snoozed(claim, exc.seconds)
    if isinstance(exc, Discard):
        return discarded(claim, _reason(exc.reason))
    if isinstance(exc, Retry):
        return failed(claim, spec, OutcomeKind.RETRIED, f"Retry: {_reason(exc.reason)}", exc.delay)
    return failed(claim, spec, OutcomeKind.RETRIED, format_error(exc))


def from_value(claim: Claim, value: Any) -> tuple[Outcome, ResultDropped | None]:
    """What the handler returned, as this attempt's outcome, and why its result was dropped, if it was."""
    if value is None:
        return succeeded(claim), None
    result, dropped = encode_result(value)
    return make(claim, OutcomeKind.SUCCEEDED, JobState.SUCCEEDED, result=result), dropped


def _reason(reason: Any) -> str:
    """Retry and Discard keep a str; this guards one replaced after they were made."""
    if isinstance(reason, str):
        return reason
    try:
        return str(reason)
    except BaseException as bad:
        return f"<unprintable reason: its __str__ raised {type(bad).__name__}>"


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


def succeeded(claim: Claim) -> Outcome:
    """A success with no result: the common case, without make()'s cleaning of fields at defaults."""
    job = claim.job
    return Outcome(
        job.id,
        claim.lease_token,
        OutcomeKind.SUCCEEDED,
        JobState.SUCCEEDED,
        queue=job.queue,
        task=job.task,
    )


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
    """Given back from the prefetch buffer before it ran (the jobs turned slow, its lease went stale,
    or shutdown): back to the queue, and not counted as completed. Its attempt is given back if it was
    counted (a begin whose answer was lost); record_outcomes refunds only started rows."""
    return make(claim, OutcomeKind.UNSTARTED, JobState.QUEUED, refund=1)


def lease_lost(claim: Claim) -> Outcome:
    """Another daemon owns the job now: nothing is written for this one."""
    return make(claim, OutcomeKind.LEASE_LOST, JobState.RUNNING)
