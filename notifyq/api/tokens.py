"""Bearer tokens for the HTTP API: made by `notifyq tokens create`, kept only as their SHA-256.

A token is 32 random bytes, so its hash needs no salt nor slow hashing (those defend guessable
passwords); it is looked up by its hash and compared again in constant time. A token reaches the jobs
and schedules of its queues (`*`: all), and writes only if made with `--write`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import anyio

PREFIX = "nqt_"
CACHE_SECONDS = 5.0  # a revoked token stops working within this (each request would cost a lookup)


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    queues: frozenset[str]
    can_write: bool

    def reaches(self, queue: str) -> bool:
        return "*" in self.queues or queue in self.queues


def new_token() -> tuple[str, bytes]:
    """A fresh token and the hash to store."""
    token = PREFIX + secrets.token_urlsafe(32)
    return token, digest(token)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenCache:
    """Tokens seen lately, by hash, so that a busy client costs no lookup per request."""

    def __init__(self) -> None:
        self._seen: dict[bytes, tuple[float, Token | None]] = {}

    def get(self, key: bytes) -> tuple[bool, Token | None]:
        hit = self._seen.get(key)
        if hit is None or anyio.current_time() - hit[0] > CACHE_SECONDS:
            return False, None
        return True, hit[1]

    def put(self, key: bytes, token: Token | None) -> None:
        if len(self._seen) > 10_000:
            self._seen.clear()  # a flood of made-up tokens must not grow this without bound
        self._seen[key] = (anyio.current_time(), token)


def matches(stored: bytes, presented: bytes) -> bool:
    return hmac.compare_digest(stored, presented)
