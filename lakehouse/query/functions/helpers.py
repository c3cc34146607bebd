"""The small numeric and color UDFs of micromegas's screens: bin_center, lerp, unlerp, rgba, color_scale,
lerp_color.

Colors are packed `0xRRGGBBAA` UInt32; float channels in [0, 1] are scaled by 255 with round-half-up and
clamped at the byte boundary (NaN gives 0, as Rust's saturating `as u8`). A NULL argument gives NULL.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datafusion import ScalarUDF, udf

from spanlake.lakehouse.errors import QueryError
from spanlake.lakehouse.query.functions import colormaps

F64 = pa.float64()


def bin_center(coord: pa.Array, cell_size: pa.Array) -> pa.Array:
    """The center of the zero-centered bin of width `cell_size` holding `coord`: floor((c + cs/2) / cs) * cs."""
    half = pc.multiply(cell_size, 0.5)
    return pc.multiply(pc.floor(pc.divide(pc.add(coord, half), cell_size)), cell_size)


def lerp(a: pa.Array, b: pa.Array, t: pa.Array) -> pa.Array:
    """a + (b - a) * t, unclamped."""
    return pc.add(a, pc.multiply(pc.subtract(b, a), t))


def unlerp(a: pa.Array, b: pa.Array, x: pa.Array) -> pa.Array:
    """(x - a) / (b - a), unclamped; IEEE NaN or ±inf when a == b."""
    return pc.divide(pc.subtract(x, a), pc.subtract(b, a))


def rgba(r: pa.Array, g: pa.Array, b: pa.Array, a: pa.Array) -> pa.Array:
    """Four [0, 1] channels packed as 0xRRGGBBAA."""
    return _packed([_float_to_byte(channel) for channel in (r, g, b, a)], _valid(r, g, b, a))


def lerp_color(c1: pa.Array, c2: pa.Array, t: pa.Array) -> pa.Array:
    """Channel-wise interpolation of two packed colors, t clamped to [0, 1] (straight alpha, sRGB bytes)."""
    weight = np.clip(_floats(t), 0.0, 1.0)
    first, second = _uint32(c1), _uint32(c2)
    channels = []
    for shift in (24, 16, 8, 0):
        low = ((first >> shift) & 0xFF).astype(np.float64)
        high = ((second >> shift) & 0xFF).astype(np.float64)
        channels.append(_round_to_byte(low + (high - low) * weight))
    return _packed(channels, _valid(c1, c2, t))


def color_scale(name: pa.Array, t: pa.Array, alpha: pa.Array) -> pa.Array:
    """A perceptual colormap (viridis, magma, plasma, inferno, cividis, turbo) sampled at t with the given
    alpha, packed as 0xRRGGBBAA. Each distinct name is resolved once; an unknown one is an error."""
    valid = _valid(name, t, alpha)
    names = pc.dictionary_encode(name)
    positions = np.clip(_floats(t), 0.0, 1.0)  # NaN stays NaN: it samples as black, as in colorous
    red, green, blue = (np.zeros(len(name), np.uint32) for _ in range(3))
    codes = np.asarray(names.indices.fill_null(-1))
    for code, colormap in enumerate(names.dictionary.to_pylist()):
        rows = codes == code
        gradient = colormaps.gradient(colormap)
        if gradient is None:
            raise QueryError(
                f"color_scale(): unknown colormap '{colormap}'. Recognized: {', '.join(colormaps.RECOGNIZED)}"
            )
        red[rows], green[rows], blue[rows] = gradient(positions[rows])
    return _packed([red, green, blue, _float_to_byte(alpha)], valid)


def _floats(array: pa.Array) -> np.ndarray:
    return np.asarray(array.fill_null(0.0), dtype=np.float64)


def _uint32(array: pa.Array) -> np.ndarray:
    return np.asarray(array.fill_null(0), dtype=np.uint32)


def _float_to_byte(channel: pa.Array) -> np.ndarray:
    return _round_to_byte(_floats(channel) * 255.0)


def _round_to_byte(values: np.ndarray) -> np.ndarray:
    """Round-half-up to 0..=255; NaN saturates to 0."""
    return np.nan_to_num(np.clip(values + 0.5, 0.0, 255.0), nan=0.0).astype(np.uint32)


def _valid(*arrays: pa.Array) -> np.ndarray:
    valid = np.ones(len(arrays[0]), dtype=bool)
    for array in arrays:
        valid &= np.asarray(array.is_valid())
    return valid


def _packed(channels: list[np.ndarray], valid: np.ndarray) -> pa.Array:
    r, g, b, a = (np.asarray(channel, dtype=np.uint32) for channel in channels)
    return pa.array((r << 24) | (g << 16) | (b << 8) | a, pa.uint32(), mask=~valid)


def scalar_udfs() -> list[ScalarUDF]:
    """The helper UDFs with micromegas's exact signatures."""
    return [
        udf(bin_center, [F64, F64], F64, "immutable", "bin_center"),
        udf(lerp, [F64, F64, F64], F64, "immutable", "lerp"),
        udf(unlerp, [F64, F64, F64], F64, "immutable", "unlerp"),
        udf(rgba, [F64, F64, F64, F64], pa.uint32(), "immutable", "rgba"),
        udf(color_scale, [pa.utf8(), F64, F64], pa.uint32(), "immutable", "color_scale"),
        udf(lerp_color, [pa.uint32(), pa.uint32(), F64], pa.uint32(), "immutable", "lerp_color"),
    ]
