"""The handler of the built-in task `notifyq.http`, which every daemon serves (with or without --app).

It turns the payload into a call (task.py), refuses what the SSRF rule refuses (addresses.py), signs the
request (signing.py), sends it (sender.py) and makes the answer the job's outcome: a result, a retry on
the webhook schedule, a wait that spends no attempt, or a failure that says why. Nothing here raises
anything but those outcomes, whatever the payload or the receiver does.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from notifyq import logs
from notifyq.callbacks import signing
from notifyq.callbacks.addresses import Allowed, Refused
from notifyq.callbacks.lookup import LookupBusy
from notifyq.callbacks.sender import Sender
from notifyq.callbacks.task import (
    DEFAULT_MAX_ATTEMPTS,
    MAX_TIMEOUT,
    TASK,
    Call,
    Endpoint,
    PayloadError,
    backoff,
    decide,
    parse,
    where,
)
from notifyq.config import Settings
from notifyq.errors import Discard, Retry, Snooze
from notifyq.metrics import Metrics
from notifyq.models import Job
from notifyq.registry import Registry

# A callback whose lookup found every lookup thread busy waits this long (up to twice, spread) without
# spending an attempt.
LOOKUP_BUSY_WAIT = 10.0


@dataclass(slots=True)
class Answered:
    """Whether the receiver answered over HTTP (set by the call, read by the metrics)."""

    yes: bool = False


def endpoints_from(settings: Settings) -> dict[str, Endpoint]:
    return {
        name: Endpoint(name, e.url, tuple(signing.parse_secrets(e.secret)), dict(e.headers))
        for name, e in settings.endpoints.items()
    }


class CallbackTask:
    """`notifyq.http`'s handler; one per daemon, sharing one HTTP client."""

    def __init__(self, settings: Settings, user_agent: str) -> None:
        self.endpoints = endpoints_from(settings)
        self.keys = tuple(signing.parse_secrets(settings.callback_secret))
        self.allowed = Allowed.parse(settings.callback_allow)
        self.user_agent = user_agent
        self._sender: Sender | None = None
        self.disabled: Callable[[str], Any] | None = None  # async (name) -> reason or None; set by the daemon
        self.disable: Callable[[str, str], Any] | None = None  # async (name, reason)
        self.metrics: Metrics | None = None  # set by the daemon
        self._log = logs.get("callbacks")
        for risk in self.allowed.risks():
            self._log.warning("callback_allow_is_wide", setting="callback_allow", risk=risk)

    def sender(self) -> Sender:
        if self._sender is None:
            self._sender = Sender(self.allowed)
        return self._sender

    async def aclose(self) -> None:
        if self._sender is not None:
            await self._sender.aclose()
            self._sender = None

    async def __call__(self, job: Job) -> dict[str, Any]:
        try:
            call = parse(job.payload, self.endpoints)
        except PayloadError as exc:
            self._count("", "failed")
            raise Discard(str(exc)) from None
        host = urlsplit(call.url).hostname or ""
        began = time.perf_counter()
        answered = Answered()
        try:
            result = await self._call(job, call, answered)
        except Snooze:
            self._count(host, "waited", began, answered.yes)
            raise
        except Retry:
            self._count(host, "retried", began, answered.yes)
            raise
        except Discard as exc:
            outcome = "refused" if exc.reason.startswith("refused:") else "failed"
            self._count(host, outcome, began, answered.yes)
            raise
        self._count(host, "succeeded", began, answered.yes)
        return result

    def _count(self, host: str, outcome: str, began: float | None = None, answered: bool = False) -> None:
        if self.metrics is None:
            return
        # Only a host that answered over HTTP takes a label of its own (a configured endpoint's host has
        # one from the start): anyone may enqueue a URL, and 50 made-up hosts that were refused or never
        # resolved would fill every label before a real receiver was seen.
        label = self.metrics.callback_host(host, new=answered) if host and outcome != "refused" else "other"
        self.metrics.callbacks_total.labels(label, outcome).inc()
        if began is not None and outcome != "refused":
            self.metrics.callback_seconds.labels(label).observe(time.perf_counter() - began)

    async def _call(self, job: Job, call: Call, answered: Answered) -> dict[str, Any]:
        if call.endpoint is not None and self.disabled is not None:
            reason = await self.disabled(call.endpoint)
            if reason is not None:
                raise Discard(f"endpoint {call.endpoint!r} is disabled: {reason} (notifyq endpoints enable)")
        headers = self._headers(job, call)
        try:
            reply = await self.sender().send(call.method, call.url, headers, call.body, call.timeout)
        except Refused as exc:
            raise Discard(f"refused: {exc}") from None
        except httpx.InvalidURL as exc:
            raise Discard(f"url: {exc}"[:500]) from None
        except TimeoutError:
            said = f"no complete answer from {where(call)} within {call.timeout:g} s"
            raise Retry(said, delay=backoff(job.attempt)) from None
        except Exception as exc:  # connection errors, a failed lookup: the receiver may be back later
            if _lookups_busy(exc):  # other producers' slow names, not this receiver: no attempt spent
                raise Snooze(LOOKUP_BUSY_WAIT * (1 + random.random())) from None
            first = str(exc).splitlines()[0] if str(exc) else ""
            said = f"{type(exc).__name__} calling {where(call)}: {first}"
            raise Retry(said[:500], delay=backoff(job.attempt)) from None
        answered.yes = True
        decision = decide(reply, job.attempt, call, job.snoozes)
        if decision.result is not None:
            return decision.result
        if decision.wait is not None:
            raise Snooze(decision.wait)
        if decision.retry_in is not None:
            said = f"HTTP {reply.status} from {where(call)}: {reply.excerpt[:200]}"
            raise Retry(said, delay=decision.retry_in)
        assert decision.fail is not None
        if decision.disable_endpoint and call.endpoint is not None and self.disable is not None:
            when = datetime.now(UTC).isoformat(timespec="seconds")
            await self.disable(call.endpoint, f"HTTP 410 Gone at {when}")
            self._log.warning("endpoint_disabled", endpoint=call.endpoint, reason="410 Gone")
        raise Discard(decision.fail)

    def _headers(self, job: Job, call: Call) -> dict[str, str]:
        endpoint = self.endpoints.get(call.endpoint) if call.endpoint is not None else None
        keys = endpoint.keys if endpoint is not None and endpoint.keys else self.keys
        signed = signing.headers(keys, str(job.id), int(time.time()), call.body)
        return {"user-agent": self.user_agent, **call.headers, **signed}


def _lookups_busy(exc: BaseException) -> bool:
    """Whether `exc` is, or was raised from, a lookup refused because too many were under way."""
    seen: BaseException | None = exc
    for _ in range(5):  # httpx may wrap what the network backend raised
        if seen is None:
            return False
        if isinstance(seen, LookupBusy):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def install(registry: Registry, task: CallbackTask) -> None:
    """Register `notifyq.http` in `registry` (the daemon serves it whatever the app)."""

    async def http_callback(job: Job) -> dict[str, Any]:
        return await task(job)

    registry.task(TASK, max_attempts=DEFAULT_MAX_ATTEMPTS, timeout=MAX_TIMEOUT + 30)(http_callback)


def callback_hosts(endpoints: Mapping[str, Endpoint]) -> list[str]:
    """The hosts of the configured endpoints: metric labels known up front."""
    from urllib.parse import urlsplit

    return sorted({urlsplit(e.url).hostname or "" for e in endpoints.values()} - {""})
