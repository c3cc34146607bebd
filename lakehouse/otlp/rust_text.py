"""How micromegas's Rust code renders OTLP values as text (its `Display` and `Debug` output), which
spanlake must reproduce byte for byte: process ids and properties are derived from this text."""

from __future__ import annotations

from decimal import Decimal


def rust_display_f64(number: float) -> str:
    """Rust's `Display` of an f64 (no exponent; `NaN`, `inf`)."""
    if number != number:
        return "NaN"
    if number in (float("inf"), float("-inf")):
        return "inf" if number > 0 else "-inf"
    return format(Decimal(repr(number)).normalize(), "f")
