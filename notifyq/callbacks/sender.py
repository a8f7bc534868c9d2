"""The HTTP side of a callback: one request, to an address the SSRF rule allows, within caps.

httpx makes the request; the connection itself goes through GuardedBackend, which resolves the host,
judges every address it resolves to (addresses.py) and connects to one of those checked addresses. TLS
still verifies the certificate against the URL's host name (httpcore starts TLS on the stream it is given
with the origin's name), so pinning the address costs nothing in security. Checking the name first and
connecting by name afterwards would leave a window for DNS rebinding: the second lookup may answer
otherwise.

No proxy from the environment (a proxy would make the request, from wherever it is), no redirect
followed, the response read up to a cap and the whole exchange bounded in time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx

from notifyq.callbacks.addresses import Allowed, Refused, check
from notifyq.callbacks.lookup import Resolver

LOOKUP_THREADS = 32  # name lookups under way at once, per daemon (lookup.py)
MAX_RESPONSE_BYTES = 64 * 1024  # read from a response; the rest is dropped unread (connection closed)
EXCERPT_CHARS = 2000  # of the response kept in the job's result or error


@dataclass(frozen=True, slots=True)
class Reply:
    """What came back: the status, the headers a retry decision needs, and the start of the body."""

    status: int
    headers: Mapping[str, str]
    excerpt: str


def check_url(url: str) -> str:
    """The URL's host, if its form may be called back at all; a Refused says why not. httpx, which
    makes the request, must be able to parse it too: a name it refuses (an IDNA form such as a circled
    letter) would otherwise pass the API's check and fail at the first try."""
    try:
        parts = urlsplit(url)
        port = parts.port
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise Refused(f"url: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise Refused(f"url: only http and https are called back (got {parts.scheme or 'no'} scheme)")
    if not parts.hostname:
        raise Refused("url: no host")
    if parts.username is not None or parts.password is not None:
        raise Refused("url: credentials in the URL are refused; send them as a header of an endpoint")
    if port == 0:
        raise Refused("url: port 0")
    try:  # an empty label (a..b) or one over 63 characters: no lookup can take it, ever
        parts.hostname.encode("idna")
    except UnicodeError as exc:
        raise Refused(f"url: host {parts.hostname[:100]!r}: {exc}") from None
    return parts.hostname


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the SSRF rule allows."""

    def __init__(self, allowed: Allowed, resolver: Resolver) -> None:
        self._allowed = allowed
        self._resolver = resolver
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface names it)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        found = await self._resolver.addresses(host, port, timeout if timeout is not None else 30.0)
        addresses = check(host, found, self._allowed)
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface names it)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise Refused("unix sockets are never called back")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class Sender:
    """One shared client for every callback of a daemon (connections are kept per checked origin)."""

    def __init__(self, allowed: Allowed, *, max_connections: int = 100) -> None:
        self.allowed = allowed
        self.resolver = Resolver(LOOKUP_THREADS)
        transport = httpx.AsyncHTTPTransport(trust_env=False)
        # httpx has no argument for a network backend: its pool is replaced by one built on ours.
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=max_connections,
            keepalive_expiry=5.0,
            network_backend=GuardedBackend(allowed, self.resolver),
        )
        self._client = httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, limit_seconds: float
    ) -> Reply:
        """Make the request; the whole exchange, from the lookup to the last byte read, within
        `limit_seconds`.
        Raises Refused (the SSRF rule), TimeoutError, or an httpx.TransportError."""
        check_url(url)
        with anyio.fail_after(limit_seconds):
            # identity: the excerpt is read raw (see below), and a compressed one would be unreadable.
            sent = {"accept-encoding": "identity", **headers}
            async with self._client.stream(
                method, url, headers=sent, content=body, timeout=httpx.Timeout(limit_seconds)
            ) as response:
                data = bytearray()
                # Raw bytes: a compressed body is not inflated, so a small bomb cannot grow past the cap.
                async for chunk in response.aiter_raw():
                    data += chunk[: MAX_RESPONSE_BYTES - len(data)]
                    if len(data) >= MAX_RESPONSE_BYTES:
                        break
                try:
                    text = bytes(data).decode(response.encoding or "utf-8", errors="replace")
                except (LookupError, ValueError):  # a charset Python does not know, or one (idna) that
                    # cannot replace what it cannot decode: the reply is still an answer
                    text = bytes(data).decode("utf-8", errors="replace")
                kept = {k: v for k, v in response.headers.items() if k.lower() in ("retry-after", "location")}
                # A NUL cannot be stored in the job's result (Postgres text), and the status with it.
                return Reply(response.status_code, kept, text[:EXCERPT_CHARS].replace("\x00", "\ufffd"))
