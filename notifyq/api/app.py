"""The HTTP API, as a FastAPI application over the daemon's database.

FastAPI rather than bare Starlette: the request and response models below are the validation and the
published OpenAPI document at once (`/v1/openapi.json`), so the document cannot drift from what the
server does, and schemathesis tests the one against the other.

The rules are the SQL contract's: a job goes in through `notifyq.enqueue()`, so its limits, its dedup
and its errors are the database's, and an error the database gives names the field (422). A token reaches
the jobs and schedules of its queues; anything else is 404, as if it did not exist.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from notifyq import cron, logs
from notifyq.api.tokens import PREFIX, Token, TokenCache, digest, matches
from notifyq.callbacks.addresses import Refused
from notifyq.callbacks.lookup import LookupBusy
from notifyq.callbacks.task import TASK as CALLBACK_TASK
from notifyq.callbacks.task import Endpoint, PayloadError, parse
from notifyq.config import QUEUE_PATTERN
from notifyq.errors import DatabaseUnavailable, LockUnavailable, QueryError, StatementTimeout
from notifyq.store import PRESENTABLE_DEPTH, Store, presentable

CONFLICT = "The job's state, a dedup key held elsewhere, or a row locked by another session (try again)."
MAX_BODY_BYTES = 2 * 1024 * 1024  # a 1 MiB payload as JSON text, escaped, with room for the rest
MAX_DELAY_SECONDS = 10 * 365 * 86400.0
EARLIEST = datetime(1, 1, 2, tzinfo=UTC)  # the jobs table's run_at range (migration 0004)
LATEST = datetime(9999, 12, 31, tzinfo=UTC)
_FIELD = re.compile(r"notifyq\.(?:jobs|schedules)\.(\w+)")


MAX_DEPTH = PRESENTABLE_DEPTH  # of nested JSON in a payload: deeper ones are shown back only as text


def unstorable(value: Any, path: str, depth: int = 0) -> str | None:
    """Where a value holds what Postgres cannot store or give back (a NUL, half of a UTF-16 surrogate
    pair, which JSON allows and UTF-8 cannot encode, NaN or infinity, nesting past MAX_DEPTH), or None.
    Refused here, naming it, not as a 500 later."""
    if depth > MAX_DEPTH:
        return f"{path}: nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path}: NaN and infinities are not JSON"
    if isinstance(value, str):
        if "\x00" in value:
            return f"{path}: holds a NUL character"
        if any("\ud800" <= c <= "\udfff" for c in value):
            return f"{path}: holds an unpaired surrogate (not valid UTF-8)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = unstorable(key, f"{path} key") or unstorable(item, f"{path}.{key}", depth + 1)
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = unstorable(item, f"{path}[{i}]", depth + 1)
            if found:
                return found
    return None


class Storable(BaseModel):
    """A request body whose every string Postgres can store, and whose time, if any, is given once."""

    @model_validator(mode="after")
    def _storable(self) -> Storable:
        for name, value in self:
            found = unstorable(value, name)
            if found:
                raise ValueError(found)
        run_at, delay = getattr(self, "run_at", None), getattr(self, "delay_seconds", None)
        if run_at is not None and delay is not None:
            raise ValueError("give run_at or delay_seconds, not both")
        if run_at is not None and run_at.tzinfo is None:
            raise ValueError("run_at must carry a time zone (an offset or Z)")
        if run_at is not None and not EARLIEST <= run_at <= LATEST:
            raise ValueError("run_at must lie between 0001-01-02 and 9999-12-31 UTC")
        return self


class JobIn(Storable):
    """A job to enqueue: the same fields, defaults and limits as `notifyq.enqueue()`."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=200)
    payload: Any = Field(default_factory=dict, description="Any JSON value, at most 1 MiB as text.")
    queue: str = Field(default="default", pattern=QUEUE_PATTERN.pattern)
    run_at: datetime | None = Field(default=None, description="When it may run (with a time zone).")
    delay_seconds: float | None = Field(default=None, ge=0, le=MAX_DELAY_SECONDS, allow_inf_nan=False)
    priority: int = Field(default=0, ge=-1000, le=1000)
    dedup_key: str | None = Field(default=None, min_length=1, max_length=512)
    max_attempts: int | None = Field(default=None, ge=1, le=1000)



class CallbackIn(Storable):
    """The short form: a `notifyq.http` job from a URL (or a configured endpoint) and a body."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, min_length=1, max_length=2048)
    endpoint: str | None = Field(default=None, min_length=1, max_length=63)
    method: str = Field(default="POST", pattern="^(GET|POST|PUT|PATCH|DELETE)$")
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    timeout_seconds: float = Field(default=30.0, gt=0, le=300, allow_inf_nan=False)
    queue: str = Field(default="default", pattern=QUEUE_PATTERN.pattern)
    run_at: datetime | None = None
    delay_seconds: float | None = Field(default=None, ge=0, le=MAX_DELAY_SECONDS, allow_inf_nan=False)
    dedup_key: str | None = Field(default=None, min_length=1, max_length=512)
    max_attempts: int | None = Field(default=None, ge=1, le=1000)

    def job(self) -> JobIn:
        payload: dict[str, Any] = {"method": self.method, "headers": self.headers, "body": self.body,
                                   "timeout_seconds": self.timeout_seconds}  # fmt: skip
        payload["url" if self.url is not None else "endpoint"] = (
            self.url if self.url is not None else self.endpoint
        )
        return JobIn(task=CALLBACK_TASK, payload=payload, queue=self.queue, run_at=self.run_at,
                     delay_seconds=self.delay_seconds, dedup_key=self.dedup_key,
                     max_attempts=self.max_attempts)  # fmt: skip


class Created(BaseModel):
    id: int
    deduplicated: bool = Field(description="True: a job with this dedup_key existed; this is its id.")


class JobOut(BaseModel):
    id: int
    queue: str
    task: str
    payload: Any = Field(description="The payload; null when it is given in payload_text instead.")
    payload_text: str | None = Field(
        description=f"Only for a payload nested deeper than {MAX_DEPTH} levels (SQL producers may): "
        "its JSON text."
    )
    priority: int
    state: str
    attempts: int
    max_attempts: int | None
    snoozes: int = Field(description="Times it was put off without spending an attempt (Retry-After).")
    run_at: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_error: str | None
    result: Any
    result_text: str | None = Field(description="Like payload_text, for the result.")
    dedup_key: str | None
    schedule: str | None


class ScheduleIn(Storable):
    """A schedule, as `notifyq.schedule()` takes it; what is not given takes the column's default."""

    model_config = ConfigDict(extra="forbid")

    cron: str = Field(min_length=1, max_length=200)
    task: str = Field(min_length=1, max_length=200)
    payload: Any = Field(default_factory=dict)
    queue: str = Field(default="default", pattern=QUEUE_PATTERN.pattern)
    timezone: str = Field(default="UTC", min_length=1, max_length=100)
    priority: int = Field(default=0, ge=-1000, le=1000)
    max_attempts: int | None = Field(default=None, ge=1, le=1000)
    backfill_seconds: float = Field(default=0, ge=0, le=366 * 86400, allow_inf_nan=False)
    enabled: bool = True
    skip_overlap: bool = False


class ScheduleOut(BaseModel):
    name: str
    cron: str
    timezone: str
    queue: str
    task: str
    payload: Any
    payload_text: str | None = Field(description="As in a job.")
    priority: int
    max_attempts: int | None
    backfill_seconds: float
    enabled: bool
    skip_overlap: bool
    source: str
    last_tick: datetime | None
    next_tick: datetime | None
    error: str | None


class Problem(BaseModel):
    detail: str


class Invalid(BaseModel):
    detail: list[dict[str, Any]]


def invalid(field: str, message: str) -> JSONResponse:
    """422 in FastAPI's own shape, naming the field, so a client handles one kind of error."""
    return JSONResponse({"detail": [{"loc": ["body", field], "msg": message, "type": "value_error"}]}, 422)


class BodyLimit:
    """Refuses a body over MAX_BODY_BYTES with 413, whether it announces its length or streams it in
    chunks (a chunked body never says how long it is, and FastAPI would read it all into memory)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            await self._refuse(send)
            return
        seen = 0
        refused = False

        async def counted() -> Message:
            # Past the limit, the 413 goes out at once and the application is told the client left: it
            # stops reading, and whatever it answers is dropped (FastAPI would make any error a 400).
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY_BYTES:
                    refused = True
                    await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, unless_refused)

    @staticmethod
    async def _refuse(send: Send) -> None:
        body = json.dumps({"detail": f"the body may be at most {MAX_BODY_BYTES} bytes"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class Api:
    """The application and what it needs: a store of its own, the callback endpoints, the token cache."""

    def __init__(
        self,
        store: Store,
        endpoints: dict[str, Endpoint],
        check_url: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.endpoints = endpoints
        self.check_url = check_url  # resolves a callback URL's host and applies the SSRF rule
        self.tokens = TokenCache()
        self._log = logs.get("api")
        self._refused_at = 0.0
        self._refused = 0
        self.app = self._build()

    async def authorize(self, request: Request) -> Token:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.startswith(PREFIX) or len(presented) > 200:
            self._note_refused("missing or malformed bearer token", request)
            raise HTTPException(401, "a bearer token is needed (notifyq tokens create)",
                                headers={"www-authenticate": "Bearer"})  # fmt: skip
        key = digest(presented.strip())
        cached, token = self.tokens.get(key)
        if not cached:
            token = None
            async with self.store.connection() as conn:
                row = await conn.fetchrow(self.store.query("token_by_hash"), key)
            if row is not None and matches(bytes(row["token_hash"]), key):
                token = Token(row["name"], frozenset(row["queues"]), row["can_write"])
            self.tokens.put(key, token)
        if token is None:
            self._note_refused("unknown or revoked token", request)
            raise HTTPException(401, "unknown or revoked token", headers={"www-authenticate": "Bearer"})
        return token

    def _note_refused(self, why: str, request: Request) -> None:
        """Refused tokens are logged at most once every 10 s (a flood must not flood the log), never
        with the token."""
        self._refused += 1
        now = anyio.current_time()
        if now - self._refused_at >= 10.0:
            client = request.client.host if request.client else "unknown"
            self._log.warning("api_token_refused", reason=why, client=client, refused=self._refused)
            self._refused_at, self._refused = now, 0

    def _build(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            yield

        app = FastAPI(
            title="notifyq",
            version="1",
            openapi_url="/v1/openapi.json",
            docs_url=None,
            redoc_url=None,
            lifespan=lifespan,
        )
        # A default, not an Annotated alias: with postponed annotations FastAPI resolves a parameter's
        # type by name in this module, and a local alias is not there.
        auth = Depends(self.authorize)
        errors: dict[int | str, dict[str, Any]] = {
            401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem},
            409: {"model": Problem, "description": CONFLICT},
            413: {"model": Problem}, 422: {"model": Invalid}, 503: {"model": Problem},
        }  # fmt: skip

        @app.middleware("http")
        async def unavailable(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            try:
                return await call_next(request)
            except LockUnavailable:  # lock_timeout (server.py) ran out
                said = "the row is locked by another session (an open transaction); try again"
                return JSONResponse({"detail": said}, 409)
            except StatementTimeout:
                return JSONResponse({"detail": "the database did not answer in time; try again"}, 503)
            except (DatabaseUnavailable, OSError):
                return JSONResponse({"detail": "the database is unavailable; try again"}, 503)

        app.add_middleware(BodyLimit)

        @app.exception_handler(RequestValidationError)
        async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
            detail = [
                {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                for e in exc.errors()
            ]
            return JSONResponse({"detail": detail}, 422)

        @app.post(
            "/v1/jobs", status_code=201, response_model=Created, responses={200: {"model": Created}, **errors}
        )
        async def create_job(job: JobIn, response: Response, token: Token = auth) -> Any:
            return await self._enqueue(job, token, response)

        @app.post("/v1/callbacks", status_code=201, response_model=Created,
                  responses={200: {"model": Created}, **errors})  # fmt: skip
        async def create_callback(callback: CallbackIn, response: Response, token: Token = auth) -> Any:
            if (callback.url is None) == (callback.endpoint is None):
                return invalid("url", "give exactly one of url and endpoint")
            try:
                job = callback.job()
            except ValidationError as exc:  # what the short form's own checks could not see
                return invalid("body", str(exc.errors()[0].get("msg", exc)))
            return await self._enqueue(job, token, response)

        @app.get("/v1/jobs/{job_id}", response_model=JobOut, responses=errors)
        async def get_job(job_id: int, token: Token = auth) -> Any:
            return await self._job(job_id, token)

        @app.post(
            "/v1/jobs/{job_id}/cancel", response_model=JobOut, responses={409: {"model": Problem}, **errors}
        )
        async def cancel_job(job_id: int, token: Token = auth) -> Any:
            return await self._act(job_id, token, "cancel_job", "cancelled")

        @app.post(
            "/v1/jobs/{job_id}/retry", response_model=JobOut, responses={409: {"model": Problem}, **errors}
        )
        async def retry_job(job_id: int, token: Token = auth) -> Any:
            return await self._act(job_id, token, "retry_job", "queued")

        @app.get("/v1/schedules/{name}", response_model=ScheduleOut, responses=errors)
        async def get_schedule(name: str, token: Token = auth) -> Any:
            return await self._schedule(name, token)

        @app.put("/v1/schedules/{name}", response_model=ScheduleOut, responses=errors)
        async def put_schedule(name: str, schedule: ScheduleIn, token: Token = auth) -> Any:
            self._writes(token, schedule.queue)
            if len(name) > 200 or unstorable(name, "name"):
                return invalid("name", "a schedule name is 1 to 200 characters, with no NUL")
            if "\ufffd" in name:  # what the path decoder put for percent-escapes that are not UTF-8
                return invalid("name", "the name in the path is not valid UTF-8 once its %-escapes are read")
            try:  # what only the parser can judge, judged here rather than left to fail at every pass
                cron.parse(schedule.cron, schedule.timezone)
            except cron.CronError as exc:
                return invalid("timezone" if "time zone" in str(exc) else "cron", str(exc))
            refused = await self._callback_refusal(schedule.task, schedule.payload)
            if refused is not None:
                return refused
            existing = await self._schedules_named(name)
            if existing and not token.reaches(existing[0].queue):
                raise HTTPException(404, f"no schedule {name!r}")
            try:
                async with self.store.connection() as conn:
                    await conn.execute(
                        self.store.query("api_put_schedule"),
                        name, schedule.cron, schedule.task, json.dumps(schedule.payload), schedule.queue,
                        schedule.timezone, schedule.priority, schedule.max_attempts,
                        schedule.backfill_seconds, schedule.enabled, schedule.skip_overlap,
                    )  # fmt: skip
            except QueryError as exc:
                return self._refusal(exc)
            return await self._schedule(name, token)

        @app.delete("/v1/schedules/{name}", status_code=204, responses=errors)
        async def delete_schedule(name: str, token: Token = auth) -> Response:
            found = await self._schedules_named(name)
            if not found or not token.reaches(found[0].queue):
                raise HTTPException(404, f"no schedule {name!r}")
            self._writes(token, found[0].queue)
            async with self.store.connection() as conn:
                await conn.execute(self.store.query("api_delete_schedule"), name)
            return Response(status_code=204)

        return app

    async def _callback_refusal(self, task: str, payload: Any) -> JSONResponse | None:
        """A 422 for a callback payload that cannot be sent, or None (any other task: None)."""
        if task != CALLBACK_TASK:
            return None
        try:
            call = parse(payload, self.endpoints)
            if call.endpoint is None and self.check_url is not None:
                await self.check_url(call.url)  # at enqueue, and again at every attempt
        except PayloadError as exc:
            return invalid("payload", str(exc))
        except Refused as exc:
            return invalid("payload", f"url: {exc}")
        except LookupBusy as exc:  # not the request's fault: the same request may pass in a moment
            return JSONResponse({"detail": f"url: {exc}; try again"}, 503, headers={"retry-after": "5"})
        return None

    async def _schedules_named(self, name: str) -> list[Any]:
        """The schedule so named, if any; a name no schedule can have (a NUL, an unpaired surrogate, over
        200 characters, bytes that were not UTF-8) is simply not found."""
        if len(name) > 200 or unstorable(name, "name") or "\ufffd" in name:
            return []
        return list(await self.store.list_schedules(name))

    def _writes(self, token: Token, queue: str) -> None:
        if not token.reaches(queue):
            raise HTTPException(403, f"token {token.name!r} does not reach queue {queue!r}")
        if not token.can_write:
            raise HTTPException(403, f"token {token.name!r} may only read")

    async def _enqueue(self, job: JobIn, token: Token, response: Response) -> Any:
        self._writes(token, job.queue)
        refused = await self._callback_refusal(job.task, job.payload)
        if refused is not None:
            return refused
        delay = timedelta(seconds=job.delay_seconds) if job.delay_seconds is not None else None
        try:
            async with self.store.connection() as conn, conn.transaction():
                job_id = await conn.fetchval(
                    self.store.query("enqueue"), job.task, json.dumps(job.payload), job.queue, job.run_at,
                    job.priority, job.dedup_key, job.max_attempts, delay,
                )  # fmt: skip
                # A row this transaction wrote is new; the holder of a dedup key is older.
                created = await conn.fetchval(self.store.query("api_job_created"), job_id)
        except QueryError as exc:
            return self._refusal(exc)
        if not created:
            holder = await self.store.show_job(job_id)
            if holder is None or not token.reaches(holder.queue):
                # dedup keys are one namespace across queues (the SQL contract): never name a job this
                # token may not see, not even by its id.
                raise HTTPException(409, "dedup_key is held by a job outside this token's queues")
            response.status_code = 200
        response.headers["location"] = f"/v1/jobs/{job_id}"
        return Created(id=job_id, deduplicated=not created)

    def _refusal(self, exc: QueryError) -> JSONResponse:
        """A value the database refused (SQLSTATE class 22, data, or 23, constraints; its own checks name
        the column: `notifyq.jobs.payload: ...`), as a 422 naming the field; anything else is raised."""
        if not (exc.sqlstate or "").startswith(("22", "23")):
            raise exc
        text = str(exc)
        found = _FIELD.search(text)
        return invalid(found.group(1) if found else "body", text.split(": ", 1)[-1])

    async def _job(self, job_id: int, token: Token) -> JobOut:
        if not 0 < job_id < 2**63:
            raise HTTPException(404, f"no job {job_id}")
        detail = await self.store.show_job(job_id)
        if detail is None or not token.reaches(detail.queue):
            raise HTTPException(404, f"no job {job_id}")
        payload, payload_text = presentable(detail.payload)
        result, result_text = presentable(detail.result) if detail.result is not None else (None, None)
        return JobOut(
            id=detail.id, queue=detail.queue, task=detail.task, payload=payload, payload_text=payload_text,
            priority=detail.priority, state=detail.state, attempts=detail.attempts, snoozes=detail.snoozes,
            max_attempts=detail.max_attempts, run_at=detail.run_at, created_at=detail.created_at,
            started_at=detail.started_at, finished_at=detail.finished_at, last_error=detail.last_error,
            result=result, result_text=result_text, dedup_key=detail.dedup_key, schedule=detail.schedule,
        )  # fmt: skip

    async def _act(self, job_id: int, token: Token, query: str, wanted: str) -> JobOut:
        current = await self._job(job_id, token)
        self._writes(token, current.queue)
        async with self.store.connection() as conn:
            state = await conn.fetchval(self.store.query(query), job_id)
        if state != wanted:
            raise HTTPException(409, f"job {job_id} is {state}; it cannot be {wanted} now")
        return await self._job(job_id, token)

    async def _schedule(self, name: str, token: Token) -> ScheduleOut:
        found = await self._schedules_named(name)
        if not found or not token.reaches(found[0].queue):
            raise HTTPException(404, f"no schedule {name!r}")
        s = found[0]
        payload, payload_text = presentable(s.payload)
        return ScheduleOut(
            name=s.name, cron=s.cron, timezone=s.timezone, queue=s.queue, task=s.task,
            payload=payload, payload_text=payload_text, priority=s.priority, max_attempts=s.max_attempts,
            backfill_seconds=s.backfill_seconds, enabled=s.enabled, skip_overlap=s.skip_overlap,
            source=s.source, last_tick=s.last_tick, next_tick=s.next_tick, error=s.error,
        )  # fmt: skip
