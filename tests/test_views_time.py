"""Tick → time conversion: Rust's f64 arithmetic and rounding, and frequency estimation."""

from __future__ import annotations

import numpy as np
import pytest
import rust_fixtures

from spanlake.views.meta import ProcessMeta
from spanlake.views.time import (
    TickConverter,
    converter_for_block,
    converter_from_latest_timing,
    estimate_frequency,
    round_half_away_from_zero,
)


def test_rounding_is_half_away_from_zero() -> None:
    values = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999999999999996, 0.49999999999999994, -2.5000000000000004, 7.0])
    assert round_half_away_from_zero(values).tolist() == [1.0, 2.0, 3.0, -1.0, -2.0, 2.0, 0.0, -3.0, 7.0]
    # numpy's own rounding is half to even: the trap this function avoids.
    assert np.round(values[:3]).tolist() == [0.0, 2.0, 2.0]


def test_round_cpuid_frequency_rounds_halves_up() -> None:
    """README trap: at 2 GHz odd tick deltas give x.5 ns; Rust rounds them away from zero."""
    convert = TickConverter(tick_offset=100, process_start_ns=1_000, frequency=2_000_000_000)
    assert convert.ticks_to_ns(np.array([101, 105, 99, 95, 100])).tolist() == [1_001, 1_003, 999, 997, 1_000]
    assert convert.delta_ticks_to_ns(np.array([1, 5, -1])).tolist() == [1_001, 1_003, 999]
    assert convert.delta_ticks_to_ns_scalar(3) == 1_002


def test_conversion_multiplies_by_the_inverse_frequency_in_f64() -> None:
    frequency = 2_445_400_108
    convert = TickConverter(0, 0, frequency)
    ticks = np.array([1, 123_456_789, 134_916_820, 9_007_199_254_740_993])
    ns_per_tick = 1e9 / float(frequency)
    expected = [int(np.floor(float(t) * ns_per_tick + 0.5)) for t in ticks.tolist()]
    assert convert.ticks_to_ns(ticks).tolist() == expected
    assert convert.delta_ticks_to_ms(np.array([frequency])).tolist() == [frequency * (1000.0 / frequency)]


def test_invalid_frequency_is_rejected() -> None:
    with pytest.raises(ValueError, match="invalid tick frequency 0"):
        TickConverter(0, 0, 0)


def test_frequency_is_estimated_when_the_process_has_none() -> None:
    process = ProcessMeta("p", "e", "u", "c", start_time_ns=1_000_000_000, start_ticks=5, tsc_frequency=0)
    # 3e9 ticks over 1.5 s (start_ticks do not enter the estimate: block ticks are relative).
    assert estimate_frequency(1_000_000_000, 3_000_000_000, 2_500_000_000) == 2_000_000_000
    assert converter_from_latest_timing(process, 3_000_000_000, 2_500_000_000).frequency == 2_000_000_000
    known = ProcessMeta("p", "e", "u", "c", 0, 0, tsc_frequency=1_000)
    assert converter_from_latest_timing(known, 3_000_000_000, 2_500_000_000).frequency == 1_000


def test_fixture_block_estimates_and_event_times() -> None:
    process = rust_fixtures.process()
    checked = 0
    for stream in rust_fixtures.streams():
        for block in stream.blocks:
            convert = converter_for_block(process, block.meta)
            assert convert.frequency == block.expected["estimated_frequency_blockmeta"]
            events = block.expected["events"]
            times = convert.ticks_to_ns(np.array([event["time"] for event in events], dtype=np.int64))
            assert times.tolist() == [event["time_ns_blockmeta"] for event in events]
            checked += len(events)
    assert checked == 3203


def test_fixture_latest_timing_estimate() -> None:
    expected = rust_fixtures.expected()["process"]["latest_timing"]
    assert rust_fixtures.latest_timing_converter().frequency == expected["estimated_frequency"]


def test_negative_block_ticks_precede_the_process_start() -> None:
    """The first log/metrics/image blocks begin before start_ticks (genuine Rust behaviour)."""
    process = rust_fixtures.process()
    first_blocks = [
        stream.blocks[0].meta for stream in rust_fixtures.streams() if stream.blocks[0].meta.begin_ticks < 0
    ]
    assert len(first_blocks) == 3
    for meta in first_blocks:
        convert = converter_for_block(process, meta)
        begin = convert.delta_ticks_to_ns_scalar(meta.begin_ticks)
        assert begin < process.start_time_ns
        assert abs(begin - meta.begin_time_ns) < 50_000  # within 50 µs of the client's wall clock
