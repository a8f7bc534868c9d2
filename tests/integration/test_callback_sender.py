"""The callback's HTTP client against a real receiver on 127.0.0.1, allow-listed as an operator would."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from notifyq.callbacks.addresses import Allowed, Refused
from notifyq.callbacks.sender import MAX_RESPONSE_BYTES, Sender
from tests.callback_receiver import Receiver, running_receiver

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


@pytest.fixture
async def sender() -> AsyncIterator[Sender]:
    s = Sender(Allowed.parse(["127.0.0.1/32"]))
    try:
        yield s
    finally:
        await s.aclose()


async def test_a_callback_reaches_an_allowed_receiver(sender: Sender, receiver: Receiver) -> None:
    reply = await sender.send("POST", receiver.url("/ok"), {"content-type": "application/json"}, b'{"a":1}', 5)
    assert (reply.status, reply.excerpt) == (200, "thanks")
    assert receiver.received[0].body == b'{"a":1}' and receiver.received[0].method == "POST"


async def test_a_redirect_is_not_followed(sender: Sender, receiver: Receiver) -> None:
    reply = await sender.send("POST", receiver.url("/redirect"), {}, b"", 5)
    assert reply.status == 302 and reply.headers["location"] == "http://127.0.0.1:9/elsewhere"
    assert len(receiver.received) == 1


async def test_a_huge_body_is_read_up_to_the_cap_and_a_slow_one_times_out(sender: Sender, receiver: Receiver) -> None:
    reply = await sender.send("GET", receiver.url("/huge"), {}, b"", 5)
    assert reply.status == 200 and 0 < len(reply.excerpt) <= MAX_RESPONSE_BYTES
    with pytest.raises(TimeoutError):
        await sender.send("GET", receiver.url("/slow"), {}, b"", 1)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:{port}/ok",  # a name for 127.0.0.1: its address is judged, not its spelling
        "http://127.0.0.2:{port}/ok",
        "http://[::1]:{port}/ok",
        "http://[::ffff:127.0.0.1]:{port}/ok",
        "http://10.0.0.1/ok",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://[64:ff9b::a00:1]/",
        "http://[2002:a00:1::1]/",
        "http://2130706433:{port}/ok",  # 127.0.0.1 as one number
    ],
)
async def test_what_the_rule_refuses_is_never_sent(url: str, receiver: Receiver) -> None:
    sender = Sender(Allowed())  # nothing allowed: not even the test's receiver
    try:
        with pytest.raises(Refused):
            await sender.send("GET", url.format(port=receiver.port), {}, b"", 5)
    finally:
        await sender.aclose()
    assert receiver.received == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("http://user:pw@example.com/", "credentials"),
        ("http:///nohost", "no host"),
        ("http://example.com:99999/", "url:"),
        ("http://\u24dbocalhost/", "url:"),  # a circled letter: urlsplit takes it, httpx does not
        ("http://a..example.com/", "url: host"),  # an empty label: no lookup could ever take it
        ("http://" + "a" * 64 + ".example.com/", "url: host"),  # a label over 63 characters
    ],
)
async def test_a_url_of_the_wrong_form_is_refused_before_any_lookup(sender: Sender, url: str, message: str) -> None:
    with pytest.raises(Refused, match=message):
        await sender.send("GET", url, {}, b"", 5)


@pytest.mark.parametrize("charset", ["idna", "punycode", "undefined", "no-such-charset"])
async def test_a_2xx_in_a_charset_that_cannot_decode_it_is_still_a_success(
    sender: Sender, receiver: Receiver, charset: str
) -> None:
    # The receiver did the work; calling it again because its reply's charset is odd would repeat it.
    reply = await sender.send("POST", receiver.url(f"/charset/{charset}"), {}, b"", 5)
    assert reply.status == 200 and reply.excerpt == "done \ufffd"
