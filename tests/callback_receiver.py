"""A receiver for callback tests, on 127.0.0.1: real HTTP (uvicorn), answering as each path says."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    port: int
    received: list[Received] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _app(receiver: Receiver) -> Starlette:
    async def record(request: Request) -> Received:
        got = Received(request.method, request.url.path, dict(request.headers), await request.body())
        receiver.received.append(got)
        return got

    async def ok(request: Request) -> Response:
        await record(request)
        return PlainTextResponse("thanks")

    async def status(request: Request) -> Response:
        await record(request)
        code = int(request.path_params["code"])
        headers = {"retry-after": request.query_params["after"]} if "after" in request.query_params else {}
        return PlainTextResponse(f"status {code}", status_code=code, headers=headers)

    async def charset(request: Request) -> Response:
        await record(request)
        name = request.path_params["name"]
        return Response(b"done \xff", media_type=f"text/plain; charset={name}")

    async def redirect(request: Request) -> Response:
        await record(request)
        return RedirectResponse("http://127.0.0.1:9/elsewhere", status_code=302)

    async def slow(request: Request) -> Response:
        await record(request)

        async def body():  # type: ignore[no-untyped-def]
            yield b"start "
            await anyio.sleep(30)
            yield b"end"

        return StreamingResponse(body())

    async def huge(request: Request) -> Response:
        await record(request)

        async def body():  # type: ignore[no-untyped-def]
            for _ in range(10_000):
                yield b"x" * 10_000

        return StreamingResponse(body())

    return Starlette(
        routes=[
            Route("/ok", ok, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
            Route("/status/{code}", status, methods=["GET", "POST"]),
            Route("/redirect", redirect, methods=["GET", "POST"]),
            Route("/charset/{name}", charset, methods=["GET", "POST"]),
            Route("/slow", slow, methods=["GET", "POST"]),
            Route("/huge", huge, methods=["GET", "POST"]),
        ]
    )


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    """A receiver in a thread of its own (its own event loop), stopped on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    receiver = Receiver(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(_app(receiver), log_config=None, lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.01)
        yield receiver
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
