"""OTLP ingestion and materialization throughput, next to the protobuf parse of the same bytes; and
ingestion CPU per 10,000 records against a previous revision.

    .venv/bin/python benchmarks/otlp_throughput.py [records]
    .venv/bin/python benchmarks/otlp_throughput.py --ingest-cpu [--baseline REV] [--rounds 7] [--records 10000]

For each signal it prints records/s of
* `parse`: the protobuf runtime alone (`ParseFromString` + `SerializeToString`): the floor;
* `ingest`: `server.otlp.blocks_from_request` (parse, identities, bounds, the stored envelope);
* `ingest json`: the same from gzipped OTLP-JSON (plain JSON of 100k records is over the 20 MiB limit);
* `decode`: `lakehouse.otlp.decode` from the stored block to the view's record batch (traces: for
  `async_events` and for `otel_spans`);
and the ratio of each to `parse`. Records carry 4 attributes, as typical SDK output does.

`--ingest-cpu` prints the CPU time (`time.process_time`) `blocks_from_request` takes per 10,000 records
of one protobuf export of `--records` records, per signal (logs, spans, gauge points, and int sum points
with an exemplar each: the metrics prost stores in another field order), and the `measures` rows of a
stored metrics block take per 10,000 gauge or summary points, for this checkout and, with
`--baseline`, for that git revision, in alternating worker processes, `--rounds` rounds: the median of
each side's rounds (each round the best of 5 runs) and their ratio. It then prints what ingestion reads of
a resource (bounds, trace ids) through the protobuf runtime against the numpy wire readers.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
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


def metrics_request() -> tuple[ExportMetricsServiceRequest, Any]:
    """A metrics request of one resource and its one scope (where the points go)."""
    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    resource.resource.attributes.extend(RESOURCE)
    scope = resource.scope_metrics.add()
    scope.scope.name = "bench.meter"
    return request, scope


def metrics(n: int) -> ExportMetricsServiceRequest:
    request, scope = metrics_request()
    per_metric = 1000
    for m in range(max(1, n // per_metric)):
        gauge = scope.metrics.add(name=f"gauge_{m}", unit="By").gauge
        for i in range(per_metric):
            point = gauge.data_points.add(time_unix_nano=T0 + i, as_double=i * 0.5)
            point.attributes.extend(attributes(i))
    return request


def int_sums(n: int) -> ExportMetricsServiceRequest:
    """Monotonic int sums, each point with an exemplar of a span: stored in prost's field order."""
    request, scope = metrics_request()
    per_metric = 1000
    for m in range(max(1, n // per_metric)):
        total = scope.metrics.add(name=f"requests_{m}", unit="1").sum
        total.is_monotonic, total.aggregation_temporality = True, 2
        for i in range(per_metric):
            point = total.data_points.add(time_unix_nano=T0 + i, as_int=i)
            point.attributes.extend(attributes(i))
            point.exemplars.add(time_unix_nano=T0 + i, as_int=1, span_id=(i + 1).to_bytes(8, "big"))
    return request


def summaries(n: int) -> ExportMetricsServiceRequest:
    """Summary points with 4 quantiles (0, 0.5, 0.99, 1): 4 measures rows each."""
    request, scope = metrics_request()
    per_metric = 1000
    for m in range(max(1, n // per_metric)):
        summary = scope.metrics.add(name=f"latency_{m}", unit="ms").summary
        for i in range(per_metric):
            point = summary.data_points.add(time_unix_nano=T0 + i, count=i, sum=i * 1.5)
            point.attributes.extend(attributes(i))
            for quantile in (0.0, 0.5, 0.99, 1.0):
                point.quantile_values.add(quantile=quantile, value=i * quantile)
    return request


INGEST_CPU_SIGNALS = {  # label: (signal, request builder)
    "logs": ("logs", logs),
    "spans": ("traces", traces),
    "gauge points": ("metrics", metrics),
    "int sum points": ("metrics", int_sums),
}
MEASURES_CPU_SOURCES = {"gauge → measures": metrics, "summary → measures": summaries}


def ingest_cpu(records: int) -> dict[str, float]:
    """CPU seconds `blocks_from_request` takes per 10,000 records, per signal, and the `measures` rows
    of a stored metrics block take per 10,000 data points (best of 5 runs each)."""

    def cpu(run: Callable[[], object]) -> float:
        runs = []
        for _ in range(5):
            start = time.process_time()
            run()
            runs.append(time.process_time() - start)
        return min(runs) * 10_000 / records

    found = {}
    for label, (signal, build) in INGEST_CPU_SIGNALS.items():
        body = build(records).SerializeToString()
        found[label] = cpu(lambda s=signal, b=body: otlp.blocks_from_request(s, b, otlp.PROTOBUF, None))
    for label, build in MEASURES_CPU_SOURCES.items():
        [block] = otlp.blocks_from_request("metrics", build(records).SerializeToString(), otlp.PROTOBUF, None)
        process, meta = metas(block)
        found[label] = cpu(lambda p=block.payload, m=process, b=meta: view_rows(measures.VIEW)(p, m, b))
    return found


def bounds_cpu(records: int) -> None:
    """A resource's bounds and trace ids as ingestion reads them (the protobuf runtime's fields, read in C)
    against reading the same from the resource's bytes with the numpy wire readers: CPU per 10,000."""
    from spanlake.lakehouse.block_traces import spans_bounds_and_traces
    from spanlake.lakehouse.otlp.bounds import logs_bounds, metrics_bounds
    from spanlake.lakehouse.otlp.log_arrays import log_fields
    from spanlake.lakehouse.otlp.metric_arrays import metric_fields
    from spanlake.lakehouse.otlp.span_arrays import span_fields

    def cpu(run: Callable[[], object]) -> float:
        runs = []
        for _ in range(5):
            start = time.process_time()
            run()
            runs.append(time.process_time() - start)
        return min(runs) * 10_000 / records * 1e3

    log_resource, span_resource = logs(records).resource_logs[0], traces(records).resource_spans[0]
    log_bytes, span_bytes = log_resource.SerializeToString(), span_resource.SerializeToString()
    metric_resource = metrics(records).resource_metrics[0]
    metric_bytes = metric_resource.SerializeToString()
    print(f"bounds per 10,000 records, ms CPU{'':3}C reads  wire (numpy)")
    rows = {
        "logs (times)": (lambda: logs_bounds(log_resource), lambda: log_fields(log_bytes).stamps(11)),
        "spans (times, trace ids)": (
            lambda: spans_bounds_and_traces(span_resource),
            lambda: (spans := span_fields(span_bytes)).id_bytes(spans.trace_id, 16),
        ),
        "gauge points (times)": (
            lambda: metrics_bounds(metric_resource),
            lambda: (fields := metric_fields(metric_bytes)).numbers.times(fields.buffer),
        ),
    }
    for label, (reads, wire) in rows.items():
        print(f"{label:32}{cpu(reads):8.1f}{cpu(wire):8.1f}")


def compare_ingest_cpu(args: argparse.Namespace) -> None:
    """Alternating worker processes of this checkout and of the baseline; medians and ratios."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _servers import source_env

    command = [sys.executable, __file__, "--ingest-cpu-worker", "--records", str(args.records)]
    with source_env(None) as here, source_env(args.baseline) as previous:
        sides = {"now": here} | ({f"{args.baseline}": previous} if args.baseline else {})
        rounds: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side, env in sides.items():
                run = subprocess.run(command, env=os.environ | env, capture_output=True, text=True, check=True)
                rounds[side].append(json.loads(run.stdout))
    print(f"ingestion CPU per 10,000 records, exports of {args.records:,} records, median of {args.rounds} rounds")
    print(f"{'records':20}" + "".join(f"{side:>14}" for side in sides) + ("       ratio" if args.baseline else ""))
    for label in [*INGEST_CPU_SIGNALS, *MEASURES_CPU_SOURCES]:
        medians = [statistics.median(r[label] for r in rounds[side]) * 1e3 for side in sides]
        ratio = f"{medians[0] / medians[1]:12.2f}" if args.baseline else ""
        print(f"{label:20}" + "".join(f"{m:11.1f} ms" for m in medians) + ratio)
    bounds_cpu(args.records)


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="?", type=int, default=None)
    parser.add_argument("--records", dest="records_option", type=int, default=None)
    parser.add_argument("--ingest-cpu", action="store_true", help="ingestion CPU per 10,000 records")
    parser.add_argument("--ingest-cpu-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", default=None, help="git revision to compare with (--ingest-cpu)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    args.records = args.records_option or args.records or (10_000 if args.ingest_cpu else 100_000)
    if args.ingest_cpu_worker:
        print(json.dumps(ingest_cpu(args.records)))
    elif args.ingest_cpu:
        compare_ingest_cpu(args)
    else:
        throughput(args.records)


def throughput(n: int) -> None:
    """Records/s of each step, per signal, and each step's ratio to the protobuf parse."""
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
