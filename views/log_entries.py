"""The `log_entries` view: one row per log event of a `log` stream."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spanlake.views.columns import (
    Coded,
    dictionary_array,
    order_by_position,
    pair_codes,
    string_array,
    timestamp_array,
)
from spanlake.views.decoded import (
    BlockRowsError,
    DecodedBlock,
    ObjectGroup,
    Value,
    integer_member,
    object_members,
    string_member,
)
from spanlake.views.meta import OTLP_LOGS_FORMAT, TRANSIT_FORMAT, BlockMeta, ProcessMeta
from spanlake.views.properties import constant_properties_array, jsonb_dictionary
from spanlake.views.schema_types import BLOCK_EVENT_FIELDS, DICT_JSONB, DICT_UTF8, required
from spanlake.views.time import TickConverter
from spanlake.views.view import (
    HOUR_SECONDS,
    OtlpBlock,
    OtlpRun,
    TransitBlock,
    View,
    block_rows,
    each_process_run,
    each_run,
    own_clock,
    run_rows,
)

VIEW_SET_NAME = "log_entries"
FILE_SCHEMA_HASH = bytes([6])

SCHEMA = pa.schema(
    [
        *BLOCK_EVENT_FIELDS,
        required("target", DICT_UTF8),
        required("level", pa.int32()),
        required("msg", pa.utf8()),
        required("properties", DICT_JSONB),
        required("process_properties", DICT_JSONB),
    ]
)

# ---------------------------------------------------------------------------------------------------
# Rows
#
# Every log event type micromegas knows becomes one row, in block order. Descriptor-derived values
# (level, target, format string) are computed once per distinct descriptor and taken by index.
# A `TaggedLogString` property `target` or `level` (a level name) overrides its descriptor's.


@dataclass(frozen=True)
class _LogRows:
    positions: np.ndarray
    ticks: np.ndarray
    level: np.ndarray  # int32
    target: Coded[str]
    msg: Coded[str]
    properties: Coded[Mapping[str, str]]


LEVELS_BY_NAME = {"fatal": 1, "error": 2, "warning": 3, "info": 4, "debug": 5, "trace": 6}


def build_batch(block: DecodedBlock, meta: BlockMeta, process: ProcessMeta, convert: TickConverter) -> pa.RecordBatch:
    """The log_entries rows of one decoded `log` block (an empty batch when it holds no log event)."""
    return block_rows(_batch, block, meta, process, convert)


def run_batch(run: Sequence[TransitBlock]) -> pa.RecordBatch:
    """The log_entries rows of consecutive decoded blocks of one process sharing one clock, built at once."""
    return run_rows(_batch, run)


def _batch(
    block: DecodedBlock, process: ProcessMeta, convert: TickConverter, ids_of: Callable[[np.ndarray], list[pa.Array]]
) -> pa.RecordBatch:
    """The rows of a decoded block (or run of blocks); `ids_of` gives the block identity columns of the
    rows from their object positions."""
    parts = [read(group) for type_name, read in _READERS.items() if (group := block.group(type_name))]
    order = order_by_position([part.positions for part in parts])
    length = len(order)
    positions = np.concatenate([part.positions for part in parts])[order] if parts else np.zeros(0, np.int64)
    ticks = np.concatenate([part.ticks for part in parts])[order] if parts else np.zeros(0, np.int64)
    levels = np.concatenate([part.level for part in parts])[order] if parts else np.zeros(0, np.int32)
    columns = [
        *ids_of(positions),
        timestamp_array(convert.ticks_to_ns(ticks)),
        dictionary_array(Coded.concat([part.target for part in parts]).take(order)),
        pa.array(levels, pa.int32()),
        string_array(Coded.concat([part.msg for part in parts]).take(order)),
        _properties(Coded.concat([part.properties for part in parts]).take(order)),
        constant_properties_array(process.properties, length),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def _properties(coded: Coded[Mapping[str, str]]) -> pa.Array:
    return jsonb_dictionary(coded.codes, coded.values)


def _levels(coded: Coded[int]) -> np.ndarray:
    return coded.numbers(np.int64).astype(np.int32)  # micromegas casts u32 → i32


def _static_str_event(group: ObjectGroup) -> _LogRows:
    what = f"{group.type_name}.desc"
    desc = Coded.of(group.values("desc"))
    return _LogRows(
        group.positions,
        group.numeric("time"),
        _levels(desc.map(lambda d: integer_member(d, "level", what))),
        desc.map(lambda d: string_member(d, "target", what)),
        desc.map(lambda d: string_member(d, "fmt_str", what)),
        Coded.constant({}, len(group)),
    )


def _string_event(group: ObjectGroup) -> _LogRows:
    what = f"{group.type_name}.desc"
    desc = Coded.of(group.values("desc"))
    return _LogRows(
        group.positions,
        group.numeric("time"),
        _levels(desc.map(lambda d: integer_member(d, "level", what))),
        desc.map(lambda d: string_member(d, "target", what)),
        _strings(group, "msg"),
        Coded.constant({}, len(group)),
    )


def _interop_event(group: ObjectGroup) -> _LogRows:
    return _LogRows(
        group.positions,
        group.numeric("time"),
        group.numeric("level").astype(np.int32),
        _strings(group, "target"),
        _strings(group, "msg"),
        Coded.constant({}, len(group)),
    )


def _tagged_interop_event(group: ObjectGroup) -> _LogRows:
    what = f"{group.type_name}.properties"
    return _LogRows(
        group.positions,
        group.numeric("time"),
        group.numeric("level").astype(np.int32),
        _strings(group, "target"),
        _strings(group, "msg"),
        Coded.of(group.values("properties")).map(lambda p: object_members(p, what)),
    )


def _tagged_string(group: ObjectGroup) -> _LogRows:
    what = group.type_name
    desc = Coded.of(group.values("desc"))
    properties = Coded.of(group.values("properties")).map(lambda p: object_members(p, f"{what}.properties"))
    pair, desc_of_pair, properties_of_pair = pair_codes(desc.codes, properties.codes)
    levels: list[int] = []
    targets: list[str] = []
    for desc_code, properties_code in zip(desc_of_pair.tolist(), properties_of_pair.tolist(), strict=True):
        level, target = _overridden(desc.values[desc_code], properties.values[properties_code], what)
        levels.append(level)
        targets.append(target)
    return _LogRows(
        group.positions,
        group.numeric("time"),
        _levels(Coded(pair, levels)),
        Coded(pair, targets),
        _strings(group, "msg"),
        properties,
    )


def _overridden(desc: Value, properties: Mapping[str, str], what: str) -> tuple[int, str]:
    level = integer_member(desc, "level", f"{what}.desc")
    target = string_member(desc, "target", f"{what}.desc")
    if "target" in properties:
        target = properties["target"]
    if "level" in properties:
        if properties["level"] not in LEVELS_BY_NAME:
            raise BlockRowsError(f"{what}: unknown log level {properties['level']!r} in its properties")
        level = LEVELS_BY_NAME[properties["level"]]
    return level, target


def _strings(group: ObjectGroup, name: str) -> Coded[str]:
    what = f"{group.type_name}.{name}"
    column = Coded.of(group.values(name))
    for value in column.values:
        if not isinstance(value, str):
            raise BlockRowsError(f"{what}: expected a string, got {value!r}")
    return column


_READERS: dict[str, Callable[[ObjectGroup], _LogRows]] = {
    "LogStaticStrEvent": _static_str_event,
    "LogStringEvent": _string_event,
    "LogStringEventV2": _string_event,
    "LogStaticStrInteropEvent": _interop_event,
    "LogStringInteropEventV2": _interop_event,
    "LogStringInteropEventV3": _interop_event,
    "TaggedLogInteropEvent": _tagged_interop_event,
    "TaggedLogString": _tagged_string,
}


# ---------------------------------------------------------------------------------------------------
# Rows of OTLP log blocks (micromegas's `otel/logs_block_processor.rs`): time = `time_unix_nano`, else
# `observed_time_unix_nano`, else the block's begin time; level = severity 1–4→6 (trace), 5–8→5,
# 9–12→4, 13–16→3, 17–20→2, 21–24→1 (fatal), anything else → 4; msg = the body as text; target = the
# scope name; properties = the record's attributes plus `otel.scope.*`, `otel.trace_id`/`otel.span_id`,
# `otel.severity_text`, `otel.event_name`. The lakehouse parses the protobuf into these columns.


@dataclass(frozen=True)
class LogColumns:
    """The log records of one OTLP logs block, in payload order."""

    time_ns: np.ndarray  # int64
    level: np.ndarray  # int32
    msg: pa.Array  # strings
    target: Coded[str]
    properties: pa.Array  # binary: databend-jsonb objects


def otlp_run_batch(blocks: Sequence[OtlpBlock[LogColumns]]) -> pa.RecordBatch:
    """The log_entries rows of consecutive OTLP logs blocks of one process, built at once."""
    run = OtlpRun.of(blocks)
    columns, process = run.columns, run.process
    n = len(columns.time_ns)
    arrays = [
        *run.identity_columns(n),
        timestamp_array(columns.time_ns),
        dictionary_array(columns.target),
        pa.array(columns.level, pa.int32()),
        columns.msg.cast(pa.utf8()),
        pc.dictionary_encode(columns.properties.cast(pa.binary())),
        constant_properties_array(process.properties, n),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


VIEW = View(
    name=VIEW_SET_NAME,
    schema=SCHEMA,
    schema_hash=FILE_SCHEMA_HASH,
    instance_kind="process",
    has_global_instance=True,
    stream_tags=("log",),
    time_columns=("time", "time"),
    rows_from_transit=each_run(run_batch, own_clock),
    rows_from_otlp=each_process_run(otlp_run_batch),
    otlp_format=OTLP_LOGS_FORMAT,
    max_partition_seconds=HOUR_SECONDS,
    blockwise_formats=frozenset([TRANSIT_FORMAT, OTLP_LOGS_FORMAT]),
)
