"""Signatures as a receiver checks them: with the Standard Webhooks project's own library, not ours."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from notifyq.callbacks import signing

OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()


def test_a_receiver_verifies_with_the_standard_library() -> None:
    body = b'{"order": 42}'
    now = int(time.time())
    sent = signing.headers(signing.parse_secrets(OLD), "1234", now, body)
    assert Webhook(OLD).verify(body, sent) == {"order": 42}
    with pytest.raises(WebhookVerificationError):
        Webhook(NEW).verify(body, sent)
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD).verify(b'{"order": 43}', sent)


def test_during_a_rotation_either_secret_verifies() -> None:
    body = b"plain text"
    sent = signing.headers(signing.parse_secrets(f"{OLD}, {NEW}"), "7", int(time.time()), body)
    assert len(sent["webhook-signature"].split(" ")) == 2
    for secret in (OLD, NEW):
        Webhook(secret).verify(body, sent, json_parse=False)


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("s3cr3t", "must start with 'whsec_'"),
        ("whsec_not base64!", "followed by base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "24 to 64 bytes"),
    ],
)
def test_a_bad_secret_is_named_without_being_quoted(secret: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        signing.parse_secret(secret)
    assert secret not in str(caught.value)


def test_no_secret_means_no_signature_headers() -> None:
    assert signing.headers([], "1", 0, b"") == {}
