"""Seeded random columns for the demo generator, without NumPy (not a project dependency).

Each stream is a stdlib `random.Random` keyed by a string (stable across Python versions); its
`randbytes` output is viewed as an Arrow uint32 buffer, so millions of draws cost milliseconds and
no Python loop runs per value. Same key -> same columns, which makes every demo file reproducible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import polars as pl
import pyarrow as pa

_INV_2_32 = 2.0**-32


class Rng:
    """A named random stream: `Rng(seed, "main", day)` always yields the same columns."""

    def __init__(self, *key: object) -> None:
        self._rand = random.Random("usagebox-demo/" + "/".join(str(k) for k in key))

    def python(self) -> random.Random:
        """The underlying stdlib generator, for the few per-account / per-row scalar draws."""
        return self._rand

    def bits64(self) -> int:
        """One 64-bit integer (keys for id scrambling)."""
        return self._rand.getrandbits(64)

    def uniform(self, n: int) -> pl.Series:
        """`n` floats in [0, 1) with 32 random bits each."""
        if n <= 0:
            return pl.Series(dtype=pl.Float64)
        raw = self._rand.randbytes(4 * n)
        arr = pa.Array.from_buffers(pa.uint32(), n, [None, pa.py_buffer(raw)])
        return pl.from_arrow(arr).cast(pl.Float64) * _INV_2_32

    def normal(self, n: int) -> pl.Series:
        """`n` standard normal draws (Box-Muller), for log-normal token counts and durations."""
        u1, u2 = self.uniform(n), self.uniform(n)
        return ((1.0 - u1).log() * -2.0).sqrt() * (u2 * (2.0 * math.pi)).cos()


def choose(u: pl.Series, weights: Sequence[float]) -> pl.Series:
    """Index (UInt32) of a weighted category for each uniform draw in `u` (inverse CDF)."""
    total = float(sum(weights))
    cum, acc = [], 0.0
    for w in weights[:-1]:
        acc += w / total
        cum.append(acc)
    return pl.Series(cum, dtype=pl.Float64).search_sorted(u, side="right").cast(pl.UInt32)
