"""FOCUS 1.0–1.2 CSV / Parquet exports -> candidate vendor lines (see `loaders`).

AWS Data Exports (Bedrock, also through AWS Marketplace), Azure Cost Management (Azure OpenAI),
and any other FOCUS producer. Every column is read as text, so decimals keep their literal
digits (a Parquet double becomes its shortest text); `NULL` and empty cells are null. CSV
delimiters are sniffed from the header (`,` `;` tab `|`). DateTimes may carry an offset or
none (FOCUS says UTC) and are converted to UTC before the day is taken.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.reconciliation.mapping import VendorMapping
from usagebox_pipelines.reconciliation.schemas import CHARGE_CLASSES
from usagebox_pipelines.schemas import QTY, TS

_REQUIRED = ("BilledCost", "BillingCurrency", "ChargePeriodStart", "ChargeCategory")
SCOPE_COLUMNS = ("BillingAccountId", "SubAccountId")
_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_NULLS = ["NULL", "null"]
Column = Callable[[str], pl.Expr]


def focus_candidates(path: Path, raw: bytes, mapping: VendorMapping) -> pl.DataFrame:
    """FOCUS rows as candidates: BilledCost exact from text, tokens from Consumed/Pricing."""
    df, delimiter = _read(path, raw)
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        read_as = f" (header read as {_DELIMITERS[delimiter]}-delimited)" if delimiter else ""
        raise UsageboxError(f"{path}: missing FOCUS column(s): {', '.join(missing)}{read_as}")
    spec = mapping.vendor("focus")
    col = _text_column(df)
    usage_type = pl.coalesce([col(c) for c in spec.usage_type_columns] or [pl.lit(None)])
    names = pl.coalesce([col(c) for c in spec.model_name_columns] or [pl.lit(None)])
    start = _utc(path, df, "ChargePeriodStart")
    period = _utc(path, df, "BillingPeriodStart") if "BillingPeriodStart" in df.columns else start
    df = df.with_row_index("source_row", offset=1).with_columns(
        _usage_type=usage_type,
        _model_name=names.str.to_lowercase(),
        payload=pl.struct(sorted(df.columns)).struct.json_encode(),
        content=_content(df.columns, col),
        _start=start,
        _period=period,
    )
    by_type = _first_match(pl.col("_usage_type").str.to_lowercase(), spec.model_tokens, True)
    cand = df.select(
        source_kind=pl.lit("focus"),
        date=pl.col("_start").dt.date(),
        billing_period=pl.col("_period").dt.strftime("%Y-%m"),
        vendor_model=pl.col("_usage_type"),
        vendor_line_item=pl.col("_usage_type"),
        quantity=_quantity(col),
        amount=col("BilledCost"),
        currency=col("BillingCurrency").str.to_uppercase(),
        charge_class=_charge_class(col),
        service_tier=pl.col("_usage_type").str.extract(r"-(batch|priority|flex)(?:-|$)", 1),
        vendor_scope=pl.struct([col(c).alias(c) for c in SCOPE_COLUMNS]).struct.json_encode(),
        provider=col("ProviderName"),
        # The model is in the usage type, else (AWS Marketplace rows) in ServiceName.
        model_id=pl.coalesce(by_type, _first_match(pl.col("_model_name"), spec.model_tokens, True)),
        meter_id=_first_match(pl.col("_usage_type"), spec.meter_patterns, False),
        payload=pl.col("payload"),
        content=pl.col("content"),
        source_row=pl.col("source_row").cast(pl.Int64),
    )
    return cand.with_columns(problem=_problem())


def _read(path: Path, raw: bytes) -> tuple[pl.DataFrame, str | None]:
    """All columns as text, and the CSV delimiter the header uses (None for Parquet)."""
    try:
        if path.name.lower().endswith(".parquet"):
            return pl.read_parquet(path).with_columns(pl.all().cast(pl.String)), None
        text = raw.decode("utf-8-sig")
        delimiter = _sniff(text.split("\n", 1)[0])
        frame = pl.read_csv(
            text.encode("utf-8"), infer_schema=False, separator=delimiter, null_values=_NULLS
        )
        return frame, delimiter
    except UnicodeDecodeError as exc:
        raise UsageboxError(f"{path}: not UTF-8 text: save the export as UTF-8 CSV") from exc
    except (pl.exceptions.PolarsError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageboxError(f"{path}: cannot read FOCUS export: {first}") from exc


def _sniff(header: str) -> str:
    """The delimiter of a CSV header: the candidate splitting it into the most fields."""
    counts = {d: len(next(csv.reader([header], delimiter=d))) for d in _DELIMITERS}
    return max(counts, key=lambda d: (counts[d], d == ","))


def _text_column(df: pl.DataFrame) -> Column:
    """A text column if present (blank as null), else a null literal."""

    def col(name: str) -> pl.Expr:
        if name not in df.columns:
            return pl.lit(None, dtype=pl.String())
        text = pl.col(name).str.strip_chars()
        return pl.when(text == "").then(None).otherwise(text)

    return col


def _content(columns: list[str], col: Column) -> pl.Expr:
    """What a row says, independent of column order and of how nulls were written."""
    cells = [pl.format("{}={}", pl.lit(name), col(name)) for name in sorted(columns)]
    return pl.concat_str(cells, separator="\x1f", ignore_nulls=True)


def _utc(path: Path, df: pl.DataFrame, name: str) -> pl.Series:
    """A FOCUS DateTime column as UTC: `Z`, an offset (converted), or none (UTC per the spec).

    Parsed once per distinct value (an export has a few hundred distinct hours)."""
    values = df[name].str.strip_chars()
    parsed: dict[str, datetime] = {}
    for value in values.drop_nulls().unique().to_list():
        try:
            ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            row = (values.index_of(value) or 0) + 1
            raise UsageboxError(
                f"{path}: row {row}: {name}: not a FOCUS DateTime: {value!r}"
            ) from None
        parsed[value] = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).astimezone(UTC)
    return values.replace_strict(parsed, default=None, return_dtype=TS)


def _unit_multiplier(unit: pl.Expr) -> pl.Expr:
    """Tokens per unit: '1K tokens' -> 1000, '1M Tokens' -> 1e6, 'Tokens' -> 1."""
    number = unit.str.extract(r"^\s*(\d+(?:\.\d+)?)", 1).fill_null("1").cast(QTY)
    suffix = unit.str.extract(r"^\s*\d*(?:\.\d+)?\s*([KkMm])\b", 1).str.to_uppercase()
    scale = pl.when(suffix == "K").then(1000).when(suffix == "M").then(1_000_000).otherwise(1)
    return number * scale.cast(QTY)


def _quantity(col: Column) -> pl.Expr:
    """Quantity text: ConsumedQuantity (in ConsumedUnit), else PricingQuantity × its block
    size. A value that is not exactly representable in 12 places stays as written (text), so
    the loader can send it to review rather than round it."""

    def scaled(qty: str, unit: str) -> pl.Expr:
        text = col(qty)
        exact = text.cast(QTY, strict=False) * _unit_multiplier(col(unit).fill_null("1"))
        plain = _places(text) <= 12
        return pl.when(plain).then(exact.cast(pl.String)).otherwise(text)

    return pl.coalesce(
        scaled("ConsumedQuantity", "ConsumedUnit"), scaled("PricingQuantity", "PricingUnit")
    )


def _places(text: pl.Expr) -> pl.Expr:
    """Decimal places of a number's text once trailing zeros are cut (0 for an integer)."""
    return text.str.extract(r"\.(\d*?)0*$", 1).str.len_chars().fill_null(0)


def _charge_class(col: Column) -> pl.Expr:
    """ChargeClass 'Correction' wins; else ChargeCategory lower-cased (Usage, Credit, Tax...)."""
    category = col("ChargeCategory").str.to_lowercase()
    return (
        pl.when(col("ChargeClass").str.to_lowercase() == "correction")
        .then(pl.lit("correction"))
        .otherwise(category)
    )


def _first_match(text: pl.Expr, table: tuple[tuple[str, str], ...], literal: bool) -> pl.Expr:
    """The value of the first (needle, value) whose needle is in `text` (literal or regex)."""
    if not table:
        return pl.lit(None, dtype=pl.String())

    def hit(needle: str) -> pl.Expr:
        if literal:
            return text.str.contains(needle.lower(), literal=True)
        return text.str.contains(f"(?i){needle}")

    (first, value), rest = table[0], table[1:]
    chain: Any = pl.when(hit(first)).then(pl.lit(value))
    for needle, value in rest:
        chain = chain.when(hit(needle)).then(pl.lit(value))
    return chain.otherwise(pl.lit(None, dtype=pl.String()))


def _problem() -> pl.Expr:
    """Why a FOCUS row cannot be used; only usage rows need a model and meter."""
    usage = pl.col("charge_class") == "usage"
    return (
        pl.when(pl.col("amount").is_null())
        .then(pl.lit("BilledCost is blank: FOCUS requires it on every row; re-export the file"))
        .when(~pl.col("charge_class").is_in(list(CHARGE_CLASSES)))
        .then(pl.format("unknown ChargeCategory '{}'", "charge_class"))
        .when(usage & pl.col("vendor_line_item").is_null())
        .then(pl.lit("usage row without a usage type (SkuMeter / x_UsageType / x_SkuMeterName)"))
        .when(usage & pl.col("model_id").is_null())
        .then(pl.format("no model token matches usage type '{}'", "vendor_line_item"))
        .when(usage & pl.col("meter_id").is_null())
        .then(pl.format("no meter pattern matches usage type '{}'", "vendor_line_item"))
        .when(usage & pl.col("quantity").is_null())
        .then(pl.lit("usage row without ConsumedQuantity or PricingQuantity"))
    )
