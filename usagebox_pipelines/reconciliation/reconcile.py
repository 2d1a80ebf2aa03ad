"""Monthly reconciliation: our metered usage vs what each vendor reported and billed.

Grain: vendor × UTC day × model × meter. Variances are vendor minus ours, so a positive
quantity variance is usage the vendor served that we never metered (unbilled). Money is checked
on the vendor's own quantity at its list rate, so a quantity drift inside tolerance never shows
up as a rate problem; `amount_variance` (billed − metered × rate) is the money at stake.
Credits, tax, corrections, adjustments and purchases are listed as their own rows, not compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import Decimal

import polars as pl

from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.reconciliation.mapping import VendorMapping
from usagebox_pipelines.reconciliation.schemas import (
    METERED_DAILY,
    RECONCILIATION,
    VENDOR_COSTS,
)
from usagebox_pipelines.schemas import MONEY, QTY, conform, empty

GRAIN = ["vendor", "date", "model_id", "meter_id"]
_HUNDRED = pl.lit(Decimal(100), dtype=QTY)


def period_days(period: str) -> tuple[date, date]:
    """[first day, first day of next month) of a `YYYY-MM` period."""
    start, end = month_bounds(period)
    return start.date(), end.date()


def metered_daily(
    usage_hourly: pl.DataFrame | pl.LazyFrame, mapping: VendorMapping
) -> pl.DataFrame:
    """Our metered quantity per vendor × UTC day × model × meter.

    All usage counts, billable or not: the vendor served (and billed us for) all of it. Rows are
    routed to a vendor by `vendors.yaml` routing; meters we do not meter or usage no rule routes
    (gpu_seconds, tool_calls) are left out.
    """
    lf = usage_hourly.lazy()
    cols = set(lf.collect_schema().names())
    rows = (
        lf.filter(
            pl.col("meter_id").is_in(mapping.metered_meters) & pl.col("model_id").is_not_null()
        )
        .with_columns(vendor=mapping.route_expr(cols), date=pl.col("hour").dt.date())
        .filter(pl.col("vendor").is_not_null())
        .group_by(GRAIN)
        .agg(quantity=pl.col("sum").sum().cast(QTY))
        .collect()
    )
    return conform(rows, METERED_DAILY).sort(GRAIN)


def reconcile(
    metered: pl.DataFrame,
    vendor_costs: pl.DataFrame,
    mapping: VendorMapping,
    period: str,
    qty_tolerance_pct: Decimal | None = None,
    amount_tolerance: Decimal | None = None,
    *,
    amount_tolerance_pct: Decimal | None = None,
    vendors: Sequence[str] | None = None,
) -> pl.DataFrame:
    """RECONCILIATION rows of one month (tolerances default to `vendors.yaml`).

    `matched` when |vendor qty − metered| ≤ qty_tolerance_pct % of vendor qty and
    |billed − vendor qty × list rate| ≤ max(amount_tolerance, amount_tolerance_pct % of billed);
    else `under_metered` / `over_metered` (quantities disagree) or `rate_mismatch` (quantities
    agree, money does not); `vendor_only` / `meter_only` when one side is absent.
    """
    tol = mapping.tolerances
    tq = Decimal(qty_tolerance_pct if qty_tolerance_pct is not None else tol.quantity_pct)
    ta = Decimal(amount_tolerance if amount_tolerance is not None else tol.amount)
    tp = Decimal(amount_tolerance_pct if amount_tolerance_pct is not None else tol.amount_pct)
    start, end = period_days(period)
    costs = conform(vendor_costs, VENDOR_COSTS)
    ours = conform(metered, METERED_DAILY)
    if vendors is not None:
        costs = costs.filter(pl.col("vendor").is_in(list(vendors)))
        ours = ours.filter(pl.col("vendor").is_in(list(vendors)))
    in_period = (pl.col("date") >= start) & (pl.col("date") < end)
    usage = _usage_rows(ours.filter(in_period), costs.filter(in_period), mapping, tq, tp, ta)
    other = _other_rows(costs, period)
    currencies = {name: spec.currency for name, spec in mapping.vendors.items()}
    rows = pl.concat([usage, other], how="diagonal_relaxed") if other.height else usage
    rows = rows.with_columns(
        period=pl.lit(period),
        currency=pl.col("vendor").replace_strict(currencies, default=None, return_dtype=pl.String),
        qty_tolerance_pct=pl.lit(tq, dtype=QTY),
        amount_tolerance=pl.lit(ta, dtype=MONEY),
        amount_tolerance_pct=pl.lit(tp, dtype=QTY),
        mapping_version=pl.lit(mapping.version),
    )
    return conform(rows, RECONCILIATION).sort([*GRAIN, "charge_class"], nulls_last=True)


def _vendor_side(costs: pl.DataFrame) -> pl.DataFrame:
    """Vendor quantity (usage exports first, else costs exports) and billed usage per grain."""
    usage = pl.col("charge_class") == "usage"
    from_usage = usage & (pl.col("source_kind") != "costs") & pl.col("quantity").is_not_null()
    from_costs = usage & (pl.col("source_kind") == "costs") & pl.col("quantity").is_not_null()
    billed = usage & (pl.col("source_kind") != "usage") & pl.col("amount").is_not_null()
    return (
        costs.filter(usage)
        .group_by(GRAIN)
        .agg(
            _q_usage=pl.col("quantity").filter(from_usage).sum(),
            _n_usage=from_usage.sum(),
            _q_costs=pl.col("quantity").filter(from_costs).sum(),
            _n_costs=from_costs.sum(),
            billed_amount=pl.col("amount").filter(billed).sum(),
            _n_billed=billed.sum(),
        )
        .select(
            *GRAIN,
            _reported=pl.when(pl.col("_n_usage") > 0)
            .then("_q_usage")
            .when(pl.col("_n_costs") > 0)
            .then("_q_costs"),
            _reported_source=pl.when(pl.col("_n_usage") > 0)
            .then(pl.lit("usage_export"))
            .when(pl.col("_n_costs") > 0)
            .then(pl.lit("cost_export")),
            billed_amount=pl.when(pl.col("_n_billed") > 0).then("billed_amount"),
        )
    )


def _usage_rows(
    ours: pl.DataFrame,
    costs: pl.DataFrame,
    mapping: VendorMapping,
    tq: Decimal,
    tp: Decimal,
    ta: Decimal,
) -> pl.DataFrame:
    """Compare both sides per grain and classify."""
    theirs = _vendor_side(costs)
    joined = ours.rename({"quantity": "metered_quantity"}).join(
        theirs, on=GRAIN, how="full", coalesce=True, nulls_equal=True
    )
    if joined.is_empty():
        return empty(RECONCILIATION)
    # Nothing on one side and zero on the other is agreement, not a missing side.
    zero_vendor = (pl.col("_reported").fill_null(0) == 0) & (
        pl.col("billed_amount").fill_null(0) == 0
    )
    zero_meter = pl.col("metered_quantity").fill_null(0) == 0
    both_zero = zero_vendor & zero_meter
    joined = joined.with_columns(
        metered_quantity=pl.when(both_zero)
        .then(pl.col("metered_quantity").fill_null(0))
        .otherwise("metered_quantity"),
        _reported=pl.when(both_zero & pl.col("billed_amount").is_null())
        .then(pl.col("_reported").fill_null(0))
        .otherwise("_reported"),
        _reported_source=pl.when(both_zero & pl.col("_reported").is_null())
        .then(pl.lit("none"))
        .otherwise("_reported_source"),
    )
    priced = mapping.with_rates(joined)
    per_unit = pl.col("unit_price") / pl.col("rate_per")
    implied = pl.when(pl.col("unit_price") > 0).then(
        pl.col("billed_amount") * pl.col("rate_per") / pl.col("unit_price")
    )
    priced = priced.with_columns(
        charge_class=pl.lit("usage"),
        vendor_quantity=pl.coalesce(pl.col("_reported"), implied),
        vendor_quantity_source=pl.when(pl.col("_reported").is_not_null())
        .then("_reported_source")
        .when(implied.is_not_null())
        .then(pl.lit("implied_from_amount")),
        expected_amount=pl.col("metered_quantity") * per_unit,
    ).with_columns(
        vendor_list_amount=pl.when(pl.col("_reported").is_not_null()).then(
            pl.col("vendor_quantity") * per_unit
        ),
        quantity_variance=pl.col("vendor_quantity").fill_null(0)
        - pl.col("metered_quantity").fill_null(0),
        amount_variance=pl.col("billed_amount") - pl.col("expected_amount").fill_null(0),
    )
    priced = priced.with_columns(
        quantity_variance_pct=_pct(pl.col("quantity_variance"), pl.col("vendor_quantity")),
        amount_variance_pct=_pct(pl.col("amount_variance"), pl.col("billed_amount")),
    )
    return _classify(priced, tq, tp, ta)


def _pct(part: pl.Expr, whole: pl.Expr) -> pl.Expr:
    return pl.when(whole != 0).then(part * _HUNDRED / whole)


def _classify(df: pl.DataFrame, tq: Decimal, tp: Decimal, ta: Decimal) -> pl.DataFrame:
    """Status and a one-line note per usage row (first failing test wins)."""
    vq, mq, billed = pl.col("vendor_quantity"), pl.col("metered_quantity"), pl.col("billed_amount")
    has_vendor = vq.is_not_null() | billed.is_not_null()
    qty_off = pl.col("quantity_variance").abs() > vq.abs() * pl.lit(tq, dtype=QTY) / _HUNDRED
    allowed = pl.max_horizontal(
        pl.lit(ta, dtype=MONEY), billed.abs() * pl.lit(tp, dtype=QTY) / _HUNDRED
    )
    list_amount = pl.col("vendor_list_amount")
    money_off = billed.is_not_null() & (
        pl.col("unit_price").is_null()
        | (list_amount.is_not_null() & ((billed - list_amount).abs() > allowed))
    )
    status = (
        pl.when(~has_vendor)
        .then(pl.lit("meter_only"))
        .when(mq.is_null())
        .then(pl.lit("vendor_only"))
        .when(vq.is_not_null() & qty_off & (pl.col("quantity_variance") > 0))
        .then(pl.lit("under_metered"))
        .when(vq.is_not_null() & qty_off)
        .then(pl.lit("over_metered"))
        .when(money_off)
        .then(pl.lit("rate_mismatch"))
        .otherwise(pl.lit("matched"))
    )
    return df.with_columns(status=status).with_columns(note=_note())


def _note() -> pl.Expr:
    """Human explanation of the status (what to look at)."""
    qv = _plain(pl.col("quantity_variance"))
    return (
        pl.when(pl.col("status") == "meter_only")
        .then(pl.lit("metered usage with no vendor line: export missing or routed to wrong vendor"))
        .when(pl.col("status") == "vendor_only")
        .then(pl.lit("vendor usage no customer metered (unbilled cost)"))
        .when(pl.col("status") == "under_metered")
        .then(pl.format("vendor reported {} units more than metered", qv))
        .when(pl.col("status") == "over_metered")
        .then(pl.format("metered {} units more than the vendor reported", qv.str.strip_prefix("-")))
        .when((pl.col("status") == "rate_mismatch") & pl.col("unit_price").is_null())
        .then(pl.lit("no vendor list rate in vendors.yaml for this model/meter/date"))
        .when(pl.col("status") == "rate_mismatch")
        .then(
            pl.format(
                "billed {} vs {} at list {}/{}",
                _plain(pl.col("billed_amount")),
                _plain(pl.col("vendor_list_amount")),
                _plain(pl.col("unit_price")),
                _plain(pl.col("rate_per")).replace({"1000000": "1M", "1000": "1K"}),
            )
        )
        .when(pl.col("vendor_quantity_source") == "implied_from_amount")
        .then(pl.lit("vendor quantity implied from billed amount (no usage export loaded)"))
    )


def _plain(expr: pl.Expr) -> pl.Expr:
    """Decimal as text without trailing zeros (`10000`, `0.13`) for notes: the Polars
    expression form of `decimals.decimal_text` (column casts always carry the scale)."""
    return expr.cast(pl.String).str.replace(r"0+$", "").str.replace(r"\.$", "")


def _other_rows(costs: pl.DataFrame, period: str) -> pl.DataFrame:
    """Credits, tax, corrections, adjustments, purchases billed in the period, shown as-is."""
    rows = costs.filter((pl.col("charge_class") != "usage") & (pl.col("billing_period") == period))
    keys = [*GRAIN, "charge_class"]
    return (
        rows.group_by(keys)
        .agg(
            billed_amount=pl.col("amount").sum(),
            vendor_quantity=pl.when(pl.col("quantity").is_not_null().any()).then(
                pl.col("quantity").sum()
            ),
            note=pl.col("vendor_line_item").unique().sort().str.join("; "),
        )
        .with_columns(
            status=pl.col("charge_class"),
            vendor_quantity_source=pl.when(pl.col("vendor_quantity").is_not_null()).then(
                pl.lit("usage_export")
            ),
        )
    )


def reconciliation_summary(recon: pl.DataFrame) -> dict:
    """Headline numbers per vendor (decimal strings): billed vs expected, counts per status.

    `billed` and `expected` are usage only; `variance` = billed − expected over all usage rows;
    `other_charges` are credits, tax, corrections, ... as billed.
    """
    usage = pl.col("charge_class") == "usage"
    totals = recon.group_by("vendor").agg(
        billed=pl.col("billed_amount").filter(usage).sum(),
        expected=pl.col("expected_amount").filter(usage).sum(),
        variance=pl.col("amount_variance").filter(usage).sum(),
    )
    other = (
        recon.filter(~usage)
        .group_by("vendor", "charge_class")
        .agg(amount=pl.col("billed_amount").sum())
        .sort("vendor", "charge_class")
    )
    counts = recon.group_by("vendor", "status").len().sort("vendor", "status")
    out: dict = {}
    for row in totals.sort("vendor").iter_rows(named=True):
        v = row["vendor"]
        out[v] = {k: str(row[k] or 0) for k in ("billed", "expected", "variance")}
        out[v]["statuses"] = {
            r["status"]: r["len"]
            for r in counts.filter(pl.col("vendor") == v).iter_rows(named=True)
        }
        out[v]["other_charges"] = {
            r["charge_class"]: str(r["amount"])
            for r in other.filter(pl.col("vendor") == v).iter_rows(named=True)
        }
    return out
