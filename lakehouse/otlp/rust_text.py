"""How micromegas's Rust code renders OTLP values as text (its `Display` and `Debug` output), which
spanlake must reproduce byte for byte: process ids and properties are derived from this text."""

from __future__ import annotations

import unicodedata
from decimal import Decimal

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def rust_display_f64(number: float) -> str:
    """Rust's `Display` of an f64 (no exponent; `NaN`, `inf`)."""
    if number != number:
        return "NaN"
    if number in (float("inf"), float("-inf")):
        return "inf" if number > 0 else "-inf"
    return format(Decimal(repr(number)).normalize(), "f")


def attr_to_string(value: AnyValue) -> str:
    """micromegas `attr_to_string`: Rust `Display` of scalars, `Debug` of bytes, arrays and kvlists."""
    kind = value.WhichOneof("value")
    if kind is None or kind == "string_value_strindex":  # profiling-only reference: absent here
        return ""
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return str(value.int_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "double_value":
        return rust_display_f64(value.double_value)
    if kind == "bytes_value":
        return _rust_debug_bytes(value.bytes_value)
    return f"Some({_rust_debug_oneof(value)})"


def _rust_debug_f64(number: float) -> str:
    if number != number or number in (float("inf"), float("-inf")):
        return rust_display_f64(number)
    if number == 0 or 1e-4 <= abs(number) < 1e16:
        text = rust_display_f64(number)
        return text if "." in text else text + ".0"
    sign, digits, exponent = Decimal(repr(number)).normalize().as_tuple()
    mantissa = "".join(map(str, digits))
    scientific = exponent + len(mantissa) - 1
    head = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
    return f"{'-' if sign else ''}{head}e{scientific}"


def _rust_debug_bytes(data: bytes) -> str:
    return "[" + ", ".join(map(str, data)) + "]"


def _rust_debug_str(text: str) -> str:
    """Rust `str` Debug: quoted, escaped like `char::escape_debug` (non-printables approximated)."""
    named = {"\0": "\\0", "\t": "\\t", "\r": "\\r", "\n": "\\n", "\\": "\\\\", '"': '\\"'}
    out = []
    for ch in text:
        if ch in named:
            out.append(named[ch])
        elif not ch.isprintable() or unicodedata.category(ch) in ("Mn", "Me"):
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _rust_debug_oneof(value: AnyValue) -> str:
    """Debug of prost's `any_value::Value` variant, e.g. `ArrayValue(ArrayValue { values: [...] })`."""
    kind = value.WhichOneof("value")
    variant = "".join(part.capitalize() for part in kind.split("_"))
    if kind == "string_value":
        inner = _rust_debug_str(value.string_value)
    elif kind == "bool_value":
        inner = "true" if value.bool_value else "false"
    elif kind == "int_value":
        inner = str(value.int_value)
    elif kind == "double_value":
        inner = _rust_debug_f64(value.double_value)
    elif kind == "bytes_value":
        inner = _rust_debug_bytes(value.bytes_value)
    elif kind == "string_value_strindex":
        inner = str(value.string_value_strindex)
    elif kind == "array_value":
        inner = f"ArrayValue {{ values: [{', '.join(map(_rust_debug_any, value.array_value.values))}] }}"
    else:
        pairs = ", ".join(map(_rust_debug_key_value, value.kvlist_value.values))
        inner = f"KeyValueList {{ values: [{pairs}] }}"
    return f"{variant}({inner})"


def _rust_debug_any(value: AnyValue) -> str:
    variant = f"Some({_rust_debug_oneof(value)})" if value.WhichOneof("value") else "None"
    return f"AnyValue {{ value: {variant} }}"


def _rust_debug_key_value(kv: KeyValue) -> str:
    value = f"Some({_rust_debug_any(kv.value)})" if kv.HasField("value") else "None"
    return f"KeyValue {{ key: {_rust_debug_str(kv.key)}, value: {value}, key_strindex: {kv.key_strindex} }}"
