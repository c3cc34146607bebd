"""The transit type metadata (`UserDefinedType`s) spanlake's streams declare, identical to micromegas's.

Names, member names, `type_name` strings, sizes and offsets are those the Rust SDK sends (see the
fixtures' `streams/*.cbor`), so one decoder reads blocks from both. Each stream lists its queue
types in declaration order (the 1-byte type index on the wire is that position), then the nested
("secondary") types they mention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Member:
    """One member of a transit type, as the stream metadata declares it."""

    name: str
    type_name: str
    offset: int
    size: int
    is_reference: bool = False

    def to_wire(self) -> dict[str, Any]:
        """The member as the CBOR map of stream metadata."""
        return {
            "name": self.name,
            "type_name": self.type_name,
            "offset": self.offset,
            "size": self.size,
            "is_reference": self.is_reference,
        }


@dataclass(frozen=True)
class Udt:
    """A transit type (user-defined type) as the stream metadata declares it."""

    name: str
    size: int  # 0 = dynamically sized: the object is framed as u32 byte count + body
    members: tuple[Member, ...] = ()
    is_reference: bool = False

    def to_wire(self) -> dict[str, Any]:
        """The type as the CBOR map of stream metadata."""
        return {
            "name": self.name,
            "size": self.size,
            "members": [m.to_wire() for m in self.members],
            "is_reference": self.is_reference,
        }


def _ref(name: str, target: str, offset: int) -> Member:
    return Member(name, target, offset, 8, True)


_STATIC_SPAN = "& 'static SpanMetadata"
_STATIC_LOCATION = "& 'static SpanLocation"
_STATIC_LOG = "& 'static LogMetadata < 'static >"
_STATIC_METRIC = "& 'static StaticMetricMetadata"
_STATIC_PROPERTIES = "& 'static PropertySet"
_PTR = "* const u8"

# Reference UDTs: a 16-byte string handle whose 8-byte `id` resolves to a string dependency.
# In memory they are {ptr u64 @0, len u32 @8, (StaticStringRef: codec u8 @12)}; only `id` is declared.
STRING_ID = Udt("StringId", 16, (Member("id", "usize", 0, 8, True),), is_reference=True)
STATIC_STRING_REF = Udt("StaticStringRef", 16, (Member("id", "usize", 0, 8, True),), is_reference=True)
PROPERTY = Udt("Property", 32, (Member("name", "StaticStringRef", 0, 16), Member("value", "StaticStringRef", 16, 16)))

# Dynamically sized dependencies (bodies described in transit_encode).
STATIC_STRING = Udt("StaticString", 0)
STATIC_STRING_DEPENDENCY = Udt("StaticStringDependency", 0)
PROPERTY_SET_DEPENDENCY = Udt("PropertySetDependency", 0)


def _thread_span(name: str) -> Udt:
    return Udt(name, 16, (_ref("thread_span_desc", _STATIC_SPAN, 0), Member("time", "i64", 8, 8)))


def _thread_named_span(name: str) -> Udt:
    return Udt(
        name,
        32,
        (
            _ref("thread_span_location", _STATIC_LOCATION, 0),
            Member("name", "StringId", 8, 16),
            Member("time", "i64", 24, 8),
        ),
    )


def _async_span(name: str) -> Udt:
    return Udt(
        name,
        40,
        (
            _ref("span_desc", _STATIC_SPAN, 0),
            Member("span_id", "u64", 8, 8),
            Member("parent_span_id", "u64", 16, 8),
            Member("depth", "u32", 32, 4),
            Member("time", "i64", 24, 8),
        ),
    )


def _async_named_span(name: str) -> Udt:
    return Udt(
        name,
        56,
        (
            _ref("span_location", _STATIC_LOCATION, 0),
            Member("name", "StringId", 8, 16),
            Member("span_id", "u64", 24, 8),
            Member("parent_span_id", "u64", 32, 8),
            Member("depth", "u32", 48, 4),
            Member("time", "i64", 40, 8),
        ),
    )


BEGIN_THREAD_SPAN = _thread_span("BeginThreadSpanEvent")
END_THREAD_SPAN = _thread_span("EndThreadSpanEvent")
BEGIN_THREAD_NAMED_SPAN = _thread_named_span("BeginThreadNamedSpanEvent")
END_THREAD_NAMED_SPAN = _thread_named_span("EndThreadNamedSpanEvent")
BEGIN_ASYNC_SPAN = _async_span("BeginAsyncSpanEvent")
END_ASYNC_SPAN = _async_span("EndAsyncSpanEvent")
BEGIN_ASYNC_NAMED_SPAN = _async_named_span("BeginAsyncNamedSpanEvent")
END_ASYNC_NAMED_SPAN = _async_named_span("EndAsyncNamedSpanEvent")

SPAN_RECORD = Udt(
    "SpanRecord",
    48,
    (
        Member("id", "u64", 0, 8),
        _ref("name", _PTR, 8),
        _ref("target", _PTR, 16),
        _ref("module_path", _PTR, 24),
        _ref("file", _PTR, 32),
        Member("line", "u32", 40, 4),
        Member("lod", "u32", 44, 4),
    ),
)
SPAN_LOCATION_RECORD = Udt(
    "SpanLocationRecord",
    40,
    (
        Member("id", "u64", 0, 8),
        _ref("target", _PTR, 8),
        _ref("module_path", _PTR, 16),
        _ref("file", _PTR, 24),
        Member("line", "u32", 32, 4),
        Member("lod", "u32", 36, 4),
    ),
)

LOG_STATIC_STR = Udt("LogStaticStrEvent", 16, (_ref("desc", _STATIC_LOG, 0), Member("time", "i64", 8, 8)))
LOG_STRING = Udt("LogStringEventV2", 0)
LOG_STATIC_STR_INTEROP = Udt(
    "LogStaticStrInteropEvent",
    48,
    (
        Member("time", "i64", 32, 8),
        Member("level", "u32", 40, 4),
        Member("target", "StringId", 0, 16),
        Member("msg", "StringId", 16, 16),
    ),
)
LOG_STRING_INTEROP = Udt("LogStringInteropEventV3", 0)
TAGGED_LOG_STRING = Udt("TaggedLogString", 0)
LOG_METADATA_RECORD = Udt(
    "LogMetadataRecord",
    48,
    (
        Member("id", "u64", 0, 8),
        _ref("fmt_str", _PTR, 8),
        _ref("target", _PTR, 16),
        _ref("module_path", _PTR, 24),
        _ref("file", _PTR, 32),
        Member("line", "u32", 40, 4),
        Member("level", "u32", 44, 4),
    ),
)

INTEGER_METRIC = Udt(
    "IntegerMetricEvent",
    24,
    (_ref("desc", _STATIC_METRIC, 0), Member("value", "u64", 8, 8), Member("time", "i64", 16, 8)),
)
FLOAT_METRIC = Udt(
    "FloatMetricEvent",
    24,
    (_ref("desc", _STATIC_METRIC, 0), Member("value", "f64", 8, 8), Member("time", "i64", 16, 8)),
)
TAGGED_FLOAT_METRIC = Udt(
    "TaggedFloatMetricEvent",
    32,
    (
        _ref("desc", _STATIC_METRIC, 0),
        _ref("properties", _STATIC_PROPERTIES, 8),
        Member("value", "f64", 16, 8),
        Member("time", "i64", 24, 8),
    ),
)
TAGGED_INTEGER_METRIC = Udt(
    "TaggedIntegerMetricEvent",
    32,
    (
        _ref("desc", _STATIC_METRIC, 0),
        _ref("properties", _STATIC_PROPERTIES, 8),
        Member("value", "u64", 16, 8),
        Member("time", "i64", 24, 8),
    ),
)
METRIC_METADATA_DEPENDENCY = Udt(
    "MetricMetadataDependency",
    48,
    (
        Member("id", "u64", 0, 8),
        _ref("name", _PTR, 8),
        _ref("unit", _PTR, 16),
        _ref("target", _PTR, 24),
        _ref("file", _PTR, 32),
        Member("line", "u32", 40, 4),
        Member("lod", "u32", 44, 4),
    ),
)


@dataclass(frozen=True)
class StreamLayout:
    """The metadata of one kind of stream: its queue types (wire index = position) + secondary types."""

    objects: tuple[Udt, ...]
    object_secondaries: tuple[Udt, ...]
    dependencies: tuple[Udt, ...]
    dependency_secondaries: tuple[Udt, ...]

    def objects_metadata(self) -> list[dict[str, Any]]:
        """The `objects_metadata` of the stream's StreamInfo."""
        return [udt.to_wire() for udt in self.objects + self.object_secondaries]

    def dependencies_metadata(self) -> list[dict[str, Any]]:
        """The `dependencies_metadata` of the stream's StreamInfo."""
        return [udt.to_wire() for udt in self.dependencies + self.dependency_secondaries]

    def object_index(self, udt: Udt) -> int:
        """Wire index of an object (queue) type."""
        return self.objects.index(udt)

    def dependency_index(self, udt: Udt) -> int:
        """Wire index of a dependency type."""
        return self.dependencies.index(udt)


THREAD_LAYOUT = StreamLayout(
    objects=(
        BEGIN_THREAD_SPAN,
        END_THREAD_SPAN,
        BEGIN_THREAD_NAMED_SPAN,
        END_THREAD_NAMED_SPAN,
        BEGIN_ASYNC_SPAN,
        END_ASYNC_SPAN,
        BEGIN_ASYNC_NAMED_SPAN,
        END_ASYNC_NAMED_SPAN,
    ),
    object_secondaries=(STRING_ID,),
    dependencies=(SPAN_RECORD, SPAN_LOCATION_RECORD, STATIC_STRING),
    dependency_secondaries=(),
)

LOG_LAYOUT = StreamLayout(
    objects=(LOG_STATIC_STR, LOG_STRING, LOG_STATIC_STR_INTEROP, LOG_STRING_INTEROP, TAGGED_LOG_STRING),
    object_secondaries=(STATIC_STRING_REF, STRING_ID),
    dependencies=(STATIC_STRING, STATIC_STRING_DEPENDENCY, LOG_METADATA_RECORD, PROPERTY_SET_DEPENDENCY),
    dependency_secondaries=(PROPERTY, STATIC_STRING_REF),
)

METRICS_LAYOUT = StreamLayout(
    objects=(INTEGER_METRIC, FLOAT_METRIC, TAGGED_FLOAT_METRIC, TAGGED_INTEGER_METRIC),
    object_secondaries=(),
    dependencies=(STATIC_STRING, STATIC_STRING_DEPENDENCY, METRIC_METADATA_DEPENDENCY, PROPERTY_SET_DEPENDENCY),
    dependency_secondaries=(PROPERTY, STATIC_STRING_REF),
)

# Wire type indices of the events the SDK writes (position in the stream's object list).
LOG_STRING_INDEX = LOG_LAYOUT.object_index(LOG_STRING)
TAGGED_LOG_INDEX = LOG_LAYOUT.object_index(TAGGED_LOG_STRING)
INTEGER_METRIC_INDEX = METRICS_LAYOUT.object_index(INTEGER_METRIC)
FLOAT_METRIC_INDEX = METRICS_LAYOUT.object_index(FLOAT_METRIC)
TAGGED_FLOAT_METRIC_INDEX = METRICS_LAYOUT.object_index(TAGGED_FLOAT_METRIC)
TAGGED_INTEGER_METRIC_INDEX = METRICS_LAYOUT.object_index(TAGGED_INTEGER_METRIC)
