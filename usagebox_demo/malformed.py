"""Malformed rows: valid events broken afterwards in their file's shape, one defect each.

Breaking after shaping keeps every other field realistic (a real exporter wrote the row, one
value is bad) and lets the same reason look different per format: a JSON string that is not a
date, a CSV cell that is not a number, a Parquet row with a null customer.
"""

from __future__ import annotations

import polars as pl

from usagebox_demo.dirt import FILE, K_MALFORMED, KIND, REASON
from usagebox_demo.ids import STREAM_MALFORMED, id_base, make_ids
from usagebox_demo.usage import month_index

BAD_TIMESTAMP = "bad_timestamp"
MISSING_ACCOUNT = "missing_account"
NON_NUMERIC = "non_numeric_quantity"
NEGATIVE = "negative_quantity"
TOO_MANY_DIMS = "too_many_dimensions"
BROKEN_JSON = "broken_json"

# reason -> main files that get one such row per repetition (file keys as in generate.MAIN_FILES)
PLAN: dict[str, tuple[str, ...]] = {
    BAD_TIMESTAMP: ("01", "02", "03"),
    MISSING_ACCOUNT: ("01", "03", "05"),
    NON_NUMERIC: ("01", "02", "03"),
    NEGATIVE: ("01", "04", "05"),
    TOO_MANY_DIMS: ("01", "04", "05"),
    BROKEN_JSON: ("01",),
}
REASONS = tuple(PLAN)
EXTRA_DIM_KEYS = 17  # on top of the event's own keys: always more than the 16 allowed
_BAD_TS = "2026-10-32T25:61:00Z"
_EXTRA_DIMS = ",".join(f'"k{i:02d}":"v{i:02d}"' for i in range(1, EXTRA_DIM_KEYS + 1))


def plan_rows(reps: int) -> pl.DataFrame:
    """One row per malformed row to plant: (reason, file)."""
    pairs = [(r, f) for _ in range(reps) for r, files in PLAN.items() for f in files]
    return pl.DataFrame(pairs, schema={REASON: pl.String, FILE: pl.String}, orient="row")


def build(donors: pl.DataFrame, reps: int, *, month: str, id_key: int) -> pl.DataFrame:
    """Malformed rows as still-valid canonical events with fresh ids (broken later by shape).

    `donors` are clean LLM events (they always have a model, a quantity and dimensions); their
    fields are copied so the row looks like its neighbours.
    """
    plan = plan_rows(reps)
    n = plan.height
    if donors.height < n:
        raise ValueError(f"need {n} LLM events to build malformed rows, got {donors.height}")
    ids = make_ids(
        "evt_", id_base(STREAM_MALFORMED, month_index(month)), pl.int_range(n, eager=True), id_key
    )
    rows = donors.head(n).drop(FILE, KIND, REASON, strict=False)
    return rows.with_columns(event_id=ids).hstack(plan).with_columns(**{KIND: pl.lit(K_MALFORMED)})


def mutations(shape: str) -> list[pl.Expr]:
    """Expressions that break rows whose `_reason` is set, for a frame already in `shape`."""
    reason = pl.col(REASON)
    out: list[pl.Expr] = []
    for column, edits in _EDITS[shape].items():
        expr = pl.col(column)
        for why, edit in edits.items():
            expr = pl.when(reason == why).then(edit).otherwise(expr)
        out.append(expr.alias(column))
    return out


def _line_edits(ts_key: str, account_key: str, qty_key: str) -> dict[str, pl.Expr]:
    line = pl.col("line")
    qty_pattern = f'"{qty_key}":[^,}}]*'
    return {
        BAD_TIMESTAMP: line.str.replace(f'"{ts_key}":"[^"]*"', f'"{ts_key}":"{_BAD_TS}"'),
        MISSING_ACCOUNT: line.str.replace(f'"{account_key}":"[^"]*",', ""),
        NON_NUMERIC: line.str.replace(qty_pattern, f'"{qty_key}":"lots"'),
        NEGATIVE: line.str.replace(f'"{qty_key}":', f'"{qty_key}":-', literal=True),
        TOO_MANY_DIMS: line.str.replace(
            '"dimensions":{', '"dimensions":{' + _EXTRA_DIMS + ",", literal=True
        ),
        BROKEN_JSON: line.str.slice(0, (line.str.len_chars() * 3) // 5),
    }


def _stigg_edits() -> dict[str, pl.Expr]:
    line = pl.col("line")
    return {
        BAD_TIMESTAMP: line.str.replace('"timestamp":"[^"]*"', '"timestamp":"yesterday 14:00"'),
        NON_NUMERIC: line.str.replace('"value":[^,}]*', '"value":"N/A"'),
    }


def _text_dims_edit() -> pl.Expr:
    return pl.concat_str(
        pl.lit("{" + _EXTRA_DIMS + ","), pl.col("dimensions").str.strip_prefix("{")
    )


_EDITS: dict[str, dict[str, dict[str, pl.Expr]]] = {
    "canonical": {"line": _line_edits("timestamp", "account_id", "quantity")},
    "stigg": {"line": _stigg_edits()},
    "csv": {
        "ts": {BAD_TIMESTAMP: pl.lit("not-a-timestamp")},
        "customer_id": {MISSING_ACCOUNT: pl.lit(None, pl.String)},
        "value": {
            NON_NUMERIC: pl.lit("12abc"),
            NEGATIVE: pl.concat_str(pl.lit("-"), pl.col("value")),
        },
        "dimensions": {TOO_MANY_DIMS: _text_dims_edit()},
    },
    "parquet": {
        "customer_id": {MISSING_ACCOUNT: pl.lit(None, pl.String)},
        "value": {NEGATIVE: -pl.col("value")},
        "dimensions": {TOO_MANY_DIMS: _text_dims_edit()},
    },
}
