"""The gRPC request headers a Flight SQL call carries, and the middleware that authenticates each call.

pyarrow.flight shows request headers only to a `ServerMiddlewareFactory`, so the factory keeps them
(and the authenticated principal) on a per-call middleware object the handlers read back.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import pyarrow.flight as flight

from spanlake.lakehouse.timestamps import TimeOutOfRange, format_rfc3339_ns, parse_rfc3339_ns
from spanlake.server.auth import Authenticator, AuthError, Principal

MIDDLEWARE_KEY = "spanlake"
CLIENT_HEADER_PREFIX = "x-client-"
MAX_ATTRIBUTION_CHARS = 256  # attribution is logged on every query: keep what a client sends bounded

_log = logging.getLogger("spanlake.flightsql")


class HeaderError(ValueError):
    """A request header with a value spanlake cannot use; the message names the header."""


@dataclass(frozen=True)
class QueryHeaders:
    """What the query headers ask for."""

    query_range: tuple[int, int] | None  # ns since the epoch, UTC
    limit: int | None
    preserve_dictionary: bool

    def range_text(self) -> tuple[str | None, str | None]:
        """The query range as RFC3339 texts, or (None, None)."""
        if self.query_range is None:
            return None, None
        return format_rfc3339_ns(self.query_range[0]), format_rfc3339_ns(self.query_range[1])


def header_value(headers: dict[str, list[Any]], name: str) -> str | None:
    """The first value of a header, as text; None when absent or empty."""
    values = headers.get(name) or []
    if not values:
        return None
    value = values[0]
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text or None


def parse_query_headers(headers: dict[str, list[Any]]) -> QueryHeaders:
    """`query_range_begin`/`query_range_end` (RFC3339, both or neither), `limit`, `preserve_dictionary`."""
    return QueryHeaders(
        query_range=_query_range(headers),
        limit=_limit(headers),
        preserve_dictionary=(header_value(headers, "preserve_dictionary") or "").lower() == "true",
    )


def _query_range(headers: dict[str, list[Any]]) -> tuple[int, int] | None:
    begin = header_value(headers, "query_range_begin")
    end = header_value(headers, "query_range_end")
    if begin is None and end is None:
        return None
    if begin is None or end is None:
        missing = "query_range_begin" if begin is None else "query_range_end"
        raise HeaderError(f"{missing} is missing: query_range_begin and query_range_end go together")
    begin_ns = _timestamp("query_range_begin", begin)
    end_ns = _timestamp("query_range_end", end)
    if begin_ns > end_ns:
        raise HeaderError(f"query_range_begin ({begin}) is after query_range_end ({end})")
    return begin_ns, end_ns


_MAX_INT64 = 2**63 - 1
_DIGITS = re.compile(r"[0-9]+")


def _timestamp(name: str, text: str) -> int:
    try:
        return parse_rfc3339_ns(text)
    except TimeOutOfRange:
        raise HeaderError(f"{name} {text!r} is out of range: timestamps are nanoseconds in 1677..2262") from None
    except ValueError:
        raise HeaderError(f"Unable to parse {name} as a rfc3339 datetime: {text!r}") from None


def _limit(headers: dict[str, list[Any]]) -> int | None:
    text = header_value(headers, "limit")
    if text is None:
        return None
    if _DIGITS.fullmatch(text.strip()) is None:
        raise HeaderError(f"error parsing limit: {text!r} is not a non-negative integer")
    limit = int(text)
    if limit > _MAX_INT64:
        raise HeaderError(f"error parsing limit: {text!r} is larger than {_MAX_INT64}")
    return limit


def client_attribution(headers: dict[str, list[Any]], peer: str) -> dict[str, str]:
    """The `x-client-*` headers (prefix dropped: type, agent, entrypoint, session, …) and the peer."""
    client = {
        name[len(CLIENT_HEADER_PREFIX) :]: (header_value(headers, name) or "")[:MAX_ATTRIBUTION_CHARS]
        for name in headers
        if name.startswith(CLIENT_HEADER_PREFIX) and not name.endswith("-bin")
    }
    client["peer"] = peer
    return client


class CallState(flight.ServerMiddleware):
    """One call's headers and caller, read by the handlers through `context.get_middleware`."""

    def __init__(self, headers: dict[str, list[Any]], principal: Principal | None) -> None:
        self.headers = headers
        self.principal = principal


class RequestMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Authenticates every call (`authorization: Bearer …`); `authenticator=None` disables auth."""

    def __init__(self, authenticator: Authenticator | None) -> None:
        super().__init__()
        self._authenticator = authenticator

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[Any]]) -> CallState:
        """Authenticates the call (UNAUTHENTICATED when its key is not valid) and keeps its headers."""
        if self._authenticator is None:
            return CallState(headers, None)
        try:
            principal = self._authenticator.authenticate(header_value(headers, "authorization"))
        except AuthError as err:
            raise flight.FlightUnauthenticatedError(str(err)) from None
        except Exception:
            # A key-store outage is not the caller's fault: say so without details.
            _log.exception("authentication failed on %s", info.method)
            raise flight.FlightUnavailableError("authentication is unavailable, retry later") from None
        return CallState(headers, principal)
