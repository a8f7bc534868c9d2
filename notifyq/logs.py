"""Logging with structlog: JSON lines off a terminal, a readable console on one.

Event names are public API (stable snake_case); job lines bind job_id, task, queue and attempt.
Payloads are never logged, and DSNs only in redacted form.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog

from notifyq.config import scrub_secrets

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


_current = [logging.INFO]  # the configured level


def _scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Hide DSN passwords in every text of a line: a driver's message or a traceback may quote one."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = scrub_secrets(value)
    return event


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure(log_format: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog once, at start-up."""
    _current[0] = _LEVELS[level]
    out = stream if stream is not None else sys.stderr
    console = log_format == "console" or (log_format == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if console
        else structlog.processors.JSONRenderer(serializer=_dumps)
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            _scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library (asyncpg does); render those records the same way,
    # one line each, so the output stays parseable and its volume bounded.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
                structlog.processors.format_exc_info,
                _scrub,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(_LEVELS[level], logging.WARNING))
    # A thread a handler started, or an object's __del__, raising: Python prints those to stderr as
    # a bare traceback, which breaks the one-JSON-line-per-event stream.
    threading.excepthook = _thread_exception
    sys.unraisablehook = _unraisable
    # Library warnings (asyncpg's about a password file others can read) as log lines, not raw stderr.
    logging.captureWarnings(True)


def _thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return  # as Python's own hook: a thread's sys.exit() is quiet
    get("thread").error(
        "thread_exception",
        thread=args.thread.name if args.thread is not None else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _unraisable(args: Any) -> None:
    get("python").warning(
        "unraisable_exception",
        message=args.err_msg or "Exception ignored in",
        object=_safe_repr(args.object),
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _safe_repr(obj: Any) -> str:
    try:
        return repr(obj)[:200]
    except BaseException:
        return f"<unprintable {type(obj).__name__}>"


def enabled(level: str) -> bool:
    """Whether lines at `level` are written: lets the job path skip building lines nobody sees."""
    return _current[0] <= _LEVELS[level]


def get(name: str) -> Any:
    """A logger for one part of the daemon."""
    return structlog.get_logger(component=name)
