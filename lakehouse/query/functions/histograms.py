"""Histograms as micromegas computes them: `make_histogram(start, end, bins, value)` and `sum_histograms`
(aggregates), `quantile_from_histogram`, `variance_from_histogram`, `count_from_histogram`,
`sum_from_histogram` (scalars) and `expand_histogram` (a table function, see table_functions.py).

A histogram is micromegas's struct {start, end, min, max, sum, sum_sq, count, bins: list<bin>}. A value
falls in bin floor((v - start) / width), clamped to the first and last bins; NULL values are skipped.
An aggregate that never saw a histogram's bounds (no rows) answers a NULL histogram.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datafusion import Accumulator, AggregateUDF, ScalarUDF, udaf, udf
from typing_extensions import override

from spanlake.lakehouse.errors import QueryError

F64, U64 = pa.float64(), pa.uint64()
BINS = pa.list_(pa.field("bin", U64, nullable=False))
HISTOGRAM = pa.struct(
    [
        pa.field("start", F64, nullable=False),
        pa.field("end", F64, nullable=False),
        pa.field("min", F64, nullable=False),
        pa.field("max", F64, nullable=False),
        pa.field("sum", F64, nullable=False),
        pa.field("sum_sq", F64, nullable=False),
        pa.field("count", U64, nullable=False),
        pa.field("bins", BINS, nullable=False),
    ]
)
F64_MAX = float(np.finfo(np.float64).max)
INCOMPATIBLE = "Error merging incompatible histograms"


@dataclass
class HistogramState:
    """One histogram being accumulated; its bounds are unknown until the first row or histogram."""

    start: float | None = None
    end: float | None = None
    min: float = F64_MAX
    max: float = -F64_MAX
    sum: float = 0.0
    sum_sq: float = 0.0
    count: int = 0
    bins: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))

    def configure(self, start: float, end: float, nb_bins: int) -> None:
        """Sets the bounds and bin count on first use (QueryError if invalid); later calls must repeat them."""
        if self.start is not None:
            if (self.start, self.end, len(self.bins)) != (start, end, nb_bins):
                raise QueryError("make_histogram: bounds/bins changed between batches")
            return
        _check_parameters(start, end, nb_bins)
        self.start, self.end, self.bins = start, end, np.zeros(nb_bins, np.uint64)

    def add_values(self, values: pa.Array) -> None:
        """Record a batch of values (NULLs skipped) into the configured bins."""
        numbers = np.asarray(values.drop_null(), dtype=np.float64)
        if not len(numbers):
            return
        width = (self.end - self.start) / len(self.bins)
        with np.errstate(divide="ignore", invalid="ignore"):
            position = np.floor((numbers - self.start) / width)
        # Rust's saturating `as usize` then clamp: negatives and NaN land in the first bin.
        index = np.clip(np.nan_to_num(position, nan=0.0, posinf=len(self.bins), neginf=0.0), 0, len(self.bins) - 1)
        self.bins += np.bincount(index.astype(np.int64), minlength=len(self.bins)).astype(np.uint64)
        self.min = min(self.min, float(np.fmin.reduce(numbers)))
        self.max = max(self.max, float(np.fmax.reduce(numbers)))
        self.sum += float(numbers.sum())
        self.sum_sq += float((numbers * numbers).sum())
        self.count += len(numbers)

    def merge(self, histograms: pa.Array) -> None:
        """Add each non-NULL histogram of a struct array; all must share start, end and bin count."""
        present = histograms.filter(histograms.is_valid())
        if not len(present):
            return
        starts, ends = present.field("start"), present.field("end")
        lengths = pc.list_value_length(present.field("bins"))
        if self.start is None:
            self.start, self.end = starts[0].as_py(), ends[0].as_py()
            self.bins = np.zeros(lengths[0].as_py(), np.uint64)
        same = pc.and_(pc.equal(starts, self.start), pc.equal(ends, self.end))
        if not pc.all(pc.and_(same, pc.equal(lengths, len(self.bins)))).as_py():
            raise QueryError(INCOMPATIBLE)
        flat = np.asarray(pc.list_flatten(present.field("bins")), dtype=np.uint64)
        self.bins += flat.reshape(len(present), len(self.bins)).sum(axis=0, dtype=np.uint64)
        self.min = min(self.min, pc.min(present.field("min")).as_py())
        self.max = max(self.max, pc.max(present.field("max")).as_py())
        self.sum += pc.sum(present.field("sum")).as_py()
        self.sum_sq += pc.sum(present.field("sum_sq")).as_py()
        self.count += pc.sum(present.field("count")).as_py()

    def scalar(self) -> pa.Scalar:
        """The histogram as a HISTOGRAM struct scalar (NULL if nothing set its bounds)."""
        if self.start is None:
            return pa.scalar(None, HISTOGRAM)
        return pa.scalar(
            {
                "start": self.start,
                "end": self.end,
                "min": self.min,
                "max": self.max,
                "sum": self.sum,
                "sum_sq": self.sum_sq,
                "count": self.count,
                "bins": self.bins.tolist(),
            },
            HISTOGRAM,
        )


def _check_parameters(start: float, end: float, nb_bins: int) -> None:
    if nb_bins < 1:
        raise QueryError(f"make_histogram: nb_bins must be >= 1, got {nb_bins}")
    if not np.isfinite(start):
        raise QueryError(f"make_histogram: start must be finite, got {start}")
    if not np.isfinite(end):
        raise QueryError(f"make_histogram: end must be finite, got {end}")
    if start > end:
        raise QueryError(f"make_histogram: start ({start}) must be <= end ({end})")


class MakeHistogram(Accumulator):
    """make_histogram(start, end, nb_bins, value): the bounds are read from each batch's first row."""

    def __init__(self) -> None:
        self.histogram = HistogramState()

    @override
    def update(self, start: pa.Array, end: pa.Array, nb_bins: pa.Array, values: pa.Array) -> None:
        if not len(values):
            return
        for name, argument in (("start", start), ("end", end), ("nb_bins", nb_bins)):
            if not argument[0].is_valid:
                raise QueryError(f"make_histogram: {name} argument is null")
        self.histogram.configure(start[0].as_py(), end[0].as_py(), nb_bins[0].as_py())
        self.histogram.add_values(values)

    @override
    def merge(self, states: list[pa.Array]) -> None:
        for state in states:
            self.histogram.merge(state)

    @override
    def state(self) -> list[pa.Scalar]:
        return [self.histogram.scalar()]

    @override
    def evaluate(self) -> pa.Scalar:
        return self.histogram.scalar()


class SumHistograms(Accumulator):
    """sum_histograms(histogram): the bin-wise sum of histograms of the same bounds."""

    def __init__(self) -> None:
        self.histogram = HistogramState()

    @override
    def update(self, histograms: pa.Array) -> None:
        self.histogram.merge(histograms)

    @override
    def merge(self, states: list[pa.Array]) -> None:
        for state in states:
            self.histogram.merge(state)

    @override
    def state(self) -> list[pa.Scalar]:
        return [self.histogram.scalar()]

    @override
    def evaluate(self) -> pa.Scalar:
        return self.histogram.scalar()


def count_from_histogram(histograms: pa.StructArray) -> pa.Array:
    """The number of values of each histogram (UInt64)."""
    return _masked(histograms.field("count"), histograms)


def sum_from_histogram(histograms: pa.StructArray) -> pa.Array:
    """The sum of the values of each histogram."""
    return _masked(histograms.field("sum"), histograms)


def variance_from_histogram(histograms: pa.StructArray) -> pa.Array:
    """The sample variance (n - 1 denominator) from each histogram's count, sum and sum of squares."""
    n = np.asarray(histograms.field("count").fill_null(0), dtype=np.float64)
    total = np.asarray(histograms.field("sum").fill_null(0.0), dtype=np.float64)
    squares = np.asarray(histograms.field("sum_sq").fill_null(0.0), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / n
        variance = (squares / n - mean * mean) * (n / (n - 1.0))
    return _masked(pa.array(variance, F64), histograms)


def quantile_from_histogram(histograms: pa.StructArray, ratios: pa.Array) -> pa.Array:
    """The value below which `ratio` of the values fall: in the first non-empty bin whose cumulative count
    reaches count * ratio, interpolated linearly between the bin's bounds (`end` when none does)."""
    if ratios.null_count and pc.any(pc.and_(histograms.is_valid(), ratios.is_null())).as_py():
        raise QueryError("bad ratio NULL in quantile_from_histogram")
    bins = histograms.field("bins")
    lengths = np.asarray(pc.list_value_length(bins).fill_null(0), dtype=np.int64)
    counts = np.asarray(pc.list_flatten(bins), dtype=np.float64)
    starts, ends = (np.asarray(histograms.field(name).fill_null(0.0), dtype=np.float64) for name in ("start", "end"))
    targets = np.asarray(histograms.field("count").fill_null(0), dtype=np.float64) * np.asarray(
        ratios.fill_null(0.0), dtype=np.float64
    )
    # Every bin of every histogram at once: its row, its cumulative count within the row.
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    row_of_bin = np.repeat(np.arange(len(histograms)), lengths)
    running = np.cumsum(counts)
    cumulative = running - np.concatenate([[0.0], running])[offsets[:-1]][row_of_bin]
    reached = np.flatnonzero((cumulative >= targets[row_of_bin]) & (counts > 0))
    rows, first = np.unique(row_of_bin[reached], return_index=True)
    position = reached[first]
    index_in_row = position - offsets[rows]
    before, after = cumulative[position] - counts[position], cumulative[position]
    ratio = (targets[rows] - before) / (after - before)
    width = (ends[rows] - starts[rows]) / lengths[rows]
    lower = starts[rows] + index_in_row * width
    estimates = ends.copy()
    estimates[rows] = (1.0 - ratio) * lower + ratio * (lower + width)
    return _masked(pa.array(estimates, F64), histograms)


def _masked(values: pa.Array, histograms: pa.StructArray) -> pa.Array:
    """Values with NULL wherever the histogram itself is NULL."""
    return pc.if_else(histograms.is_valid(), values, pa.scalar(None, values.type))


def aggregate_udfs() -> list[AggregateUDF]:
    """make_histogram and sum_histograms, returning micromegas's histogram struct."""
    return [
        udaf(MakeHistogram, [F64, F64, pa.int64(), F64], HISTOGRAM, [HISTOGRAM], "immutable", "make_histogram"),
        udaf(SumHistograms, [HISTOGRAM], HISTOGRAM, [HISTOGRAM], "immutable", "sum_histograms"),
    ]


def scalar_udfs() -> list[ScalarUDF]:
    """The histogram accessors."""
    return [
        udf(count_from_histogram, [HISTOGRAM], U64, "immutable", "count_from_histogram"),
        udf(sum_from_histogram, [HISTOGRAM], F64, "immutable", "sum_from_histogram"),
        udf(variance_from_histogram, [HISTOGRAM], F64, "immutable", "variance_from_histogram"),
        udf(quantile_from_histogram, [HISTOGRAM, F64], F64, "immutable", "quantile_from_histogram"),
    ]
