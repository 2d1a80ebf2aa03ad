"""Unique, random-looking ids (`evt_<16 hex>`, `run_<16 hex>`) computed column-wise.

An id is a bijective 64-bit mix of (stream, month, index) keyed by the seed, so ids never collide
within one seed (different streams/months/indices map to different ids) yet look like real
idempotency keys. Hex formatting reinterprets the UInt64 buffer as 8-byte binary through Arrow.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

_M64 = (1 << 64) - 1
_C1 = 0x9E3779B97F4A7C15
_C2 = 0xBF58476D1CE4E5B9
_C3 = 0x94D049BB133111EB

# Stream codes: the high byte of the pre-mix value, so streams never share an id.
STREAM_MAIN = 1
STREAM_PREV_MONTH = 2
STREAM_CORRECTION = 3
STREAM_LATE_MONTH = 4
STREAM_NEXT_MONTH = 5
STREAM_MALFORMED = 6
STREAM_LATE_CORRECTION = 7
STREAM_RUN = 0x40  # correlation ids: added to the event stream code


def id_base(stream: int, month_index: int) -> int:
    """The pre-mix prefix of an id: stream in the top byte, month index in the next 16 bits."""
    return ((stream & 0xFF) << 56) | ((month_index & 0xFFFF) << 40)


def _u64(value: int) -> pl.Expr:
    return pl.lit(value & _M64, dtype=pl.UInt64)


def _mix(x: pl.Expr, key: int) -> pl.Expr:
    """SplitMix64-style bijection on UInt64 (wrapping multiplies, xor-shifts, xor with key)."""
    y = (x * _u64(_C1)).xor(_u64(key))
    y = y.xor(y // _u64(1 << 31))
    y = y * _u64(_C2)
    y = y.xor(y // _u64(1 << 29))
    y = y * _u64(_C3)
    return y.xor(y // _u64(1 << 32))


def _hex(values: pl.Series) -> pl.Series:
    """Lower-case 16-char hex of each UInt64 (little-endian bytes; still a bijection)."""
    arr = values.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    fixed = pa.Array.from_buffers(pa.binary(8), len(arr), [None, arr.buffers()[1]], arr.offset)
    return pl.from_arrow(fixed).bin.encode("hex")


def make_ids(prefix: str, base: int, index: pl.Series, key: int) -> pl.Series:
    """`prefix` + hex(mix(base + index)); `index` must be < 2**40 and unique per (base, key)."""
    if index.len() == 0:
        return pl.Series(dtype=pl.String)
    frame = index.cast(pl.UInt64).rename("i").to_frame()
    mixed = frame.select(_mix(pl.col("i") + _u64(base), key)).to_series()
    return pl.select(pl.concat_str(pl.lit(prefix), pl.lit(_hex(mixed)))).to_series().rename("id")
