"""A tiny HTTP endpoint: `/metrics`, `/healthz`, `/readyz`. Bound to 127.0.0.1 unless configured.

Plain anyio streams rather than a web framework: three GET (and HEAD) routes, no request bodies. Any
process on the host can connect, so the server must never be a way to take the daemon down: it holds at
most `_MAX_CONNECTIONS` connections, backs off when accept() fails, and keeps its own errors to itself.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Callable
from typing import cast

import anyio
from anyio.abc import SocketListener, SocketStream, TaskGroup
from anyio.streams.stapled import MultiListener
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from notifyq import logs
from notifyq.retry import Backoff

_MAX_REQUEST = 8192
# Scrapers, probes and an operator's curl need a few connections at once. Each connection costs a file
# descriptor, and the daemon needs descriptors of its own (Postgres, handlers): a flood of idle
# connections once exhausted them (systemd's default soft limit is 1024) and accept()'s EMFILE ended the
# daemon. 64 is ample for real clients and a small fraction of any limit.
_MAX_CONNECTIONS = 64
# A client sends its request as soon as it connects (one packet from a scraper); this bounds how long an
# idle connection holds a slot, and 2 s still covers a slow network path.
_REQUEST_SECONDS = 2.0
# For a slow reader of a large /metrics.
_SEND_SECONDS = 5.0
# accept() errors that pass: out of descriptors, buffers or memory for now, a client that gave up before
# it was accepted, and the network errors Linux hands over from a pending connection (accept(2)).
_ACCEPT_TRANSIENT = frozenset(
    {
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOBUFS,
        errno.ENOMEM,
        errno.ECONNABORTED,
        errno.EPERM,
        errno.EPROTO,
        errno.ENOPROTOOPT,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.EOPNOTSUPP,
    }
)
# Descriptors come back when connections close, within _REQUEST_SECONDS: retry soon, never in a hot loop.
_ACCEPT_BACKOFF = Backoff(base_seconds=0.05, factor=2.0, cap_seconds=1.0, jitter=0.5)
_RESTART_BACKOFF = Backoff(base_seconds=0.5, factor=2.0, cap_seconds=30.0, jitter=0.5)
# Whatever a client does, the server writes at most one line a minute of each kind, with a count.
_LOG_EVERY_SECONDS = 60.0


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        ready: Callable[[], tuple[bool, str]],
    ) -> None:
        self._host = host
        self._port = port
        self._registry = registry
        self._ready = ready
        self.bound_port: int | None = None
        self._log = logs.get("http")
        self._open = 0  # connections accepted and not yet closed
        self._reading: dict[int, anyio.CancelScope] = {}  # those still reading their request, oldest first
        self._next_key = 0
        self._closed: anyio.Event | None = None  # set (and replaced) whenever a connection closes
        self._shed_log = _Throttle(_LOG_EVERY_SECONDS)
        self._accept_log = _Throttle(_LOG_EVERY_SECONDS)
        self._error_log = _Throttle(_LOG_EVERY_SECONDS)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. Only a failure to bind at start is raised; after that, errors are
        logged and the listener is made again."""
        self._closed = anyio.Event()
        listener = await anyio.create_tcp_listener(local_host=self._host, local_port=self._port)
        self.bound_port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        self._log.info("http_listening", address=f"{self._host}:{self.bound_port}")
        task_status.started()
        restarts = 0
        async with anyio.create_task_group() as connections:
            while True:
                serving_since = anyio.current_time()
                try:
                    await self._serve(listener, connections)
                except Exception as exc:  # closing the listener, say: it is replaced all the same
                    self._log.error("http_server_error", error=_describe(exc), exc_info=exc)
                # An accept loop met an error it does not know: make the listener again, on the same port,
                # backing off only while that keeps happening.
                if anyio.current_time() - serving_since > _RESTART_BACKOFF.cap_seconds:
                    restarts = 0
                while True:
                    restarts += 1
                    await anyio.sleep(_RESTART_BACKOFF.delay(restarts))
                    try:
                        listener = await anyio.create_tcp_listener(
                            local_host=self._host, local_port=self.bound_port
                        )
                        break
                    except OSError as exc:
                        if restarts == 1 or restarts % 10 == 0:
                            self._log.error("http_listen_failed", error=_describe(exc), restarts=restarts)
                self._log.info("http_listening", address=f"{self._host}:{self.bound_port}", restarts=restarts)

    async def _serve(self, listener: MultiListener[SocketStream], connections: TaskGroup) -> None:
        """Accept on each address of `listener` until one meets an error it does not know."""
        async with listener, anyio.create_task_group() as accepting:
            restart = accepting.cancel_scope
            for one in listener.listeners:
                accepting.start_soon(self._accept_loop, cast(SocketListener, one), connections, restart)

    async def _accept_loop(
        self, listener: SocketListener, connections: TaskGroup, restart: anyio.CancelScope
    ) -> None:
        failures = 0
        while True:
            # Above the cap only while a shed connection closes, which it does at its next checkpoint.
            while self._open > _MAX_CONNECTIONS and self._closed is not None:
                await self._closed.wait()
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_TRANSIENT:
                    self._unexpected(exc, restart)
                    return
                failures += 1
                if count := self._accept_log.due():
                    self._log.warning(
                        "http_accept_failed",
                        error=_describe(exc),
                        errno=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                        failures=count,
                    )
                await anyio.sleep(_ACCEPT_BACKOFF.delay(failures))
                continue
            except Exception as exc:
                self._unexpected(exc, restart)
                return
            failures = 0
            if self._open >= _MAX_CONNECTIONS and not self._shed_oldest():
                await stream.aclose()  # every slot is busy answering: this one waits for nothing
                continue
            self._open += 1
            # Sheddable from now on, also before its task first runs.
            key = self._next_key
            self._next_key += 1
            reading = anyio.CancelScope(deadline=anyio.current_time() + _REQUEST_SECONDS)
            self._reading[key] = reading
            connections.start_soon(self._connection, stream, key, reading)

    def _shed_oldest(self) -> bool:
        """Make room for a new connection by cutting the oldest one that has not sent its request yet.

        A scraper's request arrives with its connection, so a flood of idle connections sheds its own
        and the scraper is answered; shedding the new one instead would let the flood lock it out.
        """
        if count := self._shed_log.due():
            self._log.warning("http_connections_shed", limit=_MAX_CONNECTIONS, shed=count)
        if not self._reading:
            return False
        oldest = next(iter(self._reading))
        self._reading.pop(oldest).cancel()
        return True

    def _unexpected(self, exc: Exception, restart: anyio.CancelScope) -> None:
        self._log.error("http_server_error", error=_describe(exc), exc_info=exc)
        restart.cancel()

    async def _connection(self, stream: SocketStream, key: int, reading: anyio.CancelScope) -> None:
        """Read the request within `reading` (its deadline, or a shed, ends it), then answer."""
        try:
            async with stream:
                request = b""
                with reading:
                    while b"\r\n\r\n" not in request and len(request) < _MAX_REQUEST:
                        request += await stream.receive(4096)
                self._reading.pop(key, None)
                if reading.cancelled_caught:
                    return  # idle past the deadline, or shed for a newer connection
                with anyio.move_on_after(_SEND_SECONDS):
                    await stream.send(self._answer(request))
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        except Exception as exc:
            if count := self._error_log.due():
                self._log.error("http_connection_failed", error=_describe(exc), failures=count, exc_info=exc)
        finally:
            self._reading.pop(key, None)
            self._open -= 1
            if self._closed is not None:
                self._closed.set()
                self._closed = anyio.Event()

    def _answer(self, request: bytes) -> bytes:
        try:
            return self._respond(request)
        except Exception as exc:  # a collector or the readiness check failed: this request fails
            if count := self._error_log.due():
                self._log.error("http_request_failed", error=_describe(exc), failures=count, exc_info=exc)
            return _reply(500, b"internal error\n")

    def _respond(self, request: bytes) -> bytes:
        line = request.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
            return _reply(405, b"method not allowed\n")
        head_only = parts[0] == "HEAD"
        path = parts[1].split("?", 1)[0]
        if path == "/metrics":
            return _reply(200, generate_latest(self._registry), CONTENT_TYPE_LATEST, head_only=head_only)
        if path == "/healthz":
            return _reply(200, b"ok\n", head_only=head_only)
        if path == "/readyz":
            ok, why = self._ready()
            return _reply(200 if ok else 503, (why + "\n").encode(), head_only=head_only)
        return _reply(404, b"not found\n", head_only=head_only)


def _reply(
    status: int, body: bytes, content_type: str = "text/plain; charset=utf-8", *, head_only: bool = False
) -> bytes:
    """The response; for HEAD, its headers alone, Content-Length still that of the body GET sends."""
    reason = {
        200: "OK",
        404: "Not Found",
        405: "Method Not Allowed",
        500: "Internal Server Error",
        503: "Service Unavailable",
    }
    head = (
        f"HTTP/1.1 {status} {reason[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() if head_only else head.encode() + body


class _Throttle:
    """At most one log line per `seconds`, counting the events in between."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._logged_at = -math.inf
        self._count = 0

    def due(self) -> int:
        """Count one event; if a line is due now, the events since the last line, else 0."""
        self._count += 1
        now = anyio.current_time()
        if now - self._logged_at < self._seconds:
            return 0
        count, self._count, self._logged_at = self._count, 0, now
        return count


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc).splitlines()[0] if str(exc) else ""
    except Exception:
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
