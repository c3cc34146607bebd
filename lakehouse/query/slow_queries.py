"""micromegas's rule for slow queries (seed 003): a query's spans are recorded while it runs; when it
ends, a slow one (at least `SPANLAKE_SLOW_QUERY_SECONDS`) keeps its spans of at least
`SPANLAKE_SLOW_SPAN_MS` and their ancestors, a fast one its root span only.

Async spans carry no properties in the transit format, so a query's figures go into one log entry of
this module (target `spanlake.lakehouse.query.slow_queries`) per query, bound to its root span: a JSON
message `{"span_id", "query_id", "slow", "duration_ms", "kept_spans", "dropped_spans", "planning_ms",
"execution_ms", "rows", "bytes"}`. A slow query also gets one entry per kept DataFusion operator span
(`{"span_id", "operator", "output_rows", "elapsed_compute_ms", ...}`, lakehouse.query.plan_spans). The
values stay out of the entries' properties: property sets are interned for the process's lifetime.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spanlake import tracing
from spanlake.tracing.recording import RecordingOutcome, SpanRecording, begin_recording

ROOT_ENTRY = "query span"
OPERATOR_ENTRY = "operator span"


@dataclass(frozen=True)
class SlowQueryRule:
    """How long a query must run to keep its detail, and how long a span must run to be kept then."""

    slow_query_seconds: float = 1.0
    slow_span_ms: float = 5.0


_rule = [SlowQueryRule()]


def configure(rule: SlowQueryRule) -> None:
    """Sets the rule of the queries begun from now on (the server calls it with its settings)."""
    _rule[0] = rule


def current_rule() -> SlowQueryRule:
    """The rule queries begun now follow."""
    return _rule[0]


class QuerySpan:
    """The root span of one query: `context` is its children's parent; `end()` applies the rule once.

    `set_figures` and `describe_span` attach figures to the root and to its descendants; they are
    written (log entries) for the spans the rule keeps."""

    __slots__ = ("_attached", "_figures", "_recording", "_rule", "_span_figures", "_when_slow", "context")

    def __init__(self, recording: SpanRecording, rule: SlowQueryRule) -> None:
        self._recording = recording
        self._rule = rule
        self.context: tracing.SpanContext = recording.context
        self._figures: dict[str, Any] = {}
        self._span_figures: dict[int, dict[str, Any]] = {}
        self._when_slow: list[Callable[[QuerySpan], None]] = []

    def __enter__(self) -> QuerySpan:
        """`with begin_query_span(...) as span:` the root is the current span of the body, ended after it."""
        self._attached = tracing.attach(self.context)
        self._attached.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Leaves the body and ends the root span."""
        self._attached.__exit__(*exc_info)
        self.end()

    def set_figures(self, **figures: Any) -> None:
        """Figures of the whole query (query id, phase times, rows, ...) for its root's entry."""
        self._figures.update(figures)

    def describe_span(self, span_id: int, figures: dict[str, Any]) -> None:
        """Figures of one descendant span (an operator's rows, compute time, ...), written if it is kept."""
        self._span_figures[span_id] = figures

    def when_slow(self, record: Callable[[QuerySpan], None]) -> None:
        """Has `record(self)` run at the end if the query is slow, before the rule picks the spans kept:
        for spans recorded after the fact (DataFusion's operators), which a fast query would drop."""
        self._when_slow.append(record)

    def end(self) -> None:
        """Ends the root span, applies the rule and writes the entries (once; later calls do nothing)."""
        recording, self._recording = self._recording, None
        if recording is None:
            return
        recording.end()
        slow_ns = int(self._rule.slow_query_seconds * 1e9)
        if recording.duration_ns >= slow_ns:
            for record in self._when_slow:
                record(self)
        outcome = recording.finish(slow_ns, int(self._rule.slow_span_ms * 1e6))
        self._write_entries(outcome)

    def _write_entries(self, outcome: RecordingOutcome) -> None:
        root = {
            "span_id": self.context[0],
            "slow": outcome.slow,
            "duration_ms": round(outcome.duration_ns / 1e6, 3),
            "kept_spans": len(outcome.kept),
            "dropped_spans": outcome.dropped_spans,
            **self._figures,
        }
        tracing.info(json.dumps(root, separators=(",", ":")))
        for span_id, figures in self._span_figures.items():
            if span_id in outcome.kept:
                tracing.info(json.dumps({"span_id": span_id, **figures}, separators=(",", ":")))


def begin_query_span(name: str, *, dynamic: bool = False) -> QuerySpan:
    """Begins the root span of a query, under the rule configured now (`dynamic=True`: a per-call name)."""
    return QuerySpan(begin_recording(name, dynamic=dynamic), _rule[0])
