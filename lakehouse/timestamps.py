"""RFC3339 timestamps with nanosecond precision (Python's datetime stops at microseconds)."""

from __future__ import annotations

import datetime as dt
import re

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def ns_to_datetime(ns: int) -> dt.datetime:
    """PostgreSQL keeps microseconds; the nanoseconds below are dropped, as micromegas does."""
    return _EPOCH + dt.timedelta(microseconds=ns // 1000)


def datetime_to_ns(value: dt.datetime) -> int:
    """ns since the Unix epoch of an aware datetime (as PostgreSQL returns timestamptz)."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


# The instants a timestamp in ns fits (Arrow's, DataFusion's, PostgreSQL's as spanlake stores them): int64.
MIN_NS = -(2**63)
MAX_NS = 2**63 - 1
REPRESENTABLE = "between 1677-09-21 and 2262-04-11, the times a 64-bit count of nanoseconds holds"


class TimeOutOfRange(ValueError):
    """A well-formed time that no 64-bit timestamp holds."""


def representable_ns(ns: int, text: str) -> int:
    """`ns` (read from `text`) if a 64-bit timestamp holds it; TimeOutOfRange naming `text` otherwise."""
    if not MIN_NS <= ns <= MAX_NS:
        raise TimeOutOfRange(f"{text!r} is out of range: a time must be {REPRESENTABLE}")
    return ns


_RFC3339 = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9})\d*)?([Zz]|[+-]\d{2}:\d{2})$")


def parse_rfc3339_ns(text: str) -> int:
    """'2024-05-01T12:00:00.123456789+00:00' → ns since the Unix epoch. ValueError if malformed or out
    of the 64-bit range."""
    match = _RFC3339.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not an RFC3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, offset = match.group(7) or "", match.group(8)
    tz = dt.UTC if offset in ("Z", "z") else _offset(offset)
    try:
        whole = dt.datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except ValueError as err:
        raise ValueError(f"not a valid RFC3339 timestamp: {text!r} ({err})") from None
    return representable_ns(int(whole.timestamp()) * 1_000_000_000 + int(fraction.ljust(9, "0")), text)


def _offset(text: str) -> dt.timezone:
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 23 or minutes > 59:
        raise ValueError(f"bad UTC offset {text!r}")
    return dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))


def format_rfc3339_ns(ns: int) -> str:
    """ns since the epoch → '2024-05-01T12:00:00.123456789+00:00' (the micromegas sink's form)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    base = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}+00:00"
