"""The built-in task `notifyq.http`: what its payload may say, and what each answer makes of the job.

A producer in any language enqueues a job of task `notifyq.http` whose payload names the request:

    {"url": "https://app.example/hooks/invoice", "method": "POST", "headers": {"x-kind": "invoice"},
     "body": {"invoice": 42}, "timeout_seconds": 10}

or, so that secrets never sit in job rows, an endpoint an operator configured (its URL, signing secret and
headers): `{"endpoint": "billing", "body": {...}}`. The daemon calls it when the job runs, signed the
Standard Webhooks way (signing.py), to an address the SSRF rule allows (addresses.py, sender.py).

What an answer makes of the job (`decide`): 2xx succeeds, with the status and the start of the reply as
the job's result; 408, 429, 5xx, a timeout or a connection error retry on the webhook schedule below;
429 and 503 with a `Retry-After` wait that long without spending the attempt; a redirect (never
followed) and any other 4xx fail at once, saying why; 410 Gone also disables the endpoint it came from.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from notifyq.callbacks.sender import Reply

TASK = "notifyq.http"
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 300.0
# After the first try: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (Svix's published schedule,
# docs.svix.com/retries): eight tries over about 28 hours, each delay give or take a fifth.
RETRY_DELAYS = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
DEFAULT_MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
JITTER = 0.2
MAX_RETRY_AFTER = 86400.0  # a Retry-After further off than a day is taken as a day
# A Retry-After is honoured without spending an attempt (a snooze), but each wait is at least the first
# retry step, growing by half with every wait already made, up to an hour; after MAX_WAITS waits the
# job spends attempts like any failure. So "Retry-After: 0" for ever costs about 73 calls over 2.4 days
# and then the retry schedule, not a call every few seconds for as long as the receiver likes.
MIN_RETRY_AFTER = RETRY_DELAYS[0]
WAIT_GROWTH = 1.5
MAX_WAIT_FLOOR = 3600.0
MAX_WAITS = 72
RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
# Set by notifyq itself, or meaningless for one request: a payload may not set them.
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer",
     "proxy-authorization", "proxy-connection", "webhook-id", "webhook-timestamp", "webhook-signature"}
)  # fmt: skip
MAX_HEADERS = 50
MAX_HEADER_BYTES = 8192


class PayloadError(ValueError):
    """A callback payload that cannot be sent; the message names the field and the rule."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A destination an operator configured: where, signed with what, with which headers."""

    name: str
    url: str
    keys: tuple[bytes, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Call:
    """One callback as the payload describes it, checked."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    timeout: float
    endpoint: str | None  # the configured endpoint it goes to, if any


def parse(payload: Any, endpoints: Mapping[str, Endpoint]) -> Call:
    """The call a `notifyq.http` payload describes; a PayloadError names what is wrong."""
    if not isinstance(payload, dict):
        raise PayloadError(f"payload: must be a JSON object (got {type(payload).__name__})")
    unknown = set(payload) - {"url", "endpoint", "method", "headers", "body", "timeout_seconds"}
    if unknown:
        raise PayloadError(f"payload: unknown field {sorted(unknown)[0]!r}")
    url, name = payload.get("url"), payload.get("endpoint")
    if (url is None) == (name is None):
        raise PayloadError("payload: give exactly one of url and endpoint")
    endpoint = None
    if name is not None:
        if not isinstance(name, str) or name not in endpoints:
            raise PayloadError(f"endpoint: no endpoint {name!r} is configured")
        endpoint = endpoints[name]
        url = endpoint.url
    elif not isinstance(url, str) or not 1 <= len(url) <= 2048:
        raise PayloadError("url: must be a string of 1 to 2048 characters")
    method = payload.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise PayloadError(f"method: must be one of {', '.join(sorted(METHODS))}")
    headers = check_headers(payload.get("headers", {}))
    if endpoint is not None:
        headers.update(endpoint.headers)  # the operator's headers win: a job cannot replace its credentials
    body, kind = _body(payload.get("body"))
    if kind is not None:
        headers.setdefault("content-type", kind)
    timeout = payload.get("timeout_seconds", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT:
        raise PayloadError(f"timeout_seconds: must be a number above 0 and at most {MAX_TIMEOUT:.0f}")
    return Call(method.upper(), url, headers, body, float(timeout), name)


def check_headers(given: Any) -> dict[str, str]:
    """Headers a payload or an endpoint may set, names lower-cased; a PayloadError names a bad one."""
    if not isinstance(given, dict):
        raise PayloadError("headers: must be an object of names to string values")
    if len(given) > MAX_HEADERS:
        raise PayloadError(f"headers: at most {MAX_HEADERS}")
    out: dict[str, str] = {}
    for name, value in given.items():
        if not isinstance(value, str):
            raise PayloadError(f"headers: the value of {name!r} must be a string")
        if not name or not all(33 <= ord(c) < 127 and c not in '()<>@,;:\\"/[]?={}' for c in name):
            raise PayloadError(f"headers: {name!r} is not a header name")
        if any(not (32 <= ord(c) < 127 or c == "\t") for c in value):
            raise PayloadError(f"headers: the value of {name!r} must be printable ASCII")
        if name.lower() in RESERVED_HEADERS:
            raise PayloadError(f"headers: {name!r} is set by notifyq")
        out[name.lower()] = value
    if sum(len(k) + len(v.encode()) for k, v in out.items()) > MAX_HEADER_BYTES:
        raise PayloadError(f"headers: at most {MAX_HEADER_BYTES} bytes in all")
    return out


def _body(body: Any) -> tuple[bytes, str | None]:
    """The bytes sent, and their content type: text as it is, anything else as JSON; none for null."""
    if body is None:
        return b"", None
    if isinstance(body, str):
        return body.encode(), "text/plain; charset=utf-8"
    if _overflows(body):  # orjson would write null in its place: the receiver would get other data
        raise PayloadError("body: a number beyond what a double holds (about 1.8e308) cannot be sent as JSON")
    try:
        return orjson.dumps(body), "application/json"
    except TypeError:  # an integer beyond 64 bits (jsonb keeps 1e20 as one), nesting past 254 levels
        pass
    try:  # the standard library writes any integer exactly, and nests as deep as Python recurses
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(), (
            "application/json"
        )
    except (TypeError, ValueError, RecursionError) as exc:
        raise PayloadError(f"body: cannot be sent as JSON: {type(exc).__name__}") from None


def _overflows(value: Any) -> bool:
    """Whether a decoded JSON value holds a number that became infinite (jsonb stores 1e400 exactly)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


@dataclass(frozen=True, slots=True)
class Decision:
    """What an answer makes of the job: exactly one of its fields is set."""

    result: dict[str, Any] | None = None  # success: the job's result
    retry_in: float | None = None  # a failed try, spending the attempt: retry after this many seconds
    wait: float | None = None  # not now (Retry-After): again after this many seconds, attempt given back
    fail: str | None = None  # fails at once, for this reason
    disable_endpoint: bool = False  # 410 Gone from a configured endpoint


def backoff(attempt: int, rng: random.Random | None = None) -> float:
    """The delay after try number `attempt` (from 1) failed, with jitter so that a receiver's outage
    does not bring every retry back at one instant."""
    base = RETRY_DELAYS[min(max(attempt, 1), len(RETRY_DELAYS)) - 1]
    return base * (1 + JITTER * (2 * (rng or random).random() - 1))


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (a number of seconds or an HTTP date), or None if unreadable."""
    if value is None:
        return None
    text = value.strip()
    if re.fullmatch(r"[0-9]{1,15}", text):  # ASCII digits only: str.isdigit() takes "²" too
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):  # the receiver's text: anything
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max((when - (now or datetime.now(UTC))).total_seconds(), 0.0), MAX_RETRY_AFTER)


def wait_floor(waits: int) -> float:
    """The shortest wait a Retry-After gets after `waits` earlier ones."""
    return min(MIN_RETRY_AFTER * WAIT_GROWTH ** min(waits, 64), MAX_WAIT_FLOOR)


def decide(reply: Reply, attempt: int, call: Call, waits: int = 0) -> Decision:
    """What the receiver's answer makes of the job, which the receiver had put off `waits` times."""
    status = reply.status
    if 200 <= status < 300:
        return Decision(result={"status": status, "body": reply.excerpt})
    said = f"HTTP {status} from {call.method} {where(call)}: {reply.excerpt[:200]}".rstrip(": ")
    if status in (429, 503):
        seconds = retry_after(reply.headers.get("retry-after"))
        if seconds is not None and waits < MAX_WAITS:
            return Decision(wait=max(seconds, wait_floor(waits)))
        if seconds is not None:  # waited enough for free: a try like any other, no sooner than asked
            return Decision(retry_in=max(seconds, backoff(attempt)))
    if status in RETRY_STATUSES:
        return Decision(retry_in=backoff(attempt))
    if 300 <= status < 400:
        to = "elsewhere" if call.endpoint is not None else reply.headers.get("location", "no Location")
        return Decision(fail=f"HTTP {status} redirect to {to} from {where(call)}: redirects are not followed")
    if status == 410 and call.endpoint is not None:
        return Decision(fail=f"{said}; endpoint {call.endpoint!r} disabled", disable_endpoint=True)
    return Decision(fail=said)


def where(call: Call) -> str:
    """How messages name a call's destination: a configured endpoint by its name, never its URL (a URL
    can carry a secret, such as a chat service's webhook token)."""
    return f"endpoint {call.endpoint!r}" if call.endpoint is not None else call.url[:300]
