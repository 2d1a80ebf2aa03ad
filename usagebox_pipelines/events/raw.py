"""`raw_events` is the complete landing log: every valid arrival, with its `disposition`.

`accepted` (the first version of an event: the only rows `events` and dedupe history read),
`duplicate` (an exact re-send) or `conflict` (a re-send with another payload; also in
`event_conflicts`). So "which file re-sent event X, and when" is a query on `raw_events`.
Tables written before the column existed are read as all `accepted` (they held nothing else).
"""

from __future__ import annotations

import polars as pl

ACCEPTED, DUPLICATE, CONFLICT = "accepted", "duplicate", "conflict"
DISPOSITIONS = (ACCEPTED, DUPLICATE, CONFLICT)


def with_disposition(raw: pl.LazyFrame) -> pl.LazyFrame:
    """`raw` with a non-null `disposition` (missing column or null = `accepted`)."""
    if "disposition" not in raw.collect_schema().names():
        return raw.with_columns(disposition=pl.lit(ACCEPTED))
    return raw.with_columns(pl.col("disposition").fill_null(ACCEPTED))


def accepted_only(raw: pl.LazyFrame) -> pl.LazyFrame:
    """Only accepted arrivals: what every consumer that bills or dedupes must read."""
    return with_disposition(raw).filter(pl.col("disposition") == ACCEPTED)
