"""Exactly-once classification of normalised rows: new, duplicate, conflict, bad correction.

Pure functions over Polars frames. `history` is what earlier batches accepted for the keys in
question (account_id, event_id, payload, quantity, hour, correction_of); the first accepted
version of an event always stands.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

KEY = ["account_id", "event_id"]
HISTORY_COLUMNS = ["account_id", "event_id", "payload", "quantity", "hour", "correction_of"]


@dataclass
class Classified:
    new: pl.DataFrame  # rows to append to raw_events (with `hour`)
    duplicates: int
    conflicts: pl.DataFrame  # event_id, account_id, payload, kept_payload, _row
    rejects: pl.DataFrame  # _row, _payload, reason


def classify(valid: pl.DataFrame, history: pl.DataFrame) -> Classified:
    """Split a chunk of canonical rows against itself and against accepted history."""
    ordered = valid.sort("_row")
    first_payload = pl.col("payload").first().over(KEY)
    is_first = pl.int_range(pl.len()).over(KEY) == 0
    marked = ordered.with_columns(_first=is_first, _kept=first_payload)
    firsts = marked.filter(pl.col("_first")).drop("_first", "_kept")
    later = marked.filter(~pl.col("_first"))
    dup_within = later.filter(pl.col("payload") == pl.col("_kept")).height
    conflicts_within = later.filter(pl.col("payload") != pl.col("_kept")).rename(
        {"_kept": "kept_payload"}
    )

    prior = history.select(KEY + [pl.col("payload").alias("kept_payload")]).unique(KEY)
    joined = firsts.join(prior, on=KEY, how="left")
    seen = pl.col("kept_payload").is_not_null()
    dup_history = joined.filter(seen & (pl.col("payload") == pl.col("kept_payload"))).height
    conflicts_history = joined.filter(seen & (pl.col("payload") != pl.col("kept_payload")))
    new = joined.filter(~seen).drop("kept_payload")

    new, rejects = check_corrections(new, history)
    conflict_cols = ["event_id", "account_id", "payload", "kept_payload", "_row"]
    conflicts = pl.concat(
        [conflicts_within.select(conflict_cols), conflicts_history.select(conflict_cols)]
    )
    return Classified(new, dup_within + dup_history, conflicts, rejects)


def check_corrections(
    new: pl.DataFrame, history: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Give every new row its `hour`; reject corrections that could never be valid.

    A correction counts in its original's hour. One whose original is unknown stays pending
    (accepted; `events` applies it when the original arrives). One that targets another
    correction, or would take the original's net quantity below zero, is rejected.
    """
    new = new.with_columns(hour=pl.col("timestamp").dt.truncate("1h"))
    originals = pl.concat(
        [
            history.select("account_id", "event_id", "quantity", "hour", "correction_of"),
            new.filter(pl.col("correction_of").is_null()).select(
                "account_id", "event_id", "quantity", "hour", "correction_of"
            ),
        ]
    ).unique(KEY, keep="first")
    corr = new.filter(pl.col("correction_of").is_not_null()).join(
        originals.rename(
            {
                "event_id": "correction_of",
                "quantity": "_orig_qty",
                "hour": "_orig_hour",
                "correction_of": "_orig_corr",
            }
        ),
        on=["account_id", "correction_of"],
        how="left",
    )
    known = pl.col("_orig_qty").is_not_null()
    targets_correction = known & pl.col("_orig_corr").is_not_null()
    prior_net = (
        history.filter(pl.col("correction_of").is_not_null())
        .group_by("account_id", "correction_of")
        .agg(_prior=pl.col("quantity").sum())
    )
    corr = corr.join(prior_net, on=["account_id", "correction_of"], how="left")
    bad_target = corr.filter(targets_correction)
    candidates = corr.filter(~targets_correction)
    rejected_negative = _reject_negative_nets(candidates.filter(known))

    rejects = pl.concat(
        [
            bad_target.select(
                "_row",
                "_payload",
                reason=pl.format(
                    "correction_of {} is itself a correction; correct the original event instead",
                    pl.col("correction_of"),
                ),
            ),
            rejected_negative.select("_row", "_payload", "reason"),
        ]
    )
    hours = candidates.select("_row", "_orig_hour")
    accepted = (
        new.filter(~pl.col("_row").is_in(rejects["_row"].implode()))
        .join(hours, on="_row", how="left")
        .with_columns(hour=pl.coalesce("_orig_hour", "hour"))
        .drop("_orig_hour")
    )
    return accepted, rejects


def _reject_negative_nets(corr: pl.DataFrame) -> pl.DataFrame:
    """Corrections whose running net (original + earlier deltas, in row order) goes below zero.

    Removing a rejected delta changes later running sums, so repeat until stable (usually once).
    """
    rejected = corr.clear().with_columns(reason=pl.lit(None, dtype=pl.String))
    remaining = corr.sort("_row")
    group = ["account_id", "correction_of"]
    while remaining.height:
        running = remaining.with_columns(
            _net=pl.col("_orig_qty")
            + pl.col("_prior").fill_null(0)
            + pl.col("quantity").cum_sum().over(group)
        )
        first_bad = running.filter(pl.col("_net") < 0).group_by(group).agg(pl.col("_row").min())
        if first_bad.height == 0:
            break
        bad = running.join(first_bad, on=group + ["_row"], how="semi").with_columns(
            reason=pl.format(
                "correction would make the net quantity of event {} negative ({}); "
                "send a smaller correction",
                pl.col("correction_of"),
                pl.col("_net").cast(pl.String),
            )
        )
        rejected = pl.concat([rejected, bad.drop("_net")], how="diagonal_relaxed")
        remaining = remaining.filter(~pl.col("_row").is_in(bad["_row"].implode()))
    return rejected
