"""Signing callbacks the Standard Webhooks way (standardwebhooks.com, spec 1.0), so that a receiver in any
language verifies them with that project's libraries instead of code of its own.

Each request carries `webhook-id` (the job id: the same on every retry, the receiver's idempotency key),
`webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature`: `v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`, one entry per secret, space-separated, so that during a rotation the receiver may
hold either the old or the new secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Sequence

PREFIX = "whsec_"
MIN_KEY_BYTES = 24  # the spec's lower bound for a secret (192 bits), and its upper one
MAX_KEY_BYTES = 64


def parse_secret(secret: str) -> bytes:
    """The key in a `whsec_<base64>` secret; a ValueError says what is wrong, never quoting the secret."""
    if not secret.startswith(PREFIX):
        raise ValueError(f"a callback secret must start with {PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"a callback secret must be {PREFIX!r} followed by base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise ValueError(
            f"a callback secret must hold {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes of key (got {len(key)})"
        )
    return key


def parse_secrets(text: str | Iterable[str]) -> list[bytes]:
    """Keys from a comma-separated list of secrets (several during a rotation), or from a list."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return [parse_secret(item.strip()) for item in items if item.strip()]


def signature(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: one `v1,<base64>` per key."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode() for key in keys
    )


def headers(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of a signed request (none when there is no key)."""
    if not keys:
        return {}
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(keys, msg_id, timestamp, body),
    }
