"""How a classified failure (`lakehouse.query.failures.Failure`) becomes the gRPC status a Flight SQL
client sees.

Two limits of pyarrow.flight shape the statuses (see docs/flightsql.md):
* its transport cannot send RESOURCE_EXHAUSTED: resource failures go out as UNAVAILABLE;
* a Python exception that is not a `FlightError` reaches the client with its traceback appended
  ("Detail: Python exception: Traceback …"), and the only `FlightError`s are INTERNAL, UNKNOWN,
  UNAVAILABLE, CANCELLED, DEADLINE_EXCEEDED, UNAUTHENTICATED and PERMISSION_DENIED.
  INVALID_ARGUMENT and UNIMPLEMENTED therefore use pyarrow's `ArrowInvalid`/`ArrowNotImplementedError`
  subclasses whose traceback cannot be formatted: pyarrow then falls back to the class name, so the
  detail reads "Python exception: InvalidArgument". A self-check at import confirms the fallback on
  this Python; if it ever stops holding, those codes degrade to UNKNOWN rather than leak a traceback.
"""

from __future__ import annotations

import traceback

import pyarrow as pa
import pyarrow.flight as flight

from spanlake.lakehouse.query.failures import Code, Failure


def to_flight_error(failure: Failure) -> Exception:
    """The exception a FlightServerBase handler raises so the client sees the failure's code and message."""
    if failure.code is Code.INVALID_ARGUMENT:
        return InvalidArgument(failure.message) if _TRACEBACK_HIDDEN else flight.FlightServerError(failure.message)
    if failure.code is Code.UNIMPLEMENTED:
        return Unimplemented(failure.message) if _TRACEBACK_HIDDEN else flight.FlightServerError(failure.message)
    if failure.code in (Code.RESOURCE_EXHAUSTED, Code.UNAVAILABLE):
        return flight.FlightUnavailableError(failure.message)
    if failure.code is Code.PERMISSION_DENIED:
        return flight.FlightUnauthorizedError(failure.message)
    if failure.code is Code.DEADLINE_EXCEEDED:
        return flight.FlightTimedOutError(failure.message)
    if failure.code is Code.CANCELLED:
        return flight.FlightCancelledError(failure.message)
    return flight.FlightInternalError(failure.message)


class _TracebackHidden(Exception):
    pass


class _ClientFacing:
    """Makes `traceback.format_exception` fail on this exception, so pyarrow's status detail
    falls back to the class name instead of the server's traceback. Never log these."""

    @property
    def __suppress_context__(self) -> bool:
        raise _TracebackHidden


class InvalidArgument(_ClientFacing, pa.ArrowInvalid):
    """Sent as gRPC INVALID_ARGUMENT."""


class Unimplemented(_ClientFacing, pa.ArrowNotImplementedError):
    """Sent as gRPC UNIMPLEMENTED."""


# What a handler may raise as is: the exceptions that already carry a clean status.
CLIENT_FACING = (flight.FlightError, InvalidArgument, Unimplemented)


def _traceback_formatting_fails() -> bool:
    probe = InvalidArgument("self-check")
    try:
        traceback.format_exception(type(probe), probe, None)
    except _TracebackHidden:
        return True
    return False


_TRACEBACK_HIDDEN = _traceback_formatting_fails()
