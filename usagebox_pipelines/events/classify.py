"""Exactly-once classification of normalised rows: new, duplicate, conflict, bad correction.

Pure functions over Polars frames. `history` is what earlier batches accepted for the keys in
question (account_id, event_id, payload, quantity, hour, correction_of); the first accepted
version of an event always stands.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from usagebox_pipelines.events.build import resolve_corrections
from usagebox_pipelines.events.normalize import PAYLOAD_FIELDS, payload_expr
from usagebox_pipelines.schemas import TS

KEY = ["account_id", "event_id"]
# Columns of accepted history the classification needs; `payload` is derived from them.
HISTORY_COLUMNS = [*PAYLOAD_FIELDS, "hour", "ingested_at", "batch_id", "row_number"]
ORIGINAL = ["account_id", "event_id", "quantity", "hour"]
CORRECTION = [
    "account_id",
    "event_id",
    "correction_of",
    "quantity",
    "timestamp",
    "hour",
    "ingested_at",
    "batch_id",
    "row_number",
]
# Rows of the arriving chunk sort after all history when corrections are resolved in order.
_LATER = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass
class Classified:
    """Every row of the chunk in exactly one of: new, duplicate_rows, conflicts, rejects."""

    new: pl.DataFrame  # accepted rows (with `hour`)
    duplicate_rows: pl.DataFrame  # exact re-sends (canonical columns)
    conflicts: pl.DataFrame  # re-sends with another payload (canonical columns + kept_payload)
    rejects: pl.DataFrame  # _row, _payload, reason

    @property
    def duplicates(self) -> int:
        return self.duplicate_rows.height


def classify(valid: pl.DataFrame, history: pl.DataFrame) -> Classified:
    """Split a chunk of canonical rows against itself and against accepted history.

    `history` carries its `payload`; the chunk's payload (canonical JSON of the billing fields,
    `payload_expr`) is computed only for rows that share a key with another row or with
    history, the only ones it is compared for.
    """
    ordered = _in_row_order(valid)
    prior = history.select(KEY + [pl.col("payload").alias("kept_payload")]).unique(KEY)
    # One hash pass marks first occurrences; the kept payload is joined onto the (usually few)
    # repeated rows only, instead of two window expressions over every row. A repeated row is
    # compared with the version that stands: history's if the key has one (then the chunk's
    # first occurrence is itself a re-send), else the chunk's first occurrence.
    marked = ordered.with_columns(_first=pl.struct(KEY).is_first_distinct())
    firsts = marked.filter(pl.col("_first")).drop("_first")
    later = marked.filter(~pl.col("_first")).drop("_first").with_columns(payload=payload_expr())
    kept = firsts.join(later.select(KEY).unique(), on=KEY, how="semi").select(
        *KEY, _kept=payload_expr()
    )
    later = (
        later.join(kept, on=KEY, how="left")
        .join(prior, on=KEY, how="left")
        .with_columns(_kept=pl.coalesce("kept_payload", "_kept"))
        .drop("kept_payload")
        .sort("_row")
    )
    dup_within = later.filter(pl.col("payload") == pl.col("_kept")).drop("_kept")
    conflicts_within = later.filter(pl.col("payload") != pl.col("_kept")).rename(
        {"_kept": "kept_payload"}
    )

    seen = firsts.join(prior, on=KEY, how="inner").with_columns(payload=payload_expr())
    dup_history = seen.filter(pl.col("payload") == pl.col("kept_payload"))
    conflicts_history = seen.filter(pl.col("payload") != pl.col("kept_payload"))
    new = (
        firsts.join(prior.select(KEY), on=KEY, how="anti", maintain_order="left")
        if prior.height
        else firsts
    )

    new, rejects = check_corrections(new, history)
    columns = [*firsts.columns, "payload"]
    duplicates = pl.concat([dup_within.select(columns), dup_history.select(columns)])
    conflicts = pl.concat(
        [
            conflicts_within.select(*columns, "kept_payload"),
            conflicts_history.select(*columns, "kept_payload"),
        ]
    )
    return Classified(new, duplicates.sort("_row"), conflicts.sort("_row"), rejects)


def check_corrections(
    new: pl.DataFrame, history: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Give every new row its `hour`; reject corrections that can never apply.

    A correction counts in its original's hour. One whose original is unknown stays pending
    (accepted; `events` applies it when the original arrives). One that targets another
    correction, or that would take the original's net quantity below zero given every earlier
    correction (resolved exactly as `events` resolves them), is rejected.
    """
    new = new.with_columns(hour=pl.col("timestamp").dt.truncate("1h"))
    is_correction = pl.col("correction_of").is_not_null()
    corrections = new.filter(is_correction)
    if corrections.height == 0:
        return new, _no_rejects()
    # Raw text for quarantine (CSV/Parquet rows carry none: their canonical form stands in).
    corrections = corrections.with_columns(_payload=pl.coalesce("_payload", payload_expr()))
    targets = corrections.select("account_id", pl.col("correction_of").alias("event_id")).unique()
    originals = (
        pl.concat(
            [
                history.filter(pl.col("correction_of").is_null()).select(ORIGINAL),
                new.filter(~is_correction).join(targets, on=KEY, how="semi").select(ORIGINAL),
            ]
        )
        .join(targets, on=KEY, how="semi")
        .unique(KEY, keep="first")
    )
    pointing_at_corrections = corrections.join(
        history.filter(pl.col("correction_of").is_not_null()).select(
            "account_id", pl.col("event_id").alias("correction_of")
        ),
        on=["account_id", "correction_of"],
        how="semi",
    )
    chunk = corrections.join(pointing_at_corrections.select("_row"), on="_row", how="anti")
    earlier = history.filter(pl.col("correction_of").is_not_null())
    arriving = chunk.with_columns(
        ingested_at=pl.lit(_LATER, dtype=earlier.schema.get("ingested_at", TS)),
        batch_id=pl.lit("~"),
        row_number=pl.col("_row"),
    )
    resolved = resolve_corrections(
        pl.concat([earlier.select(CORRECTION), arriving.select(CORRECTION)]), originals
    ).filter(pl.col("batch_id") == "~")
    rejects = pl.concat(
        [
            pointing_at_corrections.select(
                "_row",
                "_payload",
                reason=pl.format(
                    "correction_of {} is itself a correction; correct the original event instead",
                    pl.col("correction_of"),
                ),
            ),
            resolved.filter(pl.col("status") == "rejected")
            .join(chunk.select("_row", "_payload"), left_on="row_number", right_on="_row")
            .select(
                pl.col("row_number").alias("_row"),
                "_payload",
                reason=pl.format(
                    "correction {}; send a smaller correction", pl.col("status_reason")
                ),
            ),
        ]
    )
    hours = resolved.filter(pl.col("status") == "ok").select(
        pl.col("row_number").alias("_row"), pl.col("hour").alias("_orig_hour")
    )
    # The few corrections that apply take their original's hour in place (no join, sort or
    # merge of the whole chunk); rejected ones leave.
    at = (
        new.with_row_index("_at")
        .filter(is_correction)
        .select("_at", "_row")
        .join(hours, on="_row", how="inner")
    )
    hour = new["hour"].scatter(at["_at"], at["_orig_hour"]) if at.height else new["hour"]
    accepted = new.with_columns(hour=hour)
    if rejects.height:
        accepted = accepted.filter(~pl.col("_row").is_in(rejects["_row"].implode()))
    return _in_row_order(accepted), rejects


def _in_row_order(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` sorted by `_row` (without sorting when it already is: the usual case)."""
    return frame if frame["_row"].is_sorted() else frame.sort("_row")


def _no_rejects() -> pl.DataFrame:
    return pl.DataFrame(schema={"_row": pl.Int64, "_payload": pl.String, "reason": pl.String})
