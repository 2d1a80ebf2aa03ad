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
from usagebox_pipelines.reconciliation.restatement import TABLE_NAMES, money_by_table
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
        .collect(engine="streaming")  # a month of hourly rows is aggregated, never held
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
    day_level = _is_day_total()
    ours, costs_in = ours.filter(in_period), costs.filter(in_period)
    usage = _usage_rows(ours, costs_in.filter(~day_level), mapping, tq, tp, ta)
    days = _day_total_rows(ours, costs_in.filter(day_level), mapping, tp, ta)
    # Metered usage of a day the vendor billed only in total (or per meter, no model) is
    # compared in that day-level row, not listed again as meter_only.
    whole_day = days.filter(pl.col("meter_id").is_null()).select("vendor", "date").unique()
    per_meter = days.filter(pl.col("meter_id").is_not_null()).select(DAY_LEVEL).unique()
    usage = pl.concat(
        [
            usage.filter(pl.col("status") != "meter_only"),
            usage.filter(pl.col("status") == "meter_only")
            .join(whole_day, on=["vendor", "date"], how="anti")
            .join(per_meter, on=DAY_LEVEL, how="anti"),
        ],
        how="diagonal_relaxed",
    )
    usage = pl.concat([usage, days], how="diagonal_relaxed") if days.height else usage
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


def _is_day_total() -> pl.Expr:
    """A vendor usage line billed without a model: a day's total (OpenAI costs without
    `group_by`), or a day's total of one meter (a line item naming only a kind, `input`)."""
    return (
        (pl.col("charge_class") == "usage")
        & (pl.col("source_kind") == "costs")
        & pl.col("model_id").is_null()
    )


#: The level a model-less vendor line is reconciled at (keys of `_day_total_rows`).
DAY_LEVEL = ["vendor", "date", "meter_id"]
DAY_TOTAL_NOTE = (
    "day total: reconciled per day, not per model (costs export without group_by=line_item): "
    "billed vs all metered usage of the day at list rates; export with group_by=line_item for "
    "model and meter detail"
)
DAY_METER_NOTE = (
    "day total per line item: reconciled per day and meter, not per model (line item without a "
    "model): billed vs all metered usage of the meter that day at list rates"
)


def _day_total_rows(
    ours: pl.DataFrame, totals: pl.DataFrame, mapping: VendorMapping, tp: Decimal, ta: Decimal
) -> pl.DataFrame:
    """One row per vendor × day (× meter, when the line item names one) billed without a
    model: billed vs metered × list rate, summed over every model (and meter) of the day —
    the level the export has, and said so in `note` and `vendor_quantity_source`."""
    if totals.is_empty():
        return empty(RECONCILIATION)
    billed = totals.group_by(DAY_LEVEL).agg(billed_amount=pl.col("amount").sum())
    priced = mapping.with_rates(ours).with_columns(
        _expected=pl.col("quantity") * pl.col("unit_price") / pl.col("rate_per")
    )
    agg = {
        "metered_quantity": pl.col("quantity").sum(),
        "expected_amount": pl.when(pl.col("_expected").is_not_null().all()).then(
            pl.col("_expected").sum()
        ),
    }
    whole_day = priced.group_by("vendor", "date").agg(**agg)
    per_meter = priced.group_by(DAY_LEVEL).agg(**agg)
    is_total = pl.col("meter_id").is_null()
    rows = pl.concat(
        [
            billed.filter(is_total).join(whole_day, on=["vendor", "date"], how="left"),
            billed.filter(~is_total).join(per_meter, on=DAY_LEVEL, how="left"),
        ],
        how="diagonal_relaxed",
    ).with_columns(amount_variance=pl.col("billed_amount") - pl.col("expected_amount").fill_null(0))
    allowed = pl.max_horizontal(
        pl.lit(ta, dtype=MONEY), pl.col("billed_amount").abs() * pl.lit(tp, dtype=QTY) / _HUNDRED
    )
    status = (
        pl.when(pl.col("metered_quantity").is_null())
        .then(pl.lit("vendor_only"))
        .when(pl.col("amount_variance").abs() <= allowed)
        .then(pl.lit("matched"))
        .when(pl.col("amount_variance") > 0)
        .then(pl.lit("under_metered"))
        .otherwise(pl.lit("over_metered"))
    )
    return rows.with_columns(
        charge_class=pl.lit("usage"),
        status=status,
        vendor_quantity_source=pl.lit("day_total"),
        amount_variance_pct=_pct(pl.col("amount_variance"), pl.col("billed_amount")),
        note=pl.when(is_total).then(pl.lit(DAY_TOTAL_NOTE)).otherwise(pl.lit(DAY_METER_NOTE)),
    )


def _vendor_side(costs: pl.DataFrame, mapping: VendorMapping) -> pl.DataFrame:
    """Vendor quantity (usage exports first, else costs exports) and billed usage per grain."""
    usage = pl.col("charge_class") == "usage"
    from_usage = usage & (pl.col("source_kind") != "costs") & pl.col("quantity").is_not_null()
    from_costs = usage & (pl.col("source_kind") == "costs") & pl.col("quantity").is_not_null()
    billed = usage & (pl.col("source_kind") != "usage") & pl.col("amount").is_not_null()
    # Each line at its own tier's list rate (batch, priority, long context).
    listed = pl.col("quantity") * pl.col("unit_price") / pl.col("rate_per")
    return (
        mapping.with_line_rates(costs.filter(usage))
        .with_columns(_listed=listed)
        .group_by(GRAIN)
        .agg(
            _q_usage=pl.col("quantity").filter(from_usage).sum(),
            _n_usage=from_usage.sum(),
            _l_usage=pl.col("_listed").filter(from_usage).sum(),
            _lok_usage=pl.col("_listed").filter(from_usage).is_not_null().all(),
            _q_costs=pl.col("quantity").filter(from_costs).sum(),
            _n_costs=from_costs.sum(),
            _l_costs=pl.col("_listed").filter(from_costs).sum(),
            _lok_costs=pl.col("_listed").filter(from_costs).is_not_null().all(),
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
            _reported_list=pl.when((pl.col("_n_usage") > 0) & pl.col("_lok_usage"))
            .then("_l_usage")
            .when((pl.col("_n_usage") == 0) & (pl.col("_n_costs") > 0) & pl.col("_lok_costs"))
            .then("_l_costs"),
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
    theirs = _vendor_side(costs, mapping)
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
            pl.coalesce("_reported_list", pl.col("vendor_quantity") * per_unit)
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


def reconciliation_summary(recon: pl.DataFrame, lines: pl.DataFrame | None = None) -> dict:
    """Headline numbers per vendor (decimal strings) that add up.

    `billed` is every vendor line of the month = `mapped` (in `vendor_costs`) + `review` +
    `ignored` (zero by definition), in the vendor's currency; `currencies` splits them per
    currency when a vendor bills in several. `lines` are the month's vendor lines tagged with
    their table (`restatement.tag_lines`); without them only mapped money is known.
    `usage_billed`, `expected` and `variance` (= usage_billed − expected) are usage rows only;
    `other_charges` are credits, tax, corrections, ... as billed; `levels` counts usage rows
    by the level they were reconciled at (`day total: reconciled per day, not per model` for a
    costs export without `group_by`).
    """
    usage = pl.col("charge_class") == "usage"
    if lines is None:
        lines = recon.select(
            "vendor", "currency", amount="billed_amount", _table=pl.lit("vendor_costs")
        )
    totals = recon.group_by("vendor").agg(
        usage_billed=pl.col("billed_amount").filter(usage).sum(),
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
    levels = (
        recon.filter(usage)
        .with_columns(_level=reconciled_level())
        .group_by("vendor", "_level")
        .len()
        .sort("vendor", "_level")
    )
    vendors = sorted(set(recon["vendor"].drop_nulls()) | set(lines["vendor"].drop_nulls()))
    out: dict = {}
    for v in vendors:
        row = totals.filter(pl.col("vendor") == v).to_dicts()
        money = money_by_table(lines.filter(pl.col("vendor") == v))
        currency = _first_currency(recon, lines, v)
        headline = money.get(currency or "", {k: "0" for k in ("billed", *TABLE_NAMES.values())})
        out[v] = {
            "currency": currency,
            **{k: headline[k] for k in ("billed", "mapped", "review", "ignored")},
            **{
                k: str((row[0][k] if row else None) or 0)
                for k in ("usage_billed", "expected", "variance")
            },
            "statuses": {
                r["status"]: r["len"]
                for r in counts.filter(pl.col("vendor") == v).iter_rows(named=True)
            },
            "levels": {
                r["_level"]: r["len"]
                for r in levels.filter(pl.col("vendor") == v).iter_rows(named=True)
            },
            "other_charges": {
                r["charge_class"]: str(r["amount"])
                for r in other.filter(pl.col("vendor") == v).iter_rows(named=True)
            },
            "currencies": money,
        }
    return out


#: The level a usage row was reconciled at, as `reconciliation_summary` says it.
LEVEL_MODEL = "day × model × meter"
LEVEL_DAY = "day total: reconciled per day, not per model"
LEVEL_DAY_METER = "day × line item: reconciled per day and meter, not per model"


def reconciled_level() -> pl.Expr:
    """The level each usage row was reconciled at (`LEVEL_*`)."""
    day = pl.col("vendor_quantity_source") == "day_total"
    return (
        pl.when(day & pl.col("meter_id").is_null())
        .then(pl.lit(LEVEL_DAY))
        .when(day)
        .then(pl.lit(LEVEL_DAY_METER))
        .otherwise(pl.lit(LEVEL_MODEL))
    )


def _first_currency(recon: pl.DataFrame, lines: pl.DataFrame, vendor: str) -> str | None:
    """The vendor's currency: the one its reconciliation rows carry, else its lines'."""
    for frame in (recon, lines):
        found = frame.filter(pl.col("vendor") == vendor)["currency"].drop_nulls()
        if found.len():
            return str(found.mode().sort()[0])
    return None
