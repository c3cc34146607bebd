"""Log entries: `info("...")` and friends, and a `logging.Handler` for the standard library.

Each call site gets a `LogMetadataRecord` descriptor (level, target = the caller's module or the
logger's name, file, line) once; a call appends one tuple to the log stream. Messages are
`LogStringEventV2` events, or `TaggedLogString` when properties are given or when the line is emitted
inside an async span of a trace: its property set then also names the span (`otel.trace_id`,
`otel.span_id` in hex, as OpenTelemetry log records do). The span's context rides in the event's
property slot and the encoder makes the block's sets (the registry interns no set per span).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from typing_extensions import override

from spanlake.tracing import dispatch as _dispatch
from spanlake.tracing import spans as _spans
from spanlake.tracing.event_records import TYPE_BITS
from spanlake.tracing.registry import DEBUG, ERROR, FATAL, INFO, REGISTRY, TRACE, WARN
from spanlake.tracing.udts import LOG_STRING_INDEX, TAGGED_LOG_INDEX

__all__ = [
    "DEBUG",
    "ERROR",
    "FATAL",
    "INFO",
    "TRACE",
    "WARN",
    "LoggingHandler",
    "debug",
    "error",
    "fatal",
    "info",
    "log",
    "set_max_level",
    "trace",
    "warn",
]

_now = time.perf_counter_ns
_getframe = sys._getframe
_max_level = [TRACE]  # levels above this (less severe) are not recorded
_call_sites: dict[tuple, tuple[int, int, Any]] = {}
_current_span_context = _spans._current_span.get  # bound once: the log hot path pays one call


def set_max_level(level: int) -> None:
    """Records only entries at least this severe (FATAL 1 … TRACE 6)."""
    if not FATAL <= level <= TRACE:
        raise ValueError(f"log level must be between {FATAL} (fatal) and {TRACE} (trace), got {level}")
    _max_level[0] = level


def _append(codes: tuple[int, int, Any], message: Any, properties: dict[str, str] | None) -> None:
    if type(message) is not str:
        message = str(message)
    stream = _dispatch.log_stream
    events = stream.events
    span = _current_span_context()
    if span[2]:  # inside a span of a trace: (property set, span context), made a set by the encoder
        events.append((codes[1], _now(), message, (REGISTRY.property_set(properties) if properties else 0, span)))
    elif properties:
        events.append((codes[1], _now(), message, REGISTRY.property_set(properties)))
    else:
        events.append((codes[0], _now(), message, 0))
    if len(events) > stream.capacity:
        stream.full()


def _codes_here(level: int, frame: Any) -> tuple[int, int, Any]:
    """(plain, tagged) event codes of the log descriptor of the calling line."""
    key = (id(frame.f_code), frame.f_lasti, level)
    found = _call_sites.get(key)
    if found is None:
        target = frame.f_globals.get("__name__", "")
        desc = REGISTRY.log(level, "", target, target, frame.f_code.co_filename, frame.f_lineno)
        # The code object is kept so that its id is never reused for another one.
        found = _call_sites[key] = (
            desc << TYPE_BITS | LOG_STRING_INDEX,
            desc << TYPE_BITS | TAGGED_LOG_INDEX,
            frame.f_code,
        )
    return found


def log(level: int, message: str, properties: dict[str, str] | None = None) -> None:
    """Records `message` at `level` (FATAL 1 … TRACE 6); `properties` tag this entry."""
    if level <= _max_level[0]:
        _append(_codes_here(level, _getframe(1)), message, properties)


def fatal(message: str, properties: dict[str, str] | None = None) -> None:
    """Records `message` at FATAL level."""
    if _max_level[0] >= FATAL:
        _append(_codes_here(FATAL, _getframe(1)), message, properties)


def error(message: str, properties: dict[str, str] | None = None) -> None:
    """Records `message` at ERROR level."""
    if _max_level[0] >= ERROR:
        _append(_codes_here(ERROR, _getframe(1)), message, properties)


def warn(message: str, properties: dict[str, str] | None = None) -> None:
    """Records `message` at WARN level."""
    if _max_level[0] >= WARN:
        _append(_codes_here(WARN, _getframe(1)), message, properties)


def info(message: str, properties: dict[str, str] | None = None) -> None:
    """Records `message` at INFO level."""
    if _max_level[0] >= INFO:
        _append(_codes_here(INFO, _getframe(1)), message, properties)


def debug(message: str, properties: dict[str, str] | None = None) -> None:
    """Records `message` at DEBUG level."""
    if _max_level[0] >= DEBUG:
        _append(_codes_here(DEBUG, _getframe(1)), message, properties)


def trace(message: str, properties: dict[str, str] | None = None) -> None:
    """Records `message` at TRACE level."""
    if _max_level[0] >= TRACE:
        _append(_codes_here(TRACE, _getframe(1)), message, properties)


def level_from_logging(levelno: int) -> int:
    """The micromegas level of a `logging` level number."""
    if levelno >= logging.CRITICAL:
        return FATAL
    if levelno >= logging.ERROR:
        return ERROR
    if levelno >= logging.WARNING:
        return WARN
    if levelno >= logging.INFO:
        return INFO
    if levelno >= logging.DEBUG:
        return DEBUG
    return TRACE


class LoggingHandler(logging.Handler):
    """Routes `logging` records into spanlake: target = logger name, file/line = the call site,
    message = the formatted record (with its traceback, if any).

    `logging.getLogger().addHandler(tracing.LoggingHandler())`. Records of spanlake's own loggers
    (`spanlake.*`) are skipped so telemetry problems never feed back into telemetry.
    """

    def __init__(self, level: int = logging.NOTSET, *, own_loggers: bool = False) -> None:
        """`own_loggers=True` keeps `spanlake.*` records too: for a handler attached to chosen loggers
        (spanlake's self-tracing routes its query audit this way)."""
        super().__init__(level)
        self._own_loggers = own_loggers
        self._descriptors: dict[tuple, tuple[int, int]] = {}

    @override
    def emit(self, record: logging.LogRecord) -> None:
        if not self._own_loggers and record.name.startswith("spanlake."):
            return
        try:
            key = (
                record.name,
                record.levelno,
                record.pathname,
                record.lineno,
                record.msg if record.args and isinstance(record.msg, str) else "",
            )
            codes = self._descriptors.get(key)
            if codes is None:
                codes = self._descriptors[key] = self._register(key, record.module)
            _append(codes, self.format(record), None)
        except Exception:
            self.handleError(record)

    @staticmethod
    def _register(key: tuple, module: str) -> tuple[int, int]:
        name, levelno, pathname, lineno, fmt_str = key
        desc = REGISTRY.log(level_from_logging(levelno), fmt_str, name, module, pathname, lineno)
        return desc << TYPE_BITS | LOG_STRING_INDEX, desc << TYPE_BITS | TAGGED_LOG_INDEX
