"""Restatement of closed periods: late events and corrections become adjustment lines.

An issued invoice never changes (CONTRACT §5.5). When a closed month is re-rated with every
event known now, each comparable line (same account, meter, model, unit, price version, tier,
unit price) is compared with what was already billed for that month: the original lines plus
adjustments issued since. The difference of ROUNDED amounts is the adjustment, so for every
closed month: issued lines + all its adjustments = rounded lines of the latest re-rating, to
the cent, whatever the tiers did in between. Usage, discount and minimum true-up are restated;
prepaid credit is not (see `_restated`).
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from usagebox_pipelines.invoicing.lines import COMPARABLE_KEY, DETAIL_SEP, rated_lines
from usagebox_pipelines.schemas import INVOICE_LINES, MONEY, MONEY2, QTY, conform

_ZERO_QTY = pl.lit(0).cast(QTY)
_ZERO_MONEY = pl.lit(0).cast(MONEY2)


def billed_for_period(issued_lines: pl.DataFrame, period: str) -> pl.DataFrame:
    """Every issued line that bills `period`: its invoice's own lines (not adjustments of older
    months carried on it) and adjustment lines issued later that adjust it."""
    return issued_lines.filter(bills([period]))


def bills(periods: list[str]) -> pl.Expr:
    """The lines that bill one of `periods` (see `billed_for_period`), as a filter a stage can
    push into its scan."""
    own = pl.col("period").is_in(periods) & (pl.col("kind") != "adjustment")
    later = (pl.col("kind") == "adjustment") & pl.col("adjusts_period").is_in(periods)
    return own | later


def compute_adjustments(
    rerated: pl.DataFrame, issued_lines: pl.DataFrame, period: str
) -> pl.DataFrame:
    """Adjustment lines for closed `period`: rounded re-rated lines − rounded billed lines.

    `rerated`: RATED_USAGE of `period` re-rated now (all accounts). `issued_lines`: issued
    INVOICE_LINES (any periods; filtered here). Returns unnumbered INVOICE_LINES with kind
    `adjustment`, `adjusts_period` = period, `period` null (set by the invoice that carries
    them), one per comparable group whose amount changed; `exact_amount` = `amount` (the
    difference of two rounded amounts is already exact money).
    """
    now = _totals(_restated(rated_lines(rerated.filter(pl.col("period") == period))))
    before = _totals(_restated(billed_for_period(issued_lines, period)))
    joined = now.join(before, on=COMPARABLE_KEY, how="full", coalesce=True, nulls_equal=True)
    delta = joined.select(
        *COMPARABLE_KEY,
        kind=pl.lit("adjustment"),
        adjusts_period=pl.lit(period),
        description=_with_tier(pl.coalesce("description", "description_right")),
        quantity=pl.when(pl.col("meter_id").is_not_null()).then(_delta("quantity", _ZERO_QTY)),
        amount=_delta("amount", _ZERO_MONEY).cast(MONEY2),
    ).with_columns(exact_amount=pl.col("amount").cast(MONEY))
    changed = delta.filter(pl.col("amount") != 0)
    ordered = changed.sort(COMPARABLE_KEY, nulls_last=True)
    return conform(ordered, INVOICE_LINES)


def _restated(lines: pl.DataFrame) -> pl.DataFrame:
    """Lines a restatement compares: everything but prepaid credit. Credit is a balance drawn
    by issued invoices; re-drawing it for a closed month would spend it twice."""
    return lines.filter(pl.col("kind") != "credit")


def _totals(lines: pl.DataFrame) -> pl.DataFrame:
    """Quantity and rounded amount per comparable group; the description of an original line
    (not an earlier adjustment) when there is one."""
    first_desc = (
        pl.col("description")
        .sort_by(pl.col("kind") == "adjustment", pl.col("line_no"), nulls_last=True)
        .first()
    )
    return lines.group_by(COMPARABLE_KEY).agg(
        pl.col("quantity").sum().cast(QTY),
        pl.col("amount").sum().cast(MONEY2),
        first_desc.alias("description"),
    )


def _with_tier(description: pl.Expr) -> pl.Expr:
    """Name the tier on every tiered adjustment: the re-rated month may have fewer tiers than
    the issued one, so `tier 2` must not depend on which side the wording came from."""
    tier = pl.lit("tier ") + pl.col("tier").cast(pl.String)
    joiner = pl.when(description.str.contains(DETAIL_SEP, literal=True))
    joined = joiner.then(description + pl.lit(", ") + tier).otherwise(
        description + pl.lit(DETAIL_SEP) + tier
    )
    has_tier = description.str.contains(r"\btier \d+")
    return pl.when(pl.col("tier").is_null() | has_tier).then(description).otherwise(joined)


def _delta(column: str, zero: pl.Expr) -> pl.Expr:
    return pl.col(column).fill_null(zero) - pl.col(f"{column}_right").fill_null(zero)


def adjustments_for(
    issued_lines: pl.DataFrame, rerated: Mapping[str, pl.DataFrame]
) -> pl.DataFrame:
    """Adjustment lines for every re-rated closed month (period → its re-rated rows), in
    period order, against the issued lines so far."""
    parts = [compute_adjustments(rated, issued_lines, q) for q, rated in sorted(rerated.items())]
    parts = [p for p in parts if p.height]
    return pl.concat(parts) if parts else pl.DataFrame(schema=INVOICE_LINES)
