"""Reconciliation and margin reports: formula-safe CSVs and PDFs (summary first, then detail).

Shaping is Polars; rendering goes through `usagebox_pipelines.documents` (templates only from
`reports/`, autoescape, fixed PDF metadata), so the same tables give the same bytes.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import polars as pl

from usagebox_pipelines.charts import bar_chart
from usagebox_pipelines.documents import format_money, format_pct, render_pdf, safe_csv_bytes
from usagebox_pipelines.reconciliation.reconcile import LEVEL_MODEL, reconciled_level
from usagebox_pipelines.reconciliation.schemas import (
    COST_ATTRIBUTION,
    RECONCILIATION,
    VENDOR_COST_CHANGES,
    VENDOR_REVIEW,
)
from usagebox_pipelines.schemas import MONEY, QTY, conform

RECONCILIATION_TEMPLATE = "reconciliation_v1.html.j2"
MARGIN_TEMPLATE = "margin_v1.html.j2"
TOP_VARIANCES = 15
#: Rows of each detail table in the PDFs (the CSVs hold every row): a PDF's size, and its
#: render time (about 0.25 s a page), stay the same however many accounts and lines there are.
DETAIL_LIMIT = 50
#: The margin chart's axis ends at ±100 %: a customer far below (cost on almost no revenue)
#: is drawn to the edge and labelled with its real margin instead of dwarfing every other bar.
MARGIN_CLIP = Decimal(100)
#: A variance chart's axis is at least this share of the vendor's busiest day wide (and at
#: least the money tolerance), so a variance of a cent looks like a cent.
VARIANCE_SPAN = Decimal("0.1")
_ZERO = Decimal(0)


def render_reconciliation_reports(
    recon: pl.DataFrame,
    attribution: pl.DataFrame,
    *,
    review: pl.DataFrame | None = None,
    changes: pl.DataFrame | None = None,
    pdf: bool = True,
    created: datetime | None = None,
    period: str | None = None,
) -> dict[str, tuple[str, bytes]]:
    """Render the month's reconciliation and margin CSVs (and PDFs): {name: (file name, bytes)}.

    Nothing is written here: the reconciliation stage stores the files (`DocumentStore`).

    `review` (vendor lines the mapping does not cover) and `changes` (rows restated exports
    superseded) are optional extra sections. `created` stamps the PDF metadata (default fixed).
    `period` names the files (default: the period of the rows); pass it, so a month with only
    review lines still gets `reconciliation_<YYYY-MM>.csv`.
    """
    recon = conform(recon, RECONCILIATION)
    attribution = conform(attribution, COST_ATTRIBUTION)
    period = period or _period(recon, attribution)
    margins = margin_by_customer_model(attribution)
    files = {
        "reconciliation_csv": (f"reconciliation_{period}.csv", safe_csv_bytes(recon)),
        "margin_csv": (f"margin_{period}.csv", safe_csv_bytes(margins)),
        "cost_attribution_csv": (f"cost_attribution_{period}.csv", safe_csv_bytes(attribution)),
    }
    if review is not None and review.height:
        review = conform(review, VENDOR_REVIEW)
        files["vendor_review_csv"] = (f"vendor_review_{period}.csv", safe_csv_bytes(review))
    if pdf:
        ctx = reconciliation_context(recon, review=review, changes=changes, period=period)
        files["reconciliation_pdf"] = (
            report_pdf_names(period)[0],
            render_pdf(RECONCILIATION_TEMPLATE, ctx, created=created),
        )
        ctx = margin_context(attribution, margins, period=period)
        files["margin_pdf"] = (
            report_pdf_names(period)[1],
            render_pdf(MARGIN_TEMPLATE, ctx, created=created),
        )
    return files


def report_pdf_names(period: str) -> tuple[str, ...]:
    """The PDF file names `render_reconciliation_reports` gives a period's reports."""
    return (f"reconciliation_{period}.pdf", f"margin_{period}.pdf")


def _period(recon: pl.DataFrame, attribution: pl.DataFrame) -> str:
    values = recon["period"].drop_nulls().to_list() + attribution["month"].drop_nulls().to_list()
    return values[0] if values else "unknown"


# --------------------------------------------------------------------------- margin

#: The least revenue a margin % is shown for: half a cent, the least that prints as $0.01. A
#: margin on revenue that prints as $0.00 (a few tokens at a fraction of a cent) reads as
#: -106,030 %, which says nothing; a refund (negative revenue) has no margin % either.
SHOWN_REVENUE = Decimal("0.005")


def margin_by_customer_model(attribution: pl.DataFrame) -> pl.DataFrame:
    """Revenue, cost and margin per account × model (features summed), worst margin first.

    Worst = cost without revenue, then the lowest margin %; unattributed cost and vendor
    adjustments follow at the end.
    """
    rows = conform(attribution, COST_ATTRIBUTION)
    grouped = rows.group_by("row_kind", "account_id", "model_id", "charge_class").agg(
        revenue=pl.col("revenue").sum(),
        revenue_currency=pl.col("revenue_currency").drop_nulls().first(),
        allocated_cost=pl.col("allocated_cost").sum(),
        cost_currency=pl.col("cost_currency").drop_nulls().first(),
        margin=pl.when(pl.col("margin").is_not_null().all()).then(pl.col("margin").sum()),
        month=pl.col("month").first(),
    )
    grouped = grouped.with_columns(
        # a margin % of negative revenue (a refund) would read as 100 %: it is not defined
        margin_pct=pl.when(pl.col("revenue") >= SHOWN_REVENUE).then(
            pl.col("margin") * pl.lit(Decimal(100), dtype=QTY) / pl.col("revenue")
        ),
        _kind=pl.col("row_kind").replace_strict(
            {"account": 0, "unattributed": 1, "vendor_adjustment": 2}, default=3
        ),
        _bucket=pl.when((pl.col("revenue") == 0) & (pl.col("allocated_cost") > 0))
        .then(0)
        .when(pl.col("margin").is_not_null())
        .then(1)
        .otherwise(2),
    )
    order = ["_kind", "_bucket", "margin_pct", "margin", "account_id", "model_id"]
    cols = [
        "month",
        "account_id",
        "model_id",
        "row_kind",
        "charge_class",
        "revenue",
        "revenue_currency",
        "allocated_cost",
        "cost_currency",
        "margin",
        "margin_pct",
    ]
    return grouped.sort(order, nulls_last=True).select(cols)


def margin_context(attribution: pl.DataFrame, margins: pl.DataFrame, period: str) -> dict:
    """Template context of the margin report: totals, worst customers, then detail."""
    accounts = margins.filter(pl.col("row_kind") == "account")
    currency = _first(margins["cost_currency"]) or _first(margins["revenue_currency"]) or ""
    per_customer = (
        accounts.group_by("account_id")
        .agg(revenue=pl.col("revenue").sum(), cost=pl.col("allocated_cost").sum())
        .with_columns(margin=pl.col("revenue") - pl.col("cost"))
        .with_columns(margin_pct=_pct_expr("margin", "revenue"))
        .sort(["margin_pct", "margin", "account_id"], nulls_last=True)
    )
    sums = _sums(accounts, ["revenue", "allocated_cost"])
    margin = sums["revenue"] - sums["allocated_cost"]
    totals = {**sums, "margin": margin, "margin_pct": _ratio(margin, sums["revenue"])}
    other = margins.filter(pl.col("row_kind") != "account")
    chart_items = [
        (r["account_id"], _q2(r["margin_pct"]))
        for r in per_customer.filter(pl.col("margin_pct").is_not_null())
        .head(25)
        .iter_rows(named=True)
    ]
    return {
        "period": period,
        "currency": currency,
        "totals": totals,
        "unattributed": _sum(other.filter(pl.col("row_kind") == "unattributed"), "allocated_cost"),
        "adjustments": _sum(
            other.filter(pl.col("row_kind") == "vendor_adjustment"), "allocated_cost"
        ),
        "customers": per_customer.head(DETAIL_LIMIT).to_dicts(),
        "customers_total": per_customer.height,
        "chart": bar_chart(
            chart_items,
            title="Gross margin % by customer (worst 25 first; axis ends at ±100 %)",
            value_format=format_pct,
            axis_label="margin % of revenue",
            span=Decimal(100),
            clip=MARGIN_CLIP,
        ),
        "rows": accounts.head(DETAIL_LIMIT).to_dicts(),
        "rows_total": accounts.height,
        "other_rows": other.to_dicts(),
        "has_features": attribution["feature"].drop_nulls().len() > 0,
        "features": _feature_rows(attribution),
    }


def _feature_rows(attribution: pl.DataFrame) -> list[dict]:
    """Margin per feature × agent across customers (where events carry them)."""
    rows = attribution.filter(
        (pl.col("row_kind") == "account")
        & (pl.col("feature").is_not_null() | pl.col("agent_id").is_not_null())
    )
    return (
        rows.group_by("feature", "agent_id")
        .agg(revenue=pl.col("revenue").sum(), cost=pl.col("allocated_cost").sum())
        .with_columns(margin=pl.col("revenue") - pl.col("cost"))
        .with_columns(margin_pct=_pct_expr("margin", "revenue"))
        .sort(["margin_pct", "feature", "agent_id"], nulls_last=True)
        .to_dicts()
    )


# --------------------------------------------------------------------------- reconciliation


def reconciliation_context(
    recon: pl.DataFrame,
    *,
    review: pl.DataFrame | None = None,
    changes: pl.DataFrame | None = None,
    period: str | None = None,
) -> dict:
    """Template context: per-vendor summary + daily variance chart, largest variances, detail."""
    recon = conform(recon, RECONCILIATION)
    usage = recon.filter(pl.col("charge_class") == "usage")
    vendors = [_vendor_summary(recon, usage, v) for v in sorted(recon["vendor"].unique().to_list())]
    totals = _sums(usage, ["billed_amount", "expected_amount", "amount_variance"])
    other = recon.filter(pl.col("charge_class") != "usage").sort("vendor", "date", "charge_class")
    totals["other"] = _sum(other, "billed_amount")
    exceptions = usage.filter(pl.col("status") != "matched")
    magnitude = pl.coalesce(pl.col("amount_variance"), -pl.col("expected_amount")).abs()
    largest = exceptions.sort(magnitude, descending=True, nulls_last=True).head(TOP_VARIANCES)
    first = recon.head(1).to_dicts()
    return {
        "period": period or _first(recon["period"]) or "",
        "currency": _first(recon["currency"]) or "",
        "mapping_version": _first(recon["mapping_version"]) or "",
        "tolerances": first[0] if first else {},
        "totals": totals,
        "vendors": vendors,
        "largest": largest.to_dicts(),
        "exceptions": exceptions.sort("vendor", "date", "model_id", "meter_id")
        .head(DETAIL_LIMIT)
        .to_dicts(),
        "exceptions_total": exceptions.height,
        "other": other.to_dicts(),
        "monthly": _monthly(usage).to_dicts(),
        "review": _review_rows(review),
        "review_total": 0 if review is None else review.height,
        "restated": _restated(changes),
    }


def _vendor_summary(recon: pl.DataFrame, usage: pl.DataFrame, vendor: str) -> dict:
    rows = usage.filter(pl.col("vendor") == vendor)
    currency = _first(recon.filter(pl.col("vendor") == vendor)["currency"]) or ""
    sums = _sums(rows, ["billed_amount", "expected_amount", "amount_variance"])
    counts = (
        recon.filter(pl.col("vendor") == vendor).group_by("status").len().sort("status").to_dicts()
    )
    daily = (
        rows.group_by("date")
        .agg(
            billed=pl.col("billed_amount").fill_null(0).sum(),
            variance=pl.col("amount_variance").fill_null(0).sum(),
        )
        .sort("date")
    )
    # Rows reconciled above the model level (a day total), named so the reader knows.
    levels = (
        rows.with_columns(level=reconciled_level())
        .filter(pl.col("level") != LEVEL_MODEL)
        .group_by("level")
        .len()
        .sort("level")
        .to_dicts()
    )
    return {
        "vendor": vendor,
        "currency": currency,
        **sums,
        "statuses": counts,
        "levels": levels,
        "chart_billed": _daily_chart(daily, "billed", "Billed by UTC day", currency),
        "chart_variance": _daily_chart(
            daily, "variance", "Billed − expected by UTC day", currency, span=_span(rows, daily)
        ),
    }


def _span(rows: pl.DataFrame, daily: pl.DataFrame) -> Decimal:
    """Half-width the variance axis needs at least: a tenth of the busiest day's bill, or
    the money tolerance when that is larger."""
    busiest = Decimal(str(daily["billed"].max() or 0)) if daily.height else _ZERO
    tolerance = Decimal(_first(rows["amount_tolerance"]) or 0) if rows.height else _ZERO
    return max(busiest * VARIANCE_SPAN, tolerance)


def _daily_chart(
    daily: pl.DataFrame, col: str, title: str, currency: str, span: Decimal | None = None
):
    """One bar per UTC day on a real axis (negative to the left), or "" when there are none."""
    items = [(r["date"].strftime("%m-%d"), _q2(r[col])) for r in daily.iter_rows(named=True)]
    return bar_chart(
        items,
        title=title,
        value_format=lambda v: format_money(v, currency),
        axis_label=currency,
        width_mm=88,
        row_mm=3.4,
        span=span,
    )


def _monthly(usage: pl.DataFrame) -> pl.DataFrame:
    """Vendor × model × meter roll-up of the month, with its days not matched."""
    return (
        usage.group_by("vendor", "model_id", "meter_id")
        .agg(
            metered=pl.col("metered_quantity").sum(),
            vendor_qty=pl.col("vendor_quantity").sum(),
            expected=pl.col("expected_amount").sum(),
            billed=pl.col("billed_amount").sum(),
            variance=pl.col("amount_variance").sum(),
            off_days=(pl.col("status") != "matched").sum(),
            statuses=pl.col("status").filter(pl.col("status") != "matched").unique().sort(),
        )
        .with_columns(statuses=pl.col("statuses").list.join(", "))
        .sort("vendor", "model_id", "meter_id", nulls_last=True)
    )


def _review_rows(review: pl.DataFrame | None) -> list[dict]:
    if review is None or review.is_empty():
        return []
    rows = conform(review, VENDOR_REVIEW)
    return (
        rows.group_by("vendor", "vendor_line_item", "reason")
        .agg(lines=pl.len(), quantity=pl.col("quantity").sum(), amount=pl.col("amount").sum())
        .sort("vendor", "amount", descending=[False, True], nulls_last=True)
        .head(60)
        .to_dicts()
    )


def _restated(changes: pl.DataFrame | None) -> list[dict]:
    """One line per restated vendor day: rows replaced, their amount, and by which export."""
    if changes is None or changes.is_empty():
        return []
    rows = conform(changes, VENDOR_COST_CHANGES)
    return (
        rows.group_by("vendor", "source_kind", "date", "superseded_by_file")
        .agg(lines=pl.len(), old_amount=pl.col("amount").sum())
        .with_columns(superseded_by=pl.col("superseded_by_file").str.extract(r"([^/\\]+)$", 1))
        .sort("vendor", "date")
        .to_dicts()
    )


# --------------------------------------------------------------------------- helpers


def _first(series: pl.Series):
    values = series.drop_nulls()
    return values[0] if values.len() else None


def _sum(df: pl.DataFrame, col: str) -> Decimal:
    value = df[col].sum() if df.height else None
    return Decimal(value) if value is not None else _ZERO


def _sums(df: pl.DataFrame, cols: list[str]) -> dict[str, Decimal]:
    return {c: _sum(df, c) for c in cols}


def _ratio(part: Decimal, whole: Decimal) -> Decimal | None:
    return (part * 100 / whole).quantize(Decimal("0.01")) if whole >= SHOWN_REVENUE else None


def _pct_expr(part: str, whole: str) -> pl.Expr:
    return pl.when(pl.col(whole) >= SHOWN_REVENUE).then(
        (pl.col(part) * pl.lit(Decimal(100), dtype=QTY) / pl.col(whole)).cast(MONEY)
    )


def _q2(value) -> Decimal:
    return Decimal(value or 0).quantize(Decimal("0.01"))
