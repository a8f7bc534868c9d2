"""The HTTP API's server: uvicorn, inside `notifyq serve`, on `api_address` (off unless set).

Inside the daemon rather than a separate `notifyq api` process: a small team runs one service, and
callbacks, schedules and the API then share one set of settings (endpoints, the SSRF allow-list). The
API has a connection pool of its own, so a flood of requests cannot take the connections that claims,
heartbeats and outcomes need; and its own address, never the metrics port's loopback-only one.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import anyio
import anyio.abc
import uvicorn

from notifyq import logs
from notifyq.api.app import Api
from notifyq.callbacks.addresses import Allowed, Refused, check
from notifyq.callbacks.lookup import LookupBusy, Resolver
from notifyq.callbacks.sender import check_url
from notifyq.callbacks.task import Endpoint
from notifyq.config import Settings
from notifyq.errors import ConfigError
from notifyq.store import Store

POOL_SIZE = 4
LOCK_SECONDS = 3.0
STATEMENT_SECONDS = 15.0
LOOKUP_SECONDS = 5.0
LOOKUP_THREADS = 16  # the API's own: a flood of slow names through it leaves the callbacks' lookups alone


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the daemon owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(address: str) -> socket.socket:
    """The API's listening socket, bound before serving (a port in use is one line at start)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        said = f"invalid setting api_address: cannot listen on {address}: {exc.strerror}"
        raise ConfigError(said) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class ApiServer:
    def __init__(self, settings: Settings, endpoints: dict[str, Endpoint], allowed: Allowed) -> None:
        self.settings = settings
        self.endpoints = endpoints
        self.allowed = allowed
        self.resolver = Resolver(LOOKUP_THREADS)
        self.port: int | None = None
        self._server: _Server | None = None
        self._log = logs.get("api")

    async def check_callback_url(self, url: str) -> None:
        """The SSRF rule at enqueue: the host resolved now, every address judged (and again at each try)."""
        host = check_url(url)
        try:
            found = await self.resolver.addresses(host, None, LOOKUP_SECONDS)
        except TimeoutError:  # a slow DNS server, perhaps for a moment: the client may try again
            raise LookupBusy(f"no answer for {host} within {LOOKUP_SECONDS:g} s") from None
        except LookupBusy:
            raise
        except OSError as exc:
            raise Refused(f"cannot resolve {host}: {exc}") from None
        check(host, found, self.allowed)

    async def run(self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        sock = bind(self.settings.api_address)
        # A row or table someone holds locked (an operator's open transaction) answers 409 within
        # LOCK_SECONDS instead of holding one of the pool's few connections for the command timeout.
        store = await Store.open(
            self.settings.dsn,
            max_size=POOL_SIZE,
            statement_cache_size=self.settings.statement_cache_size,
            application_name="notifyq-api",
            lock_timeout=LOCK_SECONDS,
            statement_timeout=STATEMENT_SECONDS,
        )
        try:
            api = Api(store, self.endpoints, self.check_callback_url)
            config = uvicorn.Config(
                api.app,
                log_config=None,
                access_log=False,
                lifespan="off",
                proxy_headers=False,
                server_header=False,
                limit_concurrency=200,
                timeout_keep_alive=5,
                timeout_graceful_shutdown=5,
            )
            self._server = _Server(config)
            self.port = sock.getsockname()[1]
            self._log.info("api_listening", address=self.settings.api_address, port=self.port)
            task_status.started(self.port)
            await self._server.serve(sockets=[sock])
        finally:
            sock.close()
            with anyio.CancelScope(shield=True):
                await store.close()

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
