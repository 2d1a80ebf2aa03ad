"""Per-event charges (ADR 0018): rates priced per transaction from `events`, never from hours.

Two kinds of rate need each event, not the hourly sums of `usage_hourly`:

- `percentage` with `fixed_amount`, `free_units_per_events`, `per_transaction_min` or
  `per_transaction_max` (Lago's percentage charge): each transaction (an original event with
  its corrections netted in) is charged `rate`% × its amount + `fixed_amount`, clamped to
  [`per_transaction_min`, `per_transaction_max`]. In the account's billing month, per account ×
  meter × model × rate id and in event-time order (timestamp, then event id), the first
  `free_units_per_events` transactions are free (no rate, no fee, no minimum); then the rate's
  `free_units` (an amount) come off the following transactions' amounts in order: one wholly
  inside them is free, the one that crosses them is charged on the rest (fee and clamp
  included), as in Lago's `compute_amount_with_transaction_min_max`. A transaction whose
  corrections net it to 0 is void: not charged and not counted.
- `dynamic` (Lago's dynamic charge, `precise_total_amount_cents`): each event carries its own
  amount in the dimension `amount_key`; the charge is the sum of those amounts. An amount that
  is missing or not a non-negative decimal with at most 12 places makes its transaction
  unrated with a reason: it is never priced at 0, and it blocks the close. A correction
  inherits its original's dimensions (events.build), so a corrected transaction is charged
  the original's amount × net quantity / original quantity (half-up at the 12th place); one
  whose quantity nets to 0 is void (Lago: no units, no amount).

`price_events` takes the matched event rows (`rating.match_usage` over events, with
`event_id`, `correction_of`, `timestamp`) and returns `rated_usage` lines (a free part as
`included`, the charged part as the rate's model), unrated rows, and one row per transaction
for `explain`. Money is Int128 at 12 decimal places (`money.to_scaled`), never float; each
transaction's percentage is rounded half-up at the 12th place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal

import polars as pl

from usagebox_pipelines import schemas
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.pricing.money import (
    EXACT,
    ONE,
    SAFE_LIMIT,
    fraction_of,
    from_scaled,
    lit_int,
    scaled_half_up_div,
    to_scaled,
)
from usagebox_pipelines.pricing.pricebook import PricebookSet

_I128 = pl.Int128
RATE_KEYS = ["pricebook", "price_version", "rate_idx"]
_USAGE_KEYS = ["account_id", "meter_id", "model_id", "product_id", "unit", "dimensions"]
_LINE_KEYS = [*_USAGE_KEYS, "currency", *RATE_KEYS]
_POSITION = ["account_id", "meter_id", "model_id", "rate_id"]
_ORDER = ["_ts", "_txn"]
#: A decimal amount text: at most 12 places (the exact scale), an optional sign.
_AMOUNT_RE = r"^-?[0-9]+(\.[0-9]{1,12})?$"

TRANSACTIONS = pl.Schema(
    {
        "account_id": pl.String(),
        "meter_id": pl.String(),
        "model_id": pl.String(),
        "rate_id": pl.String(),
        "pricebook": pl.String(),
        "price_version": pl.String(),
        "price_model": pl.String(),
        "event_id": pl.String(),
        "timestamp": schemas.TS,
        "events": pl.UInt32(),
        "amount": EXACT,
        "charged_on": EXACT,
        "charge": EXACT,
        "status": pl.String(),
    }
)


@dataclass(frozen=True)
class PerEventResult:
    """Rated usage lines (schemas.RATED_USAGE, before per-price terms), unrated rows
    (schemas.UNRATED_USAGE) and one row per transaction (`TRANSACTIONS`; `status`: charged,
    minimum, maximum (clamped), free_event, free_units, void)."""

    lines: pl.DataFrame
    unrated: pl.DataFrame
    transactions: pl.DataFrame


def per_event_rates(books: PricebookSet) -> pl.DataFrame:
    """One row per per-event rate of every version: its keys and its rule as exact integers
    (scaled by 10^12; null when the option is not set)."""
    rows = []
    for version in books.versions:
        for position, rate in enumerate(version.rates):
            if not rate.per_event:
                continue
            price = fraction_of(rate.unit_price or Decimal(0))

            def scaled(value: Decimal | None) -> int | None:
                return None if value is None else int(value * ONE)

            rows.append(
                (
                    version.pricebook,
                    version.version,
                    position,
                    rate.rate_id,
                    rate.price_model,
                    rate.unit_price,
                    price.numerator,
                    price.denominator,
                    scaled(rate.fixed_amount) or 0,
                    rate.free_events,
                    int(rate.free_units * ONE),
                    scaled(rate.transaction_min),
                    scaled(rate.transaction_max),
                    rate.amount_key,
                    json.dumps(dict(rate.dimensions), sort_keys=True, separators=(",", ":")),
                )
            )
    schema = {
        "pricebook": pl.String,
        "price_version": pl.String,
        "rate_idx": pl.Int32,
        "rate_id": pl.String,
        "price_model": pl.String,
        "unit_price": EXACT,
        "num": _I128,
        "den": _I128,
        "fixed": _I128,
        "free_events": pl.Int64,
        "free": _I128,
        "low": _I128,
        "high": _I128,
        "amount_key": pl.String,
        "rate_dims": pl.String,
    }
    return pl.DataFrame(rows, schema=schema, orient="row")


def per_event_meters(books: PricebookSet) -> list[str]:
    """Meters some version prices per event: the only events the stage reads."""
    return sorted(
        {r.meter_id for v in books.versions for r in v.rates if r.per_event},
    )


def price_events(matched: pl.DataFrame, books: PricebookSet, period: str) -> PerEventResult:
    """Matched event rows (`sum` = the event's quantity) of per-event rates → lines."""
    meta = per_event_rates(books)
    rows = matched.join(meta, on=RATE_KEYS, how="inner")
    if rows.is_empty():
        return PerEventResult(
            pl.DataFrame(schema=schemas.RATED_USAGE),
            pl.DataFrame(schema=schemas.UNRATED_USAGE),
            pl.DataFrame(schema=TRANSACTIONS),
        )
    txns = _transactions(rows)
    bad = txns.filter(pl.col("_bad"))
    priced = _charges(txns.filter(~pl.col("_bad")))
    return PerEventResult(
        _lines(priced, meta, period), _unrated(bad, period), _transaction_rows(priced)
    )


def _amount_text(keys: list[str]) -> pl.Expr:
    """Each row's text in its rate's `amount_key` dimension (one `when` per key, a few)."""
    text = pl.lit(None, dtype=pl.String)
    for key in keys:
        value = pl.col("dimensions").str.json_path_match(f"$['{key}']")
        text = pl.when(pl.col("amount_key") == key).then(value).otherwise(text)
    return text


def _transactions(rows: pl.DataFrame) -> pl.DataFrame:
    """One row per transaction: an original event and its corrections, amounts netted.

    A correction counts at its original's time and keys (events.build). Percentage amounts
    are the events' quantities; dynamic amounts the `amount_key` dimension, which must be a
    non-negative decimal (at most 12 places), read from the original event."""
    keys = sorted(set(rows["amount_key"].drop_nulls().to_list()))
    text = _amount_text(keys)
    is_correction = pl.col("correction_of").is_not_null()
    ok = text.str.contains(_AMOUNT_RE).fill_null(False) & ~text.str.starts_with("-").fill_null(
        False
    )
    dynamic = pl.col("price_model") == "dynamic"
    quantity = to_scaled(pl.col("sum"))
    # a correction inherits its original's dimensions (events.build), so a dynamic amount is
    # read from the original only and scaled by the net quantity below
    own = to_scaled(pl.when(ok & ~is_correction).then(text).cast(EXACT)).fill_null(lit_int(0))
    amount = pl.when(dynamic).then(own).otherwise(quantity)
    tagged = rows.with_columns(
        _txn=pl.coalesce("correction_of", "event_id"),
        _q=quantity,
        _a=amount,
        _bad_row=dynamic & ~ok & ~is_correction,
        _orig=~is_correction,
    ).sort("_orig", "timestamp", descending=[True, False])
    first = [
        pl.col(c).first()
        for c in [*_LINE_KEYS[1:], "rate_id", "price_model", "hour", "amount_key", "rate_dims"]
        if c in tagged.columns
    ]
    txns = tagged.group_by("account_id", "_txn", maintain_order=True).agg(
        *first,
        *[
            pl.col(c).first()
            for c in ("num", "den", "fixed", "free_events", "free", "low", "high", "unit_price")
        ],
        _ts=pl.col("timestamp").first(),
        _events=pl.len().cast(pl.UInt32),
        _q=pl.col("_q").sum(),
        _a=pl.col("_a").sum(),
        _q_orig=pl.col("_q").filter(pl.col("_orig")).sum(),
        _bad=pl.col("_bad_row").any(),
        _bad_event=pl.col("event_id").filter(pl.col("_bad_row")).first(),
    )
    return _scaled_by_corrections(txns)


def _scaled_by_corrections(txns: pl.DataFrame) -> pl.DataFrame:
    """A corrected dynamic transaction is charged its original amount × net quantity /
    original quantity (half-up at the 12th place): a refund of half the units refunds half
    the price; one of all of them voids it. Other transactions keep their amount."""
    scaled = (pl.col("price_model") == "dynamic") & (pl.col("_events") > 1)
    zero = lit_int(0)
    corrected = txns.filter(scaled)
    if corrected.height:
        widest = int(corrected.select(pl.col("_a").abs().max()).item() or 0)
        most = int(corrected.select(pl.col("_q").abs().max()).item() or 0)
        if 2 * widest * most >= SAFE_LIMIT:
            raise UsageboxError("a corrected dynamic amount is too large to scale exactly")
    share = scaled_half_up_div(pl.col("_a") * pl.col("_q"), pl.col("_q_orig"))
    return txns.with_columns(
        _a=pl.when(scaled & (pl.col("_q_orig") > zero))
        .then(share)
        .when(scaled)
        .then(zero)
        .otherwise(pl.col("_a"))
    ).drop("_q_orig")


def _charges(txns: pl.DataFrame) -> pl.DataFrame:
    """Per transaction: the amount charged on (`_base`), the charge, and why (`_status`)."""
    zero = lit_int(0)
    amount = pl.col("_a")
    widest = int(txns.select(amount.abs().max()).item() or 0)
    if 2 * widest * int(txns["num"].max() or 1) >= SAFE_LIMIT:
        raise UsageboxError("a transaction amount is too large to rate exactly with its rate")
    percentage = pl.col("price_model") == "percentage"
    counted = percentage & (amount > zero)
    # rank among the counted transactions of the position (void ones are not events)
    rank = (
        pl.when(counted)
        .then(pl.int_range(pl.len()).over([*_POSITION, "_counted"], order_by=_ORDER))
        .otherwise(None)
    )
    txns = txns.with_columns(_counted=counted).with_columns(_rank=rank)
    free_event = counted & (pl.col("_rank") < pl.col("free_events"))
    paid = counted & ~free_event
    txns = txns.with_columns(_free_event=free_event, _paid=paid)
    # the free amount (`free_units`) comes off the following transactions' amounts in order
    paid_amount = pl.when(pl.col("_paid")).then(amount).otherwise(zero)
    before = paid_amount.cum_sum().over(_POSITION, order_by=_ORDER) - paid_amount
    remaining = pl.max_horizontal(pl.col("free") - before, zero)
    base = (
        pl.when(pl.col("_paid"))
        .then(pl.max_horizontal(amount - remaining, zero))
        .when(pl.col("price_model") == "dynamic")
        .then(amount)
    )
    txns = txns.with_columns(_base=base.otherwise(zero))
    charged = pl.col("_paid") & (pl.col("_base") > zero)
    share = scaled_half_up_div(pl.col("_base") * pl.col("num"), pl.col("den"))
    txns = txns.with_columns(_share=pl.when(charged).then(share).otherwise(zero))
    raw = pl.col("_share") + pl.col("fixed")
    low, high = pl.col("low"), pl.col("high")
    clamped = (
        pl.when(low.is_not_null() & (raw < low))
        .then(low)
        .when(high.is_not_null() & (raw > high))
        .then(high)
        .otherwise(raw)
    )
    status = (
        pl.when(pl.col("price_model") == "dynamic")
        .then(pl.when(pl.col("_q") == zero).then(pl.lit("void")).otherwise(pl.lit("charged")))
        .when(~counted)
        .then(pl.lit("void"))
        .when(pl.col("_free_event"))
        .then(pl.lit("free_event"))
        .when(~charged)
        .then(pl.lit("free_units"))
        .when(low.is_not_null() & (raw < low))
        .then(pl.lit("minimum"))
        .when(high.is_not_null() & (raw > high))
        .then(pl.lit("maximum"))
        .otherwise(pl.lit("charged"))
    )
    charge = (
        pl.when(pl.col("price_model") == "dynamic")
        .then(pl.when(pl.col("_q") == zero).then(zero).otherwise(amount))
        .when(charged)
        .then(clamped)
        .otherwise(zero)
    )
    return txns.with_columns(_charge=charge, _status=status)


def _lines(priced: pl.DataFrame, meta: pl.DataFrame, period: str) -> pl.DataFrame:
    """Rated lines per account × usage keys × version × rate, in parts whose amounts add up to
    the transactions' charges and whose quantities add up to their amounts (invariant 4):

    - `percentage`: transactions charged as computed: quantity the amount charged on, amount
      the rate's share of it; `transaction_fee`: their fixed fees (quantity 0, unit price the
      fee, amount fee × transactions);
    - `transaction_min` / `transaction_max`: transactions clamped to the per-transaction
      minimum / maximum (quantity their amounts, unit price the bound, amount bound ×
      transactions: the whole charge, fee included);
    - `included`: the free part (free events, free units), amount 0;
    - `dynamic`: quantity the events' quantity, amount the sum of their own amounts.

    A dynamic event's dimensions hold its own amount, so its lines take the rate's dimension
    filter instead (one line per rate, not one per distinct amount)."""
    dynamic = pl.col("price_model") == "dynamic"
    percentage = pl.col("price_model") == "percentage"
    status = pl.col("_status")
    priced = priced.with_columns(
        dimensions=pl.when(dynamic).then(pl.col("rate_dims")).otherwise(pl.col("dimensions")),
        _rate_price=pl.col("unit_price"),
    )
    keys = [*_LINE_KEYS, "hour"]
    none = pl.lit(None, dtype=EXACT)
    zero = lit_int(0)

    def part(
        cond: pl.Expr, model: str, q: pl.Expr, amount: pl.Expr, price: pl.Expr
    ) -> pl.DataFrame:
        return priced.filter(cond).select(
            *keys,
            _model=pl.lit(model),
            _q=q,
            _amount=amount,
            _price=price.cast(EXACT),
        )

    normal = percentage & (status == "charged")
    parts = [
        part(dynamic & (status == "charged"), "dynamic", pl.col("_q"), pl.col("_charge"), none),
        part(normal, "percentage", pl.col("_base"), pl.col("_share"), pl.col("_rate_price")),
        part(normal & (pl.col("fixed") > zero), "transaction_fee", zero, pl.col("fixed"),
             from_scaled(pl.col("fixed"))),
        part(status == "minimum", "transaction_min", pl.col("_base"), pl.col("_charge"),
             from_scaled(pl.col("low"))),
        part(status == "maximum", "transaction_max", pl.col("_base"), pl.col("_charge"),
             from_scaled(pl.col("high"))),
        part(percentage & (pl.col("_a") > pl.col("_base")), "included",
             pl.col("_a") - pl.col("_base"), zero, pl.lit(Decimal(0))),
    ]  # fmt: skip
    grouped = (
        pl.concat(parts)
        .group_by(*_LINE_KEYS, "_model", "_price")
        .agg(
            _q=pl.col("_q").sum(),
            _amount=pl.col("_amount").sum(),
            first_hour=pl.col("hour").min(),
            last_hour=pl.col("hour").max(),
        )
        .join(meta.select(*RATE_KEYS, "rate_id"), on=RATE_KEYS)
    )
    lines = grouped.with_columns(
        period=pl.lit(period),
        line_kind=pl.lit("usage"),
        tier=pl.lit(None, pl.Int32),
        price_model=pl.col("_model"),
        quantity=from_scaled(pl.col("_q")),
        amount=from_scaled(pl.col("_amount")),
        unit_price=pl.col("_price"),
        per=pl.lit(Decimal(1), dtype=EXACT),
    )
    return schemas.conform(lines, schemas.RATED_USAGE)


def _unrated(bad: pl.DataFrame, period: str) -> pl.DataFrame:
    """Dynamic transactions without a valid amount: unrated, with the event to fix."""
    if bad.is_empty():
        return pl.DataFrame(schema=schemas.UNRATED_USAGE)
    reason = pl.format(
        "dynamic rate '{}' ({}@{}) needs each event's amount in dimension '{}' (a decimal "
        "≥ 0 with at most 12 places): {} transaction(s) without "
        "one, first event {}",
        pl.col("rate_id").first(),
        pl.col("pricebook").first(),
        pl.col("price_version").first(),
        pl.col("amount_key").first(),
        pl.len(),
        pl.col("_bad_event").sort().first(),
    )
    out = (
        bad.group_by("account_id", "meter_id", "model_id", "dimensions", "rate_id")
        .agg(
            reason=reason,
            quantity=from_scaled(pl.col("_q").sum()),
            first_hour=pl.col("hour").min(),
        )
        .with_columns(period=pl.lit(period))
    )
    return schemas.conform(out, schemas.UNRATED_USAGE)


def _transaction_rows(priced: pl.DataFrame) -> pl.DataFrame:
    out = priced.select(
        "account_id",
        "meter_id",
        "model_id",
        "rate_id",
        "pricebook",
        "price_version",
        "price_model",
        pl.col("_txn").alias("event_id"),
        pl.col("_ts").alias("timestamp"),
        pl.col("_events").alias("events"),
        from_scaled(pl.col("_a")).alias("amount"),
        from_scaled(pl.col("_base")).alias("charged_on"),
        from_scaled(pl.col("_charge")).alias("charge"),
        pl.col("_status").alias("status"),
    ).sort("account_id", "rate_id", "timestamp", "event_id")
    return schemas.conform(out, TRANSACTIONS)
