"""The `notifyq.http` payload's rules and what each answer makes of the job (no network here)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest

from notifyq.callbacks.sender import Reply
from notifyq.callbacks.task import (
    DEFAULT_MAX_ATTEMPTS,
    MAX_WAIT_FLOOR,
    MAX_WAITS,
    RETRY_DELAYS,
    Call,
    Endpoint,
    PayloadError,
    backoff,
    decide,
    parse,
    retry_after,
)


def _deep(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


BILLING = Endpoint("billing", "https://billing.example/hooks", (b"k" * 32,), {"authorization": "Bearer t"})


def test_a_url_payload_becomes_a_call() -> None:
    call = parse({"url": "https://a.example/x", "body": {"n": 1}, "headers": {"X-Kind": "a"}}, {})
    assert (call.method, call.url, call.body, call.timeout) == ("POST", "https://a.example/x", b'{"n":1}', 30.0)
    assert call.headers == {"x-kind": "a", "content-type": "application/json"} and call.endpoint is None
    text = parse({"url": "https://a.example/x", "method": "put", "body": "hi", "timeout_seconds": 5}, {})
    assert (text.method, text.body, text.headers["content-type"]) == ("PUT", b"hi", "text/plain; charset=utf-8")


def test_an_endpoint_payload_takes_its_url_and_headers_from_the_config() -> None:
    call = parse({"endpoint": "billing", "body": None}, {"billing": BILLING})
    assert call.url == BILLING.url and call.headers == {"authorization": "Bearer t"} and call.body == b""
    assert call.endpoint == "billing"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1], "payload: must be a JSON object"),
        ({}, "exactly one of url and endpoint"),
        ({"url": "https://a", "endpoint": "billing"}, "exactly one"),
        ({"endpoint": "nope"}, "no endpoint 'nope'"),
        ({"url": 5}, "url: must be a string"),
        ({"url": "https://a", "method": "TRACE"}, "method: must be one of"),
        ({"url": "https://a", "headers": {"Host": "b"}}, "'Host' is set by notifyq"),
        ({"url": "https://a", "headers": {"webhook-signature": "v1,x"}}, "set by notifyq"),
        ({"url": "https://a", "headers": {"x": 1}}, "must be a string"),
        ({"url": "https://a", "headers": {"x": "a\r\nInjected: 1"}}, "printable ASCII"),
        ({"url": "https://a", "headers": {"bad name": "v"}}, "not a header name"),
        ({"url": "https://a", "timeout_seconds": 0}, "timeout_seconds"),
        ({"url": "https://a", "timeout_seconds": 1e9}, "timeout_seconds"),
        ({"url": "https://a", "timeout_seconds": True}, "timeout_seconds"),
        ({"url": "https://a", "colour": "red"}, "unknown field 'colour'"),
    ],
)
def test_a_bad_payload_is_refused_naming_the_field(payload: object, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse(payload, {"billing": BILLING})


CALL = Call("POST", "https://a.example/x", {}, b"", 30.0, None)
TO_BILLING = Call("POST", BILLING.url, {}, b"", 30.0, "billing")


def reply(status: int, **headers: str) -> Reply:
    return Reply(status, headers, f"said {status}")


def test_2xx_succeeds_with_the_status_and_the_reply() -> None:
    assert decide(reply(204), 1, CALL).result == {"status": 204, "body": "said 204"}


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_timeouts_throttles_and_server_errors_retry(status: int) -> None:
    decision = decide(reply(status), 2, CALL)
    assert decision.retry_in is not None and 240 <= decision.retry_in <= 360


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_waits_without_spending_the_attempt(status: int) -> None:
    assert decide(reply(status, **{"retry-after": "120"}), 1, CALL).wait == 120.0


@pytest.mark.parametrize(("status", "reason"), [(301, "redirect to /b"), (302, "redirect to /b"), (400, "HTTP 400"),
                                                (404, "HTTP 404"), (410, "HTTP 410")])  # fmt: skip
def test_redirects_and_other_4xx_fail_at_once(status: int, reason: str) -> None:
    decision = decide(reply(status, location="/b"), 1, CALL)
    assert decision.fail is not None and reason in decision.fail and not decision.disable_endpoint


def test_410_from_an_endpoint_disables_it() -> None:
    decision = decide(reply(410), 1, TO_BILLING)
    assert decision.disable_endpoint and decision.fail is not None and "'billing' disabled" in decision.fail


def test_the_schedule_spreads_over_about_a_day_with_jitter() -> None:
    rng = random.Random(7)
    delays = [backoff(a, rng) for a in range(1, DEFAULT_MAX_ATTEMPTS)]
    for delay, base in zip(delays, RETRY_DELAYS, strict=True):
        assert 0.8 * base <= delay <= 1.2 * base
    assert 20 * 3600 < sum(delays) < 36 * 3600


def test_retry_after_reads_seconds_and_dates_and_caps_them() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert retry_after("30", now) == 30.0
    assert retry_after("Tue, 01 Dec 2026 12:01:00 GMT", now) == 60.0
    assert retry_after("Mon, 30 Nov 2026 12:00:00 GMT", now) == 0.0
    assert retry_after("99999999", now) == 86400.0
    assert retry_after("soon", now) is None and retry_after(None, now) is None


def test_a_retry_after_of_zero_waits_the_first_retry_step() -> None:
    # "Retry-After: 0" once made a job call its receiver about 170 times a second, for days.
    assert decide(reply(429, **{"retry-after": "0"}), 1, CALL).wait == RETRY_DELAYS[0]


def test_waits_grow_and_are_bounded_then_spend_attempts() -> None:
    # "Retry-After: 0" for ever was a call every 5 s for three days (about 52,000 calls).
    now = reply(429, **{"retry-after": "0"})
    waits = [decide(now, 1, CALL, n).wait for n in range(MAX_WAITS)]
    assert all(w is not None for w in waits)
    assert waits == sorted(waits) and waits[0] == RETRY_DELAYS[0] and waits[-1] == MAX_WAIT_FLOOR
    assert 1.5 * 86400 < sum(w or 0 for w in waits) < 4 * 86400, "the free waits span days, in few calls"
    spent = decide(now, 3, CALL, MAX_WAITS)
    assert spent.wait is None and spent.retry_in is not None and spent.retry_in >= 1800 * 0.8
    later = decide(reply(503, **{"retry-after": "40000"}), 1, CALL, MAX_WAITS)
    assert later.retry_in == 40000, "no sooner than the receiver asked"
    assert decide(reply(429, **{"retry-after": "600"}), 1, CALL, 3).wait == 600, "a longer ask is kept"


def test_an_endpoints_headers_win_over_the_payloads() -> None:
    call = parse({"endpoint": "billing", "headers": {"Authorization": "Bearer attacker", "x-a": "1"}},
                 {"billing": BILLING})  # fmt: skip
    assert call.headers == {"authorization": "Bearer t", "x-a": "1"}


def test_a_header_value_must_be_printable_ascii() -> None:
    with pytest.raises(PayloadError, match="printable ASCII"):
        parse({"url": "https://a", "headers": {"x": "café"}}, {})


def test_messages_name_an_endpoint_never_its_url() -> None:
    for status in (302, 404, 500):
        decision = decide(reply(status, location="https://elsewhere/"), 1, TO_BILLING)
        said = decision.fail or ""
        assert BILLING.url not in said and ("endpoint 'billing'" in said or decision.retry_in is not None)


def test_a_receivers_unreadable_retry_after_is_ignored_not_a_crash() -> None:
    assert retry_after("²") is None  # str.isdigit() says yes
    assert retry_after("1 Oct 99999999999999999999 07:28:00 GMT") is None
    assert decide(reply(503, **{"retry-after": "¹"}), 1, CALL).retry_in is not None


@pytest.mark.parametrize("body", [_deep(5000), {"amount": json.loads("1" + "0" * 400 + ".5")}, [[float("inf")]]])
def test_a_body_json_cannot_send_fails_naming_it(body: object) -> None:
    # 1e400 is valid JSON and jsonb keeps it; decoded it is infinite, which orjson would send as null.
    with pytest.raises(PayloadError, match=r"body: .*cannot be sent as JSON"):
        parse({"url": "https://a", "body": body}, {})


def test_integers_beyond_64_bits_are_sent_exactly() -> None:
    # jsonb keeps 1e20 as 100000000000000000000: an integer orjson refuses, which the body must not lose.
    call = parse({"url": "https://a", "body": {"amount": 10**20, "id": 2**64, "deep": _deep(300)}}, {})
    assert json.loads(call.body) == {"amount": 10**20, "id": 2**64, "deep": _deep(300)}
    assert b'"amount":100000000000000000000' in call.body
