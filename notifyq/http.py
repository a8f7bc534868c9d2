"""A tiny HTTP endpoint: `/metrics`, `/healthz`, `/readyz`. Bound to 127.0.0.1 unless configured.

Plain anyio streams rather than a web framework: three GET routes, no request bodies.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from anyio.abc import SocketStream
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from notifyq import logs

_MAX_REQUEST = 8192


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

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host=self._host, local_port=self._port)
        async with listener:
            self.bound_port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
            self._log.info("http_listening", address=f"{self._host}:{self.bound_port}")
            task_status.started()
            await listener.serve(self._handle)

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(5):
                    request = b""
                    while b"\r\n\r\n" not in request and len(request) < _MAX_REQUEST:
                        request += await stream.receive(4096)
                    await stream.send(self._respond(request))
            except (anyio.EndOfStream, anyio.BrokenResourceError, TimeoutError, OSError):
                return

    def _respond(self, request: bytes) -> bytes:
        line = request.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
            return _reply(405, b"method not allowed\n")
        path = parts[1].split("?", 1)[0]
        if path == "/metrics":
            return _reply(200, generate_latest(self._registry), CONTENT_TYPE_LATEST)
        if path == "/healthz":
            return _reply(200, b"ok\n")
        if path == "/readyz":
            ok, why = self._ready()
            return _reply(200 if ok else 503, (why + "\n").encode())
        return _reply(404, b"not found\n")


def _reply(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
    head = (
        f"HTTP/1.1 {status} {reason[status]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body
