"""Turn rows of any accepted event shape into the canonical event schema, or a reject reason.

All four shapes (canonical, Stigg-style camelCase, snake_case aliases, transaction/meter/value)
map through one alias table (CONTRACT.md §2). Every check is a Polars expression over the whole
chunk; each failing row gets the first reason a person can act on.

Over 400 lines on purpose: the alias table and the per-field checks are one contract
(CONTRACT §2), read top to bottom.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import pandera.polars as pa
import polars as pl
from polars.exceptions import PanicException

from usagebox_pipelines.events.quantity import MAX_INTEGER_DIGITS, SCALE, parse_quantities
from usagebox_pipelines.events.readers import decode_json_objects, row_json
from usagebox_pipelines.events.window import event_window
from usagebox_pipelines.schemas import EVENT_FIELDS, QTY, TS

ALIASES: dict[str, list[str]] = {
    "event_id": ["event_id", "idempotencyKey", "idempotency_key", "transaction_id"],
    "account_id": ["account_id", "customer_id", "customerId"],
    "meter_id": ["meter_id", "meter", "eventName", "event_name"],
    "quantity": ["quantity", "value"],
    "timestamp": ["timestamp", "ts", "time"],
    "model_id": ["model_id", "model"],
}
PLAIN_STRINGS = [
    "product_id",
    "unit",
    "project_id",
    "correlation_id",
    "reason_code",
    "schema_version",
    "correction_of",
]
DIMENSION_SOURCES = ["dimensions", "metadata"]
KNOWN = (
    {a for names in ALIASES.values() for a in names}
    | set(PLAIN_STRINGS)
    | {
        "dimensions",
        "metadata",
        "billable",
        "_row",
        "_payload",
        "_qty_absent",
        "_shape_reason",
    }
)
MAX_DIMENSIONS = 16
MAX_ID = 128
SCALAR_ALIASES = [a for names in ALIASES.values() for a in names] + PLAIN_STRINGS + ["billable"]
MISSING_QUANTITY = (
    "quantity missing: the row has a quantity/value field but it is null or empty "
    "(only events without any quantity field count 1)"
)
PAYLOAD_FIELDS = [f for f in EVENT_FIELDS if f != "extra"]


class CanonicalEvents(pa.DataFrameModel):
    """The canonical event schema: the one definition every accepted row must satisfy."""

    event_id: str = pa.Field(str_length={"min_value": 1, "max_value": MAX_ID})
    account_id: str = pa.Field(str_length={"min_value": 1, "max_value": MAX_ID})
    meter_id: str = pa.Field(str_length={"min_value": 1, "max_value": MAX_ID})
    quantity: Annotated[pl.Decimal, 38, 12]
    timestamp: Annotated[pl.Datetime, "us", "UTC"]
    model_id: str = pa.Field(nullable=True)
    product_id: str = pa.Field(nullable=True)
    unit: str = pa.Field(nullable=True)
    project_id: str = pa.Field(nullable=True)
    dimensions: str = pa.Field(str_startswith="{")
    correlation_id: str = pa.Field(nullable=True)
    billable: bool
    reason_code: str = pa.Field(nullable=True)
    schema_version: str = pa.Field(nullable=True)
    correction_of: str = pa.Field(nullable=True)
    extra: str = pa.Field(nullable=True)

    class Config:
        strict = "filter"


def normalize_events(
    rows: pl.DataFrame, window: tuple[datetime, datetime] | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Canonical rows (plus `_row` and `_payload`) and rejects with a reason.

    `window` is the accepted [earliest, latest) event time (default: `event_window()` now).
    `_payload` is the raw JSON line, or null for CSV/Parquet rows: whoever quarantines such a
    row later uses its canonical form (`payload_expr`), computed only for the rows that need it.
    """
    if rows.height == 0:
        return _empty_canonical(), pl.DataFrame(
            schema={"_row": pl.Int64, "_payload": pl.String, "reason": pl.String}
        )
    window = window or event_window()
    rows, shape_reason = _scalar_shapes(rows)
    exact = _exact_quantity(rows)
    dims, dims_reason, metadata_model = _dimensions(rows)
    raw_text = "_payload" in rows.columns
    frame = rows.select(
        pl.col("_row"),
        pl.col("_payload") if raw_text else pl.lit(None, dtype=pl.String).alias("_payload"),
        *[
            _coalesce_string(rows, ALIASES[f]).alias(f)
            for f in ("event_id", "account_id", "meter_id")
        ],
        _quantity_text(rows).alias("_qty") if exact is None else exact.alias("quantity"),
        _quantity_absent(rows).alias("_qty_absent"),
        _timestamp(rows),
        pl.coalesce(_coalesce_string(rows, ALIASES["model_id"]), metadata_model).alias("model_id"),
        *[_coalesce_string(rows, [f]).alias(f) for f in PLAIN_STRINGS],
        dims.alias("dimensions"),
        pl.coalesce(shape_reason, dims_reason).alias("_dims_reason"),
        _billable_text(rows).alias("_billable"),
        _extra(rows).alias("extra"),
    )
    if exact is None:
        quantity, qty_reason = parse_quantities(frame["_qty"])
        frame = frame.with_columns(
            quantity.cast(QTY), _qty_reason=qty_reason, _qty_missing=pl.col("_qty").is_null()
        )
    else:  # integer or decimal columns that fit Decimal(38, 12): every value is exact
        frame = frame.with_columns(
            _qty_reason=pl.lit(None, dtype=pl.String), _qty_missing=pl.col("quantity").is_null()
        )
    frame = frame.with_columns(
        _min_ts=pl.lit(window[0], dtype=TS),
        _max_ts=pl.lit(window[1], dtype=TS),
        billable=pl.col("_billable").replace_strict(
            {"true": True, "1": True, "false": False, "0": False},
            default=None,
            return_dtype=pl.Boolean,
        ),
    )
    # The reason text is built only for the (few) rows with a problem.
    bad = frame.select(_rejected()).to_series()
    rejects = frame.filter(bad).select("_row", "_payload", reason=_reason())
    if not raw_text and rejects.height:
        raw = rows.filter(bad).drop("_row")
        rejects = rejects.with_columns(_payload=raw.select(row_json(raw)).to_series())
    valid = frame.filter(~bad)
    valid = valid.with_columns(billable=pl.col("billable").fill_null(True))
    valid = valid.select("_row", "_payload", *EVENT_FIELDS)
    valid, schema_rejects = _validate_schema(valid)
    return valid, pl.concat([rejects, schema_rejects])


def payload_expr() -> pl.Expr:
    """Canonical JSON of the billing fields: equal payloads are duplicates, others conflicts."""
    fields = [
        pl.col(f).cast(pl.String) if f in ("quantity", "billable") else pl.col(f)
        for f in PAYLOAD_FIELDS
        if f != "timestamp"
    ]
    ts = pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").alias("timestamp")
    return pl.struct([*fields, ts]).struct.json_encode()


def _empty_canonical() -> pl.DataFrame:
    return pl.DataFrame(schema={"_row": pl.Int64, "_payload": pl.String, **EVENT_FIELDS})


def _exact_quantity(rows: pl.DataFrame) -> pl.Expr | None:
    """The quantity as Decimal(38, 12) straight from typed columns, when every quantity column
    is an integer or a decimal that always fits (no value can need a reason but "missing");
    None when some column needs the exact text parser (`parse_quantities`)."""
    present = [n for n in ALIASES["quantity"] if n in rows.columns]
    if not present:
        return None

    def fits(dtype: pl.DataType) -> bool:
        if isinstance(dtype, pl.Decimal):
            scale = dtype.scale or 0
            precision = dtype.precision or 38
            return scale <= SCALE and precision - scale <= MAX_INTEGER_DIGITS
        return dtype.is_integer()

    if not all(fits(rows.schema[n]) for n in present):
        return None
    return pl.coalesce([pl.col(n).cast(QTY) for n in present])


def _coalesce_string(rows: pl.DataFrame, names: list[str]) -> pl.Expr:
    present = [n for n in names if n in rows.columns and not _is_nested(rows.schema[n])]
    if not present:
        return pl.lit(None, dtype=pl.String)
    return pl.coalesce([_as_text(n, rows.schema[n]) for n in present]).str.strip_chars()


def _as_text(name: str, dtype: pl.DataType) -> pl.Expr:
    if dtype == pl.String:
        return pl.col(name).replace("", None)
    if isinstance(dtype, pl.Datetime):
        return pl.col(name).dt.strftime("%Y-%m-%dT%H:%M:%S%.f%:z")
    return pl.col(name).cast(pl.String)


def _is_nested(dtype: pl.DataType) -> bool:
    return isinstance(dtype, pl.Struct | pl.List | pl.Array)


def _quantity_text(rows: pl.DataFrame) -> pl.Expr:
    """Quantity as text (floats as their shortest round-trip text); absent counts 1 (Stigg-style).

    "Absent" means the row's shape has no quantity/value field at all (no such column, or for
    JSON the key itself missing: `_qty_absent`); a present field that is null or empty is a
    reject reason (`MISSING_QUANTITY`), never a silent 1.
    """
    present = [n for n in ALIASES["quantity"] if n in rows.columns]
    if not present:
        return pl.lit("1")
    text = pl.coalesce([_as_text(n, rows.schema[n]) for n in present]).str.strip_chars()
    text = text.replace("", None)
    return pl.when(text.is_null() & _quantity_absent(rows)).then(pl.lit("1")).otherwise(text)


def _quantity_absent(rows: pl.DataFrame) -> pl.Expr:
    if not any(n in rows.columns for n in ALIASES["quantity"]):
        return pl.lit(True)
    if "_qty_absent" in rows.columns:
        return pl.col("_qty_absent").fill_null(False)
    return pl.lit(False)


def _scalar_shapes(rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.Expr]:
    """Reject rows where a single-value field holds a list or object; drop those columns.

    The column is replaced by nulls so no later expression has to cope with a nested type.
    """
    reason = pl.lit(None, dtype=pl.String)
    nested = [n for n in SCALAR_ALIASES if n in rows.columns and _is_nested(rows.schema[n])]
    for name in reversed(nested):
        kind = "an object" if isinstance(rows.schema[name], pl.Struct) else "a list"
        reason = (
            pl.when(pl.col(name).is_not_null())
            .then(pl.lit(f"{name} must be a single value, not {kind}"))
            .otherwise(reason)
        )
    if not nested:
        return rows, reason
    flags = rows.select(reason.alias("_shape_reason"))
    rows = rows.with_columns([pl.lit(None, dtype=pl.String).alias(n) for n in nested])
    return rows.with_columns(flags), pl.col("_shape_reason")


def _timestamp(rows: pl.DataFrame) -> pl.Expr:
    """Parse RFC 3339 with an offset (or Z) to UTC; naive or unparsable values become null."""
    present = [n for n in ALIASES["timestamp"] if n in rows.columns]
    if not present:
        return pl.lit(None, dtype=TS).alias("timestamp")
    parts = []
    for name in present:
        dtype = rows.schema[name]
        if isinstance(dtype, pl.Datetime):
            parts.append(
                pl.col(name).dt.convert_time_zone("UTC").dt.cast_time_unit("us")
                if dtype.time_zone
                else pl.lit(None, dtype=TS)
            )
        else:
            text = (
                pl.col(name)
                .cast(pl.String)
                .str.strip_chars()
                .str.replace(r"^(\d{4}-\d{2}-\d{2})[ tT]", "${1}T")
                .str.replace(r"[zZ]$", "+00:00")
            )
            parts.append(
                text.str.to_datetime(
                    "%Y-%m-%dT%H:%M:%S%.f%:z", strict=False, time_unit="us"
                ).dt.convert_time_zone("UTC")
            )
    return pl.coalesce(parts).alias("timestamp")


def _billable_text(rows: pl.DataFrame) -> pl.Expr:
    if "billable" not in rows.columns:
        return pl.lit(None, dtype=pl.String)
    return pl.col("billable").cast(pl.String).str.strip_chars().str.to_lowercase()


def _extra(rows: pl.DataFrame) -> pl.Expr:
    """Columns the contract does not name, kept as JSON text (never billed)."""
    names = [n for n in rows.columns if n not in KNOWN]
    if not names:
        return pl.lit(None, dtype=pl.String)
    cols = [
        pl.col(n).cast(pl.String)
        if rows.schema[n].is_temporal() or rows.schema[n] == pl.Decimal
        else pl.col(n)
        for n in names
    ]
    all_null = pl.all_horizontal([pl.col(n).is_null() for n in names])
    return pl.when(all_null).then(None).otherwise(pl.struct(cols).struct.json_encode())


# --- dimensions --------------------------------------------------------------------------------


def _dimensions(rows: pl.DataFrame) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """(canonical dimensions JSON, reject reason, model lifted from `metadata`).

    `dimensions` wins where a row has it; otherwise `metadata` (minus its `model`) is used.
    """
    text, reason = pl.lit("{}"), pl.lit(None, dtype=pl.String)
    model = pl.lit(None, dtype=pl.String)
    for source in reversed([n for n in DIMENSION_SOURCES if n in rows.columns]):
        if rows.schema[source] == pl.String:
            src_text, src_reason, src_model = _source_dimensions_unique(rows, source)
        else:
            src_text, src_reason, src_model = _source_dimensions(rows, source)
        if src_model is not None:
            model = src_model
        present = pl.col(source).is_not_null()
        text = pl.when(present).then(src_text).otherwise(text)
        reason = pl.when(present).then(src_reason).otherwise(reason)
    return text, reason, model


def _source_dimensions(rows: pl.DataFrame, source: str):
    """(canonical JSON, reason, model or None) of one dimension source, row by row."""
    model = None
    struct = _dimension_struct(rows, source)
    if struct is None:
        return pl.lit("{}"), pl.lit(f"{source} must be a JSON object"), None
    values, dtype = struct
    fields = {f.name: f.dtype for f in dtype.fields}
    if source == "metadata" and "model" in fields and not _is_nested(fields["model"]):
        model = values.struct.field("model")
        fields.pop("model")
    text, reason = _canonical_json(values, fields, source)
    return text, reason, model


def _source_dimensions_unique(rows: pl.DataFrame, source: str):
    """`_source_dimensions` for JSON text: decoded once per distinct text, mapped back by value.

    Dimension texts repeat heavily (a few hundred distinct values per million events), and every
    step after schema inference is row-local; the inferred schema over the distinct texts is the
    union over all rows, so the result equals the row-by-row path.
    """
    uniq = rows.select(pl.col(source).unique()).filter(pl.col(source).is_not_null())
    if uniq.height == 0:
        return _source_dimensions(rows, source)
    text, reason, model = _source_dimensions(uniq, source)
    table = uniq.select(
        pl.col(source),
        text.cast(pl.String).alias("text"),
        reason.cast(pl.String).alias("reason"),
        (model if model is not None else pl.lit(None)).cast(pl.String).alias("model"),
    )

    def mapped(column: str) -> pl.Expr:
        return pl.col(source).replace_strict(
            table[source], table[column], default=None, return_dtype=pl.String
        )

    return mapped("text"), mapped("reason"), (mapped("model") if model is not None else None)


def _dimension_struct(rows: pl.DataFrame, name: str) -> tuple[pl.Expr, pl.Struct] | None:
    dtype = rows.schema[name]
    if isinstance(dtype, pl.Struct):
        return pl.col(name), dtype
    if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct):
        # A Parquet map column: key/value pairs re-encoded as JSON object text (escaped).
        def quoted(field: str) -> pl.Expr:
            one = pl.struct(pl.element().struct.field(field).cast(pl.String).alias("k"))
            return one.struct.json_encode().str.strip_prefix('{"k":').str.strip_suffix("}")

        pair = pl.concat_str(quoted("key"), pl.lit(":"), quoted("value"))
        text = rows.select(
            pl.concat_str(pl.lit("{"), pl.col(name).list.eval(pair).list.join(","), pl.lit("}"))
        ).to_series()
        return _decode_text(text)
    if dtype == pl.String:
        return _decode_text(rows[name])
    if dtype == pl.Null:
        return pl.lit(None, dtype=pl.Struct({})), pl.Struct({})
    return None


def _decode_text(texts: pl.Series) -> tuple[pl.Expr, pl.Struct]:
    """Decode a column of JSON-object text; rows that are not objects get a marker field."""
    cleaned = texts.replace("", None)
    try:
        decoded = decode_json_objects(cleaned.fill_null("{}"))
        decoded = pl.select(pl.when(cleaned.is_null()).then(None).otherwise(decoded)).to_series()
    except (pl.exceptions.PolarsError, PanicException):
        canon = [_canonical_python(v) for v in cleaned.to_list()]
        good = pl.Series([c if r is None else "{}" for c, r in canon], dtype=pl.String)
        bad = pl.Series("__invalid__", [r for _c, r in canon], dtype=pl.String)
        decoded = decode_json_objects(good)
        decoded = (
            pl.DataFrame(decoded)
            .unnest(decoded.name)
            .with_columns(bad)
            .select(pl.struct(pl.all()).alias("_json"))
            .to_series()
        )
    return pl.lit(decoded), decoded.dtype


def _canonical_python(value: str | None) -> tuple[str, str | None]:
    """Slow path for a chunk holding unparsable dimension text: (object re-encoded with every
    scalar as a string, None) or ("{}", reason). Numbers keep their literal text."""
    if value is None:
        return "{}", None
    try:
        obj = json.loads(value, parse_float=str, parse_int=str, parse_constant=str)
    except RecursionError:
        return "{}", "is nested too deeply"
    except ValueError:
        return "{}", "is not a valid JSON object"
    if not isinstance(obj, dict):
        return "{}", "is not a valid JSON object"
    flat = {}
    for key, item in obj.items():
        if isinstance(item, dict | list):
            return "{}", f".{key} must be a scalar value (string, number or bool)"
        if item is not None:
            flat[key] = ("true" if item else "false") if isinstance(item, bool) else str(item)
    return json.dumps(flat, sort_keys=True, ensure_ascii=False), None


def _canonical_json(values: pl.Expr, fields: dict[str, pl.DataType], source: str):
    """Sorted-key compact JSON of the non-null scalar values, and a reason if invalid."""
    marker_fields = set(fields)
    if "__invalid__" in fields:
        invalid = values.struct.field("__invalid__").is_not_null()
        fields = {k: v for k, v in fields.items() if k != "__invalid__"}
    else:
        invalid = pl.lit(False)
    names = sorted(fields)
    scalars = [n for n in names if not _is_nested(fields[n])]
    nested = [n for n in names if _is_nested(fields[n])]
    pairs = [
        pl.when(values.struct.field(n).is_not_null()).then(
            pl.struct(values.struct.field(n).cast(pl.String).alias(n))
            .struct.json_encode()
            .str.strip_prefix("{")
            .str.strip_suffix("}")
        )
        for n in scalars
    ]
    text = (
        pl.concat_str(
            pl.lit("{"), pl.concat_list(pairs).list.drop_nulls().list.join(","), pl.lit("}")
        )
        if pairs
        else pl.lit("{}")
    )
    count = (
        pl.sum_horizontal([values.struct.field(n).is_not_null() for n in names])
        if names
        else pl.lit(0)
    )
    reason = pl.when(invalid).then(
        pl.concat_str(pl.lit(source), pl.lit(" "), values.struct.field("__invalid__")).str.replace(
            f"^{source} \\.", f"{source}."
        )
        if "__invalid__" in marker_fields
        else pl.lit(f"{source} is not a valid JSON object")
    )
    for n in nested:
        reason = reason.when(values.struct.field(n).is_not_null()).then(
            pl.lit(f"{source}.{n} must be a scalar value (string, number or bool)")
        )
    reason = reason.when(count > MAX_DIMENSIONS).then(
        pl.format(f"{source} has {{}} keys; at most {MAX_DIMENSIONS} are allowed", count)
    )
    text = pl.when(values.is_null()).then(pl.lit("{}")).otherwise(text)
    return text, reason.otherwise(None)


# --- reasons -----------------------------------------------------------------------------------


def _rejected() -> pl.Expr:
    """True for rows with a problem: exactly the rows `_reason()` gives a reason."""
    checks = [cond.fill_null(False) for cond, _text in _checks()]
    return pl.any_horizontal(pl.col("_dims_reason").is_not_null(), *checks).alias("_rejected")


def _reason() -> pl.Expr:
    """The first problem of each row, worded so the sender knows what to fix."""
    expr = pl.when(pl.col("_dims_reason").is_not_null()).then(pl.col("_dims_reason"))
    for cond, text in _checks():
        value = pl.lit(text) if isinstance(text, str) else text
        expr = expr.when(cond.fill_null(False)).then(value)
    return expr.otherwise(None).alias("reason")


def _checks() -> list[tuple[pl.Expr, str | pl.Expr]]:
    """(condition, reason) per check, in the order a row's first problem is reported."""
    return [
        (pl.col("event_id").is_null(), "missing event_id (or idempotencyKey/transaction_id)"),
        (pl.col("event_id").str.len_chars() > MAX_ID, f"event_id longer than {MAX_ID} characters"),
        (pl.col("account_id").is_null(), "missing account_id (or customer_id/customerId)"),
        (
            pl.col("account_id").str.len_chars() > MAX_ID,
            f"account_id longer than {MAX_ID} characters",
        ),
        (pl.col("meter_id").is_null(), "missing meter_id (or meter/eventName/event_name)"),
        (pl.col("meter_id").str.len_chars() > MAX_ID, f"meter_id longer than {MAX_ID} characters"),
        (pl.col("timestamp").is_null(), "timestamp missing or not RFC 3339 with an offset or Z"),
        (
            pl.col("timestamp") < pl.col("_min_ts"),
            pl.format(
                "timestamp {} is before the first accepted hour {} (USAGEBOX_MIN_EVENT_TIME)",
                _iso(pl.col("timestamp")),
                _iso(pl.col("_min_ts")),
            ),
        ),
        (
            pl.col("timestamp") >= pl.col("_max_ts"),
            pl.format(
                "timestamp {} is more than USAGEBOX_MAX_FUTURE_DAYS days in the future "
                "(accepted up to {})",
                _iso(pl.col("timestamp")),
                _iso(pl.col("_max_ts")),
            ),
        ),
        (pl.col("_qty_missing"), MISSING_QUANTITY),
        (pl.col("_qty_reason").is_not_null(), pl.col("_qty_reason")),
        (pl.col("quantity").is_null(), "quantity out of range (max 26 integer digits)"),
        (
            (pl.col("quantity") < 0) & pl.col("correction_of").is_null(),
            "negative quantity without correction_of (only corrections may be negative)",
        ),
        (
            pl.col("_billable").is_not_null() & pl.col("billable").is_null(),
            "billable must be true or false",
        ),
        (
            (pl.col("billable") == False) & pl.col("reason_code").is_null(),  # noqa: E712
            "billable=false needs a reason_code",
        ),
        (pl.col("correction_of") == pl.col("event_id"), "correction_of points to itself"),
    ]


def _iso(ts: pl.Expr) -> pl.Expr:
    return ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _validate_schema(valid: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Final guard: the pandera schema; failing rows go to quarantine, never into tables."""
    try:
        CanonicalEvents.validate(valid.select(*EVENT_FIELDS), lazy=True)
        return valid, pl.DataFrame(
            schema={"_row": pl.Int64, "_payload": pl.String, "reason": pl.String}
        )
    except pa.errors.SchemaErrors as exc:
        cases = pl.DataFrame(exc.failure_cases)
        bad_idx = cases.get_column("index").drop_nulls().cast(pl.Int64).unique()
        if bad_idx.len() == 0:
            raise
        reason = "schema check failed: " + "; ".join(
            sorted({f"{c} {k}" for c, k in zip(cases["column"], cases["check"], strict=True)})
        )
        mask = pl.int_range(valid.height, eager=True).is_in(bad_idx.implode())
        rejects = valid.filter(mask).select(
            "_row", pl.coalesce("_payload", payload_expr()).alias("_payload"), reason=pl.lit(reason)
        )
        return valid.filter(~mask), rejects
