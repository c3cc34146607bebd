"""The `measures` view: one row per metric event of a `metrics` stream."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from spanlake.views.columns import (
    Coded,
    binary_dictionary,
    dictionary_array,
    order_by_position,
    pair_codes,
    timestamp_array,
)
from spanlake.views.decoded import DecodedBlock, ObjectGroup, Value, object_members, string_member
from spanlake.views.meta import OTLP_METRICS_FORMAT, TRANSIT_FORMAT, BlockMeta, ProcessMeta
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

VIEW_SET_NAME = "measures"
FILE_SCHEMA_HASH = bytes([7])

SCHEMA = pa.schema(
    [
        *BLOCK_EVENT_FIELDS,
        required("target", DICT_UTF8),
        required("name", DICT_UTF8),
        required("unit", DICT_UTF8),
        required("value", pa.float64()),
        required("properties", DICT_JSONB),
        required("process_properties", DICT_JSONB),
    ]
)

# ---------------------------------------------------------------------------------------------------
# Rows
#
# One row per metric event, in block order. Integer metrics whose unit is "ticks" are converted to
# seconds with the block's tick frequency (unit becomes "seconds"). Tagged metrics' string properties
# `target`, `name` and `unit` override their descriptor's (before the ticks rule applies).

SECONDS_UNIT = "seconds"
TICKS_UNIT = "ticks"


@dataclass(frozen=True)
class _MeasureRows:
    positions: np.ndarray
    ticks: np.ndarray
    values: np.ndarray  # float64
    target: Coded[str]
    name: Coded[str]
    unit: Coded[str]
    properties: Coded[Mapping[str, str]]


def build_batch(block: DecodedBlock, meta: BlockMeta, process: ProcessMeta, convert: TickConverter) -> pa.RecordBatch:
    """The measures rows of one decoded `metrics` block (an empty batch when it holds no metric)."""
    return block_rows(_batch, block, meta, process, convert)


def run_batch(run: Sequence[TransitBlock]) -> pa.RecordBatch:
    """The measures rows of consecutive decoded blocks of one process sharing one clock, built at once."""
    return run_rows(_batch, run)


def _batch(
    block: DecodedBlock, process: ProcessMeta, convert: TickConverter, ids_of: Callable[[np.ndarray], list[pa.Array]]
) -> pa.RecordBatch:
    """The rows of a decoded block (or run of blocks); `ids_of` gives the block identity columns of the
    rows from their object positions."""
    parts = [
        _rows(group, is_integer, is_tagged, convert)
        for type_name, (is_integer, is_tagged) in METRIC_TYPES.items()
        if (group := block.group(type_name))
    ]
    order = order_by_position([part.positions for part in parts])
    length = len(order)
    positions = np.concatenate([part.positions for part in parts])[order] if parts else np.zeros(0, np.int64)
    ticks = np.concatenate([part.ticks for part in parts])[order] if parts else np.zeros(0, np.int64)
    values = np.concatenate([part.values for part in parts])[order] if parts else np.zeros(0)
    columns = [
        *ids_of(positions),
        timestamp_array(convert.ticks_to_ns(ticks)),
        dictionary_array(Coded.concat([part.target for part in parts]).take(order)),
        dictionary_array(Coded.concat([part.name for part in parts]).take(order)),
        dictionary_array(Coded.concat([part.unit for part in parts]).take(order)),
        pa.array(values, pa.float64()),
        _properties(Coded.concat([part.properties for part in parts]).take(order)),
        constant_properties_array(process.properties, length),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


# type name → (integer value?, tagged with a property set?)
METRIC_TYPES = {
    "FloatMetricEvent": (False, False),
    "IntegerMetricEvent": (True, False),
    "TaggedFloatMetricEvent": (False, True),
    "TaggedIntegerMetricEvent": (True, True),
}


def _properties(coded: Coded[Mapping[str, str]]) -> pa.Array:
    return jsonb_dictionary(coded.codes, coded.values)


def _rows(group: ObjectGroup, is_integer: bool, is_tagged: bool, convert: TickConverter) -> _MeasureRows:
    what = group.type_name
    desc = Coded.of(group.values("desc"))
    if is_tagged:
        properties = Coded.of(group.values("properties")).map(lambda p: object_members(p, f"{what}.properties"))
    else:
        properties = Coded.constant({}, len(group))
    pair, desc_of_pair, properties_of_pair = pair_codes(desc.codes, properties.codes)
    labels = [
        _labels(desc.values[desc_code], properties.values[properties_code], f"{what}.desc")
        for desc_code, properties_code in zip(desc_of_pair.tolist(), properties_of_pair.tolist(), strict=True)
    ]
    target, name, unit = (Coded(pair, [label[i] for label in labels]) for i in range(3))
    raw = group.numeric("value")
    if is_integer:
        is_ticks = np.array([label[2] == TICKS_UNIT for label in labels], dtype=bool)[pair]
        values = np.where(is_ticks, _ticks_to_seconds(raw, convert), raw.astype(np.float64))
        unit = unit.map(lambda u: SECONDS_UNIT if u == TICKS_UNIT else u)
    else:
        values = raw.astype(np.float64)
    return _MeasureRows(group.positions, group.numeric("time"), values, target, name, unit, properties)


def _labels(desc: Value, properties: Mapping[str, str], what: str) -> tuple[str, str, str]:
    return (
        properties.get("target", string_member(desc, "target", what)),
        properties.get("name", string_member(desc, "name", what)),
        properties.get("unit", string_member(desc, "unit", what)),
    )


def _ticks_to_seconds(raw: np.ndarray, convert: TickConverter) -> np.ndarray:
    # micromegas: delta_ticks_to_ms(value as i64) / 1000.0
    return convert.delta_ticks_to_ms(raw.view(np.int64)) / 1000.0


# ---------------------------------------------------------------------------------------------------
# Rows of OTLP metrics blocks (micromegas's `otel/metrics_block_processor.rs`): one row per Sum/Gauge
# point with a time and a value; Summary points become `<name>_count` (unit ""), `<name>_sum`, and
# `<name>_min`/`<name>_max`; histograms are skipped. The lakehouse parses the protobuf into these columns.


@dataclass(frozen=True)
class MeasureColumns:
    """The metric points of one OTLP metrics block, in payload order."""

    time_ns: np.ndarray  # int64
    value: np.ndarray  # float64
    target: Coded[str]
    name: Coded[str]
    unit: Coded[str]
    properties: Coded[bytes]  # databend-jsonb objects


def otlp_run_batch(blocks: Sequence[OtlpBlock[MeasureColumns]]) -> pa.RecordBatch:
    """The measures rows of consecutive OTLP metrics blocks of one process, built at once."""
    run = OtlpRun.of(blocks)
    columns, process = run.columns, run.process
    n = len(columns.time_ns)
    arrays = [
        *run.identity_columns(n),
        timestamp_array(columns.time_ns),
        dictionary_array(columns.target),
        dictionary_array(columns.name),
        dictionary_array(columns.unit),
        pa.array(columns.value, pa.float64()),
        binary_dictionary(columns.properties),
        constant_properties_array(process.properties, n),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


VIEW = View(
    name=VIEW_SET_NAME,
    schema=SCHEMA,
    schema_hash=FILE_SCHEMA_HASH,
    instance_kind="process",
    has_global_instance=True,
    stream_tags=("metrics",),
    time_columns=("time", "time"),
    rows_from_transit=each_run(run_batch, own_clock),
    rows_from_otlp=each_process_run(otlp_run_batch),
    otlp_format=OTLP_METRICS_FORMAT,
    max_partition_seconds=HOUR_SECONDS,
    blockwise_formats=frozenset([TRANSIT_FORMAT, OTLP_METRICS_FORMAT]),
)
