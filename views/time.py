"""Tick → time conversion, with the arithmetic of micromegas's `analytics/src/time.rs` (vectorized).

    event_ns = process.start_time_ns + round((ticks - process.start_ticks) * (1e9 / frequency))
    block_ns = process.start_time_ns + round(relative_ticks * (1e9 / frequency))

computed in f64 (ticks are converted to f64 before the multiplication) and rounded like Rust's
`f64::round`: half away from zero, which numpy's `round` (half to even) is not.
When the process reports no TSC frequency (`tsc_frequency <= 0`), it is estimated as
`round(end_ticks / seconds(end_time - process.start_time))` from one block (logs, metrics) or from the
process's latest block (async events, thread spans).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spanlake.views.meta import BlockMeta, ProcessMeta

NANOS_PER_SECOND = 1_000_000_000.0
_INT64_MIN = float(np.iinfo(np.int64).min)
_INT64_MAX = float(np.iinfo(np.int64).max)


def round_half_away_from_zero(values: np.ndarray) -> np.ndarray:
    """Rust's `f64::round` on an array: exact (no `floor(x + 0.5)` error just below one half)."""
    truncated = np.trunc(values)
    fraction = values - truncated  # exact for every finite f64
    return truncated + np.copysign(np.abs(fraction) >= 0.5, values)


def _to_int64(values: np.ndarray) -> np.ndarray:
    """Rust's `f64 as i64`: saturating, NaN → 0."""
    return np.clip(np.nan_to_num(values, nan=0.0), _INT64_MIN, _INT64_MAX).astype(np.int64)


@dataclass(frozen=True)
class TickConverter:
    """Converts one process's ticks to nanoseconds since the epoch."""

    tick_offset: int  # the process's start_ticks
    process_start_ns: int
    frequency: int  # ticks per second

    def __post_init__(self) -> None:
        if self.frequency <= 0:
            raise ValueError(f"invalid tick frequency {self.frequency}")

    @property
    def _ns_per_tick(self) -> float:
        return NANOS_PER_SECOND / float(self.frequency)

    def ticks_to_ns(self, ticks: np.ndarray) -> np.ndarray:
        """Absolute event ticks → absolute nanoseconds (int64)."""
        delta = (np.asarray(ticks, dtype=np.int64) - np.int64(self.tick_offset)).astype(np.float64)
        return self._offset_ns(delta)

    def delta_ticks_to_ns(self, delta_ticks: np.ndarray) -> np.ndarray:
        """Ticks relative to the process start (block ticks) → absolute nanoseconds (int64)."""
        return self._offset_ns(np.asarray(delta_ticks, dtype=np.int64).astype(np.float64))

    def delta_ticks_to_ms(self, delta_ticks: np.ndarray) -> np.ndarray:
        """A tick count → milliseconds (float64), as micromegas converts `ticks` metric values."""
        return np.asarray(delta_ticks, dtype=np.int64).astype(np.float64) * (1000.0 / float(self.frequency))

    def _offset_ns(self, delta: np.ndarray) -> np.ndarray:
        since_start = _to_int64(round_half_away_from_zero(delta * self._ns_per_tick))
        return since_start + np.int64(self.process_start_ns)

    def delta_ticks_to_ns_scalar(self, delta_ticks: int) -> int:
        """One tick count relative to the process start → absolute nanoseconds."""
        return int(self.delta_ticks_to_ns(np.array([delta_ticks]))[0])


def estimate_frequency(start_time_ns: int, end_ticks: int, end_time_ns: int) -> int:
    """`round(end_ticks / seconds(end_time - start_time))`, micromegas's estimate when tsc_frequency <= 0."""
    seconds = float(end_time_ns - start_time_ns) / NANOS_PER_SECOND
    with np.errstate(divide="ignore", invalid="ignore"):
        ticks_per_second = np.float64(end_ticks) / np.float64(seconds)
    return int(_to_int64(round_half_away_from_zero(np.array([ticks_per_second])))[0])


def converter_for_block(process: ProcessMeta, block: BlockMeta) -> TickConverter:
    """The converter log and metric blocks use: the process frequency, else estimated from this block."""
    return converter_from_latest_timing(process, block.end_ticks, block.end_time_ns)


def converter_from_latest_timing(
    process: ProcessMeta, last_block_end_ticks: int, last_block_end_time_ns: int
) -> TickConverter:
    """The converter async events and thread spans use: estimated from the process's latest block."""
    frequency = process.tsc_frequency
    if frequency <= 0:
        frequency = estimate_frequency(process.start_time_ns, last_block_end_ticks, last_block_end_time_ns)
    return TickConverter(process.start_ticks, process.start_time_ns, frequency)
