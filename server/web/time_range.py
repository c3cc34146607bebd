"""The time range of every screen, carried in the URL as `from` and `to`.

Each end is `now`, `now-<n><unit>` (s, m, h, d, w) or an RFC3339 timestamp, as in Grafana and
micromegas's web app; the range becomes the query range of every SQL the screen runs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from spanlake.lakehouse.timestamps import TimeOutOfRange, format_rfc3339_ns, parse_rfc3339_ns, representable_ns

_RELATIVE = re.compile(r"now(?:\s*-\s*(\d+)\s*([smhdw]))?")
_UNIT_NS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
NS = 1_000_000_000


class TimeRangeError(ValueError):
    """A `from` / `to` that cannot be read, or a range that ends before it begins."""


@dataclass(frozen=True)
class TimeRange:
    """A screen's time range: its ends in ns and as the URL wrote them."""

    begin_ns: int
    end_ns: int
    from_text: str  # as written in the URL, kept for the links of the page
    to_text: str

    @property
    def ns(self) -> tuple[int, int]:
        """The query range, (begin, end) in ns."""
        return self.begin_ns, self.end_ns

    @property
    def begin_rfc3339(self) -> str:
        """The begin as an RFC3339 timestamp."""
        return format_rfc3339_ns(self.begin_ns)

    @property
    def end_rfc3339(self) -> str:
        """The end as an RFC3339 timestamp."""
        return format_rfc3339_ns(self.end_ns)

    @property
    def query(self) -> dict[str, str]:
        """The URL parameters that reproduce this range."""
        return {"from": self.from_text, "to": self.to_text}


def parse_instant(text: str, now_ns: int) -> int:
    """`now`, `now-15m` or RFC3339 → ns since the epoch."""
    relative = _RELATIVE.fullmatch(text.strip())
    try:
        if relative is None:
            return parse_rfc3339_ns(text)
        amount, unit = relative.groups()
        return representable_ns(now_ns - (int(amount) * _UNIT_NS[unit] * NS if amount else 0), text)
    except TimeOutOfRange as err:
        raise TimeRangeError(str(err)) from None
    except ValueError:
        raise TimeRangeError(
            f"'{text}' is not a time: use now, now-15m, now-1h, now-7d… or an RFC3339 timestamp"
        ) from None


def parse_range(params: Mapping[str, str], default_from: str, default_to: str = "now") -> TimeRange:
    """The range of `from` / `to` in the URL parameters, or the defaults."""
    now_ns = time.time_ns()
    from_text = params.get("from") or default_from
    to_text = params.get("to") or default_to
    begin, end = parse_instant(from_text, now_ns), parse_instant(to_text, now_ns)
    if begin >= end:
        raise TimeRangeError(f"the time range is empty: from ({from_text}) must be before to ({to_text})")
    return TimeRange(begin, end, from_text, to_text)


def absolute(begin_ns: int, end_ns: int) -> TimeRange:
    """A fixed range written as RFC3339 in the URL."""
    return TimeRange(begin_ns, end_ns, format_rfc3339_ns(begin_ns), format_rfc3339_ns(end_ns))
