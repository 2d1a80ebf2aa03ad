"""Per-price monthly terms: a rate's `minimum` (true-up) and `maximum` (cap) per account.

Lago's per-charge minimum and Orb's price maximum: the month's amount of one price for one
account is topped up to `minimum` or cut to `maximum`. The grain is account × rate id (a `*`
markup rule resolves to one rate id per model, so its terms apply per model), over every
version and tier of the month, and only for accounts that used the price in the month: there are
no subscriptions to bill an unused price against.

The amount compared is what the invoice shows for the price: its usage lines grouped like the
invoice (`contract.INVOICE_LINE_KEYS`) and each rounded once, so the capped price lands exactly on
the cap and a true-up exactly on the minimum. The terms of the latest version that priced the
account's usage of the rate in the month apply. The adjustment is a usage row of the same rate
(price model `price_minimum` / `price_cap`, quantity 0, unit price = the term), so it is part of
the usage subtotal that discount, commitment and credit apply to, and `explain` finds its rule.
"""

from __future__ import annotations

from decimal import Decimal

import polars as pl

from usagebox_pipelines import schemas
from usagebox_pipelines.pricing.contract import INVOICE_LINE_KEYS
from usagebox_pipelines.pricing.money import minor_units, round_money
from usagebox_pipelines.pricing.pricebook import PricebookSet

TERM_MODELS = ("price_minimum", "price_cap")
_GROUP = ["account_id", "pricebook", "rate_id", "currency"]
_TERMS_SCHEMA = {
    "pricebook": pl.String,
    "price_version": pl.String,
    "rate_id": pl.String,
    "minimum": schemas.MONEY,
    "maximum": schemas.MONEY,
}


def price_term_rows(usage_lines: pl.DataFrame, books: PricebookSet) -> pl.DataFrame:
    """RATED_USAGE rows that true a price up to its minimum or cut it to its maximum."""
    terms = pl.DataFrame(
        [
            (v.pricebook, v.version, r.rate_id, r.minimum, r.maximum)
            for v in books.versions
            for r in v.rates
            if r.minimum is not None or r.maximum is not None
        ],
        schema=_TERMS_SCHEMA,
        orient="row",
    )
    used = usage_lines.filter(pl.col("rate_id").is_in(terms["rate_id"].unique().implode()))
    if used.is_empty():
        return pl.DataFrame(schema=schemas.RATED_USAGE)
    billed = _billed(used)
    joined = billed.join(terms, on=["pricebook", "price_version", "rate_id"], how="inner")
    minimum = pl.when(pl.col("billed") < pl.col("minimum")).then(
        pl.col("minimum") - pl.col("billed")
    )
    cap = pl.when(pl.col("billed") > pl.col("maximum")).then(pl.col("maximum") - pl.col("billed"))
    rows = pl.concat(
        [
            joined.with_columns(price_model=pl.lit(model), unit_price=term, amount=amount)
            for model, term, amount in (
                ("price_minimum", pl.col("minimum"), minimum),
                ("price_cap", pl.col("maximum"), cap),
            )
        ]
    ).filter(pl.col("amount").is_not_null())
    return schemas.conform(
        rows.with_columns(
            line_kind=pl.lit("usage"),
            dimensions=pl.lit("{}"),
            quantity=pl.lit(Decimal(0), dtype=schemas.QTY),
            per=pl.lit(Decimal(1), dtype=schemas.QTY),
        ),
        schemas.RATED_USAGE,
    )


def _billed(used: pl.DataFrame) -> pl.DataFrame:
    """Per account × rate: Σ of its invoice lines rounded once each (`billed`), the version of
    its latest rated hour, its meter, its model when it is one, and its hours."""
    parts = []
    for currency in used.get_column("currency").unique().sort().to_list():
        lines = (
            used.filter(pl.col("currency") == currency)
            .group_by([*INVOICE_LINE_KEYS, "pricebook", "period"])
            .agg(
                amount=pl.col("amount").sum(),
                first_hour=pl.col("first_hour").min(),
                last_hour=pl.col("last_hour").max(),
            )
            .with_columns(rounded=round_money(pl.col("amount"), minor_units(currency)))
        )
        parts.append(lines)
    lines = pl.concat(parts)
    latest = pl.col("price_version").sort_by("last_hour").last()
    return lines.group_by([*_GROUP, "period"]).agg(
        billed=pl.col("rounded").sum().cast(schemas.MONEY),
        price_version=latest,
        meter_id=pl.col("meter_id").first(),
        model_id=pl.when(pl.col("model_id").n_unique() == 1).then(pl.col("model_id").first()),
        first_hour=pl.col("first_hour").min(),
        last_hour=pl.col("last_hour").max(),
    )
