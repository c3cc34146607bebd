"""OTLP ingestion and materialization throughput, next to the protobuf parse of the same bytes.

    .venv/bin/python benchmarks/otlp_throughput.py [records]

For each signal it prints records/s of
* `parse`: the protobuf runtime alone (`ParseFromString` + `SerializeToString`): the floor;
* `ingest`: `server.otlp.blocks_from_request` (parse, identities, bounds, the stored envelope);
* `ingest json`: the same from gzipped OTLP-JSON (plain JSON of 100k records is over the 20 MiB limit);
* `decode`: `lakehouse.otlp.decode` from the stored block to the view's record batch (traces: for
  `async_events` and for `otel_spans`);
and the ratio of each to `parse`. Records carry 4 attributes, as typical SDK output does.
"""

from __future__ import annotations

import base64
import gzip
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from spanlake.lakehouse.otlp.decode import otlp_block
from spanlake.lakehouse.otlp.identity import OtlpResourceBlock
from spanlake.server import otlp
from spanlake.views import async_events, log_entries, measures, otel_spans
from spanlake.views.meta import BlockMeta, ProcessMeta
from spanlake.views.view import View

T0 = 1_700_000_000_000_000_000
RESOURCE = [
    KeyValue(key="service.name", value=AnyValue(string_value="bench")),
    KeyValue(key="host.name", value=AnyValue(string_value="box")),
]


def attributes(i: int) -> list[KeyValue]:
    return [
        KeyValue(key="code.function", value=AnyValue(string_value=f"handler_{i % 20}")),
        KeyValue(key="code.lineno", value=AnyValue(int_value=i % 300)),
        KeyValue(key="http.route", value=AnyValue(string_value=f"/api/{i % 7}")),
        KeyValue(key="ok", value=AnyValue(bool_value=i % 2 == 0)),
    ]


def logs(n: int) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource = request.resource_logs.add()
    resource.resource.attributes.extend(RESOURCE)
    scope = resource.scope_logs.add()
    scope.scope.name = "bench.logs"
    for i in range(n):
        record = scope.log_records.add(
            time_unix_nano=T0 + i,
            severity_number=9 + i % 12,
            body=AnyValue(string_value=f"request {i} done"),
            trace_id=i.to_bytes(16, "big"),
            span_id=(i + 1).to_bytes(8, "big"),
        )
        record.attributes.extend(attributes(i))
    return request


def traces(n: int) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    resource.resource.attributes.extend(RESOURCE)
    scope = resource.scope_spans.add()
    scope.scope.name = "bench.tracer"
    for i in range(n):  # traces of 10 spans: a root and a chain of 9 descendants
        trace_id = (i // 10 + 1).to_bytes(16, "big")
        parent = b"" if i % 10 == 0 else i.to_bytes(8, "big")
        span = scope.spans.add(
            trace_id=trace_id,
            span_id=(i + 1).to_bytes(8, "big"),
            parent_span_id=parent,
            name=f"op_{i % 10}",
            start_time_unix_nano=T0 + i,
            end_time_unix_nano=T0 + 2 * n - i,
        )
        span.attributes.extend(attributes(i))
    return request


def metrics(n: int) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    resource.resource.attributes.extend(RESOURCE)
    scope = resource.scope_metrics.add()
    scope.scope.name = "bench.meter"
    per_metric = 1000
    for m in range(max(1, n // per_metric)):
        gauge = scope.metrics.add(name=f"gauge_{m}", unit="By").gauge
        for i in range(per_metric):
            point = gauge.data_points.add(time_unix_nano=T0 + i, as_double=i * 0.5)
            point.attributes.extend(attributes(i))
    return request


def otlp_json(message: Any) -> bytes:
    def hex_ids(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") else hex_ids(v)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [hex_ids(item) for item in node]
        return node

    return json.dumps(hex_ids(json_format.MessageToDict(message))).encode()


def rate(records: int, run: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return records / best


def metas(block: OtlpResourceBlock) -> tuple[ProcessMeta, BlockMeta]:
    p, b = block.process, block.block
    return (
        ProcessMeta(
            str(p.process_id),
            p.exe,
            p.username,
            p.computer,
            p.start_time_ns,
            p.start_ticks,
            p.tsc_frequency,
            p.properties,
        ),
        BlockMeta(
            str(b.block_id),
            str(b.stream_id),
            str(b.process_id),
            b.begin_time_ns,
            b.begin_ticks,
            b.end_time_ns,
            b.end_ticks,
            b.nb_objects,
            0,
            T0,
        ),
    )


def view_rows(view: View) -> Callable[[bytes, ProcessMeta, BlockMeta], list[pa.RecordBatch]]:
    """Decoding one stored block into the view's rows, as materialization does."""
    return lambda payload, process, block: list(
        view.rows_from_otlp([otlp_block(view, view.otlp_format, payload, process, block)])
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    builders = {  # label: (signal, request, the view decoding its blocks)
        "logs": ("logs", logs, view_rows(log_entries.VIEW)),
        "traces": ("traces", traces, view_rows(async_events.VIEW)),
        "otel_spans": ("traces", traces, view_rows(otel_spans.VIEW)),
        "metrics": ("metrics", metrics, view_rows(measures.VIEW)),
    }
    print(f"{'signal':10} {'step':12} {'records/s':>12} {'vs parse':>9}")
    for label, (signal, build, decode) in builders.items():
        request = build(n)
        body = request.SerializeToString()
        as_json = gzip.compress(otlp_json(request), 1)
        [block] = otlp.blocks_from_request(signal, body, otlp.PROTOBUF, None)
        process, block_meta = metas(block)
        floor = rate(n, lambda r=request, b=body: type(r).FromString(b).SerializeToString())
        steps = {
            "parse": floor,
            "ingest": rate(n, lambda s=signal, b=body: otlp.blocks_from_request(s, b, otlp.PROTOBUF, None)),
            "ingest json": rate(n, lambda s=signal, b=as_json: otlp.blocks_from_request(s, b, otlp.JSON, "gzip"), 1),
            "decode": rate(n, lambda d=decode, p=block.payload, m=process, b=block_meta: d(p, m, b)),
        }
        for step, value in steps.items():
            print(f"{label:10} {step:12} {value:12,.0f} {value / floor:9.3f}")


if __name__ == "__main__":
    main()
