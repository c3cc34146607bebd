"""Interned strings and descriptors (span, span location, log, metric, property set), with stable ids.

micromegas identifies these by the address of a `&'static` value; spanlake gives each one a small
integer from one process-wide counter, so ids never collide across kinds. A block's dependency
buffer resolves the ids its events use. Registration is rare (once per call site or name), so it
takes a lock; reads on the flush path are plain dict lookups.
"""

from __future__ import annotations

import itertools
import threading
from typing import NamedTuple

# Ids handed out per block for dynamic names (span_async_named, span_scope_named) start here, far
# above the registry's counter, so they never collide with interned ids.
DYNAMIC_ID_BASE = 1 << 62

# Levels as micromegas numbers them.
FATAL, ERROR, WARN, INFO, DEBUG, TRACE = 1, 2, 3, 4, 5, 6


class SpanDesc(NamedTuple):
    """SpanRecord fields; the string fields hold interned string ids."""

    id: int
    name: int
    target: int
    module_path: int
    file: int
    line: int
    lod: int


class LocationDesc(NamedTuple):
    """SpanLocationRecord fields (a span site whose name is given per call)."""

    id: int
    target: int
    module_path: int
    file: int
    line: int
    lod: int


class LogDesc(NamedTuple):
    """LogMetadataRecord fields."""

    id: int
    fmt_str: int
    target: int
    module_path: int
    file: int
    line: int
    level: int


class MetricDesc(NamedTuple):
    """MetricMetadataDependency fields."""

    id: int
    name: int
    unit: int
    target: int
    file: int
    line: int
    lod: int


# Span level of detail (micromegas `Verbosity`): Min 1, Med 2, Max 3.
LOD_MIN = 1


class Registry:
    """The process-wide table of interned strings and descriptors, by id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._string_ids: dict[str, int] = {}
        self.strings: dict[int, str] = {}
        self.spans: dict[int, SpanDesc] = {}
        self.locations: dict[int, LocationDesc] = {}
        self.logs: dict[int, LogDesc] = {}
        self.metrics: dict[int, MetricDesc] = {}
        self.property_sets: dict[int, tuple[tuple[int, int], ...]] = {}
        self._keys: dict[tuple, int] = {}

    def intern_string(self, value: str) -> int:
        """The id of `value` as an interned string."""
        found = self._string_ids.get(value)
        if found is not None:
            return found
        with self._lock:
            return self._intern_locked(value)

    def _intern_locked(self, value: str) -> int:
        found = self._string_ids.get(value)
        if found is None:
            found = next(self._ids)
            self.strings[found] = value
            self._string_ids[value] = found
        return found

    def _register(self, key: tuple, build: type, table: dict, *fields: str | int) -> int:
        """Returns the id of the descriptor `key`, creating it from `fields` (str → interned) once."""
        found = self._keys.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._keys.get(key)
            if found is None:
                found = next(self._ids)
                values = [self._intern_locked(f) if isinstance(f, str) else f for f in fields]
                table[found] = build(found, *values)
                self._keys[key] = found
            return found

    def span(self, name: str, target: str, file: str, line: int) -> int:
        """The id of a span descriptor (name, target, file, line)."""
        return self._register(
            ("span", name, target, file, line), SpanDesc, self.spans, name, target, target, file, line, LOD_MIN
        )

    def location(self, target: str, file: str, line: int) -> int:
        """The id of a span location descriptor (a span named at run time)."""
        return self._register(
            ("location", target, file, line), LocationDesc, self.locations, target, target, file, line, LOD_MIN
        )

    def log(self, level: int, fmt_str: str, target: str, module_path: str, file: str, line: int) -> int:
        """The id of a log call site's descriptor."""
        return self._register(
            ("log", level, fmt_str, target, module_path, file, line),
            LogDesc,
            self.logs,
            fmt_str,
            target,
            module_path,
            file,
            line,
            level,
        )

    def metric(self, name: str, unit: str, target: str, file: str, line: int) -> int:
        """The id of a metric descriptor (name, unit, call site)."""
        return self._register(
            ("metric", name, unit, target, file, line),
            MetricDesc,
            self.metrics,
            name,
            unit,
            target,
            file,
            line,
            LOD_MIN,
        )

    def property_set(self, properties: dict[str, str]) -> int:
        """The id of an interned property set (keys and values as strings)."""
        # micromegas sorts a set's properties by name, descending, and interns the set.
        items = tuple(sorted(((str(k), str(v)) for k, v in properties.items()), reverse=True))
        found = self._keys.get(("properties", items))
        if found is not None:
            return found
        with self._lock:
            found = self._keys.get(("properties", items))
            if found is None:
                found = next(self._ids)
                self.property_sets[found] = tuple((self._intern_locked(k), self._intern_locked(v)) for k, v in items)
                self._keys[("properties", items)] = found
            return found


REGISTRY = Registry()
