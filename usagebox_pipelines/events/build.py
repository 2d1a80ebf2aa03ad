"""Build the deduplicated `events` table from committed `raw_events` (pure Polars).

`raw_events` already holds one row per (account_id, event_id) — ingest dedupes over all
history — so this stage resolves corrections: where each counts (its original's hour), and
whether it applies (`ok`), waits for its original (`pending`) or was refused because it would
drive the original's net quantity below zero (`rejected`, never counted).
"""

from __future__ import annotations

import polars as pl

from usagebox_pipelines.schemas import EVENTS, conform

KEY = ["account_id", "event_id"]
ORDER = ["ingested_at", "batch_id", "row_number"]
# A correction is counted exactly where its original is: same hour and same rollup group.
INHERITED = ["meter_id", "model_id", "product_id", "unit", "dimensions", "billable"]


def resolve_corrections(corrections: pl.DataFrame, originals: pl.DataFrame) -> pl.DataFrame:
    """Status, reason and effective hour of every correction.

    `corrections`: raw rows with `correction_of`; `originals`: raw rows (account_id, event_id,
    quantity, hour) that corrections point at. Deltas apply in arrival order; one that would make
    the running net negative is rejected and does not count for later ones.
    """
    inherited = [c for c in INHERITED if c in originals.columns]
    orig = originals.select(
        "account_id",
        pl.col("event_id").alias("correction_of"),
        pl.col("quantity").alias("_orig_qty"),
        pl.col("hour").alias("_orig_hour"),
        *[pl.col(c).alias(f"_orig_{c}") for c in inherited],
    ).unique(["account_id", "correction_of"])
    joined = corrections.join(orig, on=["account_id", "correction_of"], how="left").sort(ORDER)
    pending = joined.filter(pl.col("_orig_qty").is_null()).with_columns(
        status=pl.lit("pending"),
        status_reason=pl.format("original event {} has not arrived yet", pl.col("correction_of")),
    )
    known = joined.filter(pl.col("_orig_qty").is_not_null()).with_columns(
        pl.col("_orig_hour").alias("hour"), *[pl.col(f"_orig_{c}").alias(c) for c in inherited]
    )
    rejected = known.clear().with_columns(status_reason=pl.lit(None, dtype=pl.String))
    group = ["account_id", "correction_of"]
    while known.height:
        running = known.sort(ORDER).with_columns(
            _net=pl.col("_orig_qty") + pl.col("quantity").cum_sum().over(group)
        )
        bad = _first_negative(running)
        if bad.height == 0:
            break
        rejected = pl.concat([rejected, bad], how="diagonal_relaxed")
        known = known.join(bad.select(KEY), on=KEY, how="anti")
    applied = known.with_columns(status=pl.lit("ok"), status_reason=pl.lit(None, dtype=pl.String))
    rejected = rejected.with_columns(status=pl.lit("rejected"))
    out = pl.concat([applied, rejected, pending], how="diagonal_relaxed")
    return out.drop(
        "_orig_qty", "_orig_hour", "_net", *[f"_orig_{c}" for c in inherited], strict=False
    )


def _first_negative(running: pl.DataFrame) -> pl.DataFrame:
    """Per original, the earliest delta at which the running net went below zero."""
    neg = running.filter(pl.col("_net") < 0)
    firsts = neg.group_by("account_id", "correction_of", maintain_order=True).head(1)
    return firsts.with_columns(
        status_reason=pl.format(
            "would make the net quantity of event {} negative ({})",
            pl.col("correction_of"),
            pl.col("_net").cast(pl.String),
        )
    )


def build_events(rows: pl.DataFrame, corrections: pl.DataFrame) -> pl.DataFrame:
    """`events` rows: originals as they are plus resolved corrections, in the EVENTS schema."""
    originals = rows.filter(pl.col("correction_of").is_null()).with_columns(
        status=pl.lit("ok"), status_reason=pl.lit(None, dtype=pl.String)
    )
    both = pl.concat([originals, corrections], how="diagonal_relaxed")
    both = both.unique(KEY, keep="first", maintain_order=True)
    return conform(both.with_columns(event_date=pl.col("hour").dt.date()), EVENTS)
