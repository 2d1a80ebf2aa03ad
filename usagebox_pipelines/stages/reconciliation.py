"""Store-facing reconciliation stages: load vendor exports, reconcile a month, attribute cost.

Vendor tables are small (one row per vendor line per day), so `vendor_costs` and
`vendor_review` are rewritten whole in one commit each; month tables replace their period.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from usagebox_pipelines.catalog import (
    COST_ATTRIBUTION,
    RATED_USAGE,
    RECONCILIATION,
    USAGE_HOURLY,
    VENDOR_COST_CHANGES,
    VENDOR_COSTS,
    VENDOR_IGNORED,
    VENDOR_REVIEW,
)
from usagebox_pipelines.config import Settings
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.reconciliation.attribution import cost_attribution
from usagebox_pipelines.reconciliation.loaders import (
    load_vendor_exports,
    merge_lines,
)
from usagebox_pipelines.reconciliation.mapping import MAPPING_FILE, load_vendor_mapping
from usagebox_pipelines.reconciliation.reconcile import (
    metered_daily,
    reconcile,
    reconciliation_summary,
)
from usagebox_pipelines.reconciliation.reports import (
    render_reconciliation_reports,
    report_pdf_names,
)
from usagebox_pipelines.reconciliation.restatement import money_by_table, tag_lines
from usagebox_pipelines.stages.books import closed_periods
from usagebox_pipelines.storage import DeltaStore, DocumentStore, writes_tables


@writes_tables("reconcile")
def load_exports(store: DeltaStore, settings: Settings, vendor: str, paths: list[Path]) -> dict:
    """Merge one vendor's exports into the vendor tables; idempotent, newer exports supersede.

    `vendor_costs`, `vendor_review` and `vendor_ignored` are restated together (one rule, see
    `reconciliation.restatement`), then each is rewritten in one commit if it changed.
    """
    mapping = load_vendor_mapping(settings.pricebooks)
    now = datetime.now(UTC)
    result = load_vendor_exports(vendor, paths, mapping, loaded_at=now)
    _refuse_legacy_tables(store, settings)
    stored = {table: store.read(table) for table in (VENDOR_COSTS, VENDOR_REVIEW, VENDOR_IGNORED)}
    existing = pl.concat([tag_lines(frame, table.name) for table, frame in stored.items()])
    state, changes = merge_lines(existing, result.lines(), at=now)
    changes = pl.concat([result.superseded, changes], how="diagonal_relaxed")
    for table, frame in stored.items():
        if not state[table.name].equals(frame) or not store.exists(table):
            store.overwrite(table, state[table.name], metadata={"stage": table.name})
    if changes.height:
        store.append(VENDOR_COST_CHANGES, changes)
    fresh = result.lines()
    months = sorted(
        set(fresh["billing_period"].drop_nulls())
        | set(fresh["date"].drop_nulls().dt.strftime("%Y-%m"))
    )
    return {
        "vendor": vendor,
        "files": len(result.files),
        "status": "complete" if result.complete else "partial",
        "warnings": list(result.warnings),
        "lines": result.costs.height,
        "review": result.review.height,
        "ignored": result.ignored.height,
        "superseded": changes.height,
        "totals": money_by_table(fresh),
        "months": months,
    }


def _refuse_legacy_tables(store: DeltaStore, settings: Settings) -> None:
    """Vendor tables written before lines had an identity (no `line_id`) cannot be restated
    safely, nor take the new columns: say what to do instead of mixing them."""
    for table in (VENDOR_COSTS, VENDOR_REVIEW, VENDOR_COST_CHANGES):
        if store.exists(table) and set(table.schema.names()) - set(
            store.scan(table).collect_schema().names()
        ):
            raise UsageboxError(
                f"{table.name} was written by an older usagebox (no vendor line identities): "
                f"move {settings.home}/tables/vendor_costs, vendor_review and vendor_cost_changes "
                "aside and load the vendor exports again (README: migration notes)"
            )


def _in_month(month: str) -> pl.Expr:
    """Vendor lines of a month: billed in it, or (usage without a billing period) dated in it."""
    return pl.coalesce("billing_period", pl.col("date").dt.strftime("%Y-%m")) == month


SKIPPED = f"no {MAPPING_FILE}: reconciliation skipped"


def reconciliation_configured(settings: Settings) -> bool:
    """Reconciliation needs the vendor mapping; a pricing-only deployment has none."""
    return (Path(settings.pricebooks) / MAPPING_FILE).is_file()


@writes_tables("reconcile")
def reconcile_month(
    store: DeltaStore,
    settings: Settings,
    month: str,
    run_id: str = "cli",
    *,
    pdf_reports: bool | None = None,
) -> dict:
    """Rebuild `reconciliation` and `cost_attribution` for a month and write the reports.

    Without `vendors.yaml` in the pricebooks folder (pricing only) nothing is written and the
    result says `skipped` (SKIPPED); the monthly job does not fail on it.

    The CSV reports are always written. The PDF reports are finance's documents of a month:
    rendered when `pdf_reports` is True (`usagebox reconcile`), by the close
    (`render_month_reports`), and by default (None) only for a month that is already closed,
    so every `run` of an open month skips their rendering, most of this step's time. A run
    that does not render them removes the month's PDFs, which its new CSVs would contradict.
    The month's hourly rows are scanned lazily by each consumer, never held whole.
    """
    if not reconciliation_configured(settings):
        return {
            "period": month,
            "skipped": SKIPPED,
            "summary": {},
            "statuses": {},
            "reports": {},
        }
    mapping = load_vendor_mapping(settings.pricebooks)
    start, end = month_bounds(month)
    hourly = store.scan(USAGE_HOURLY).filter((pl.col("hour") >= start) & (pl.col("hour") < end))
    costs = store.read(VENDOR_COSTS)
    rated = store.scan(RATED_USAGE).filter(pl.col("period") == month).collect()
    recon = reconcile(metered_daily(hourly, mapping), costs, mapping, month)
    attribution = cost_attribution(hourly, costs, rated, mapping, month)
    meta = {"run_id": run_id, "period": month}
    store.replace_partition(RECONCILIATION, recon, period=month, metadata=meta)
    store.replace_partition(COST_ATTRIBUTION, attribution, month=month, metadata=meta)
    if pdf_reports is None:
        pdf_reports = month in closed_periods(store)
    review = store.read(VENDOR_REVIEW)
    reports = _write_reports(store, settings, month, recon, attribution, review, pdf_reports)
    lines = pl.concat(
        [
            tag_lines(frame, table.name)
            for table, frame in ((VENDOR_COSTS, costs), (VENDOR_REVIEW, review))
        ]
        + [tag_lines(store.read(VENDOR_IGNORED), VENDOR_IGNORED.name)]
    ).filter(_in_month(month))
    return {
        "period": month,
        "summary": reconciliation_summary(recon, lines),
        "statuses": dict(recon.group_by("status").len().sort("status").iter_rows()),
        "reports": reports,
    }


def render_month_reports(store: DeltaStore, settings: Settings, month: str) -> dict[str, str]:
    """The month's reconciliation reports, PDFs included, from the stored tables (the close
    renders them with the invoices); {} when reconciliation is not configured."""
    if not reconciliation_configured(settings):
        return {}
    recon = store.scan(RECONCILIATION).filter(pl.col("period") == month).collect()
    attribution = store.scan(COST_ATTRIBUTION).filter(pl.col("month") == month).collect()
    review = store.read(VENDOR_REVIEW)
    return _write_reports(store, settings, month, recon, attribution, review, pdf=True)


def _write_reports(
    store: DeltaStore,
    settings: Settings,
    month: str,
    recon: pl.DataFrame,
    attribution: pl.DataFrame,
    review: pl.DataFrame,
    pdf: bool,
) -> dict[str, str]:
    """Render the reports into the document store: {report name: URI}; without `pdf` the
    month's PDFs are removed rather than left contradicting the new CSVs."""
    _, end = month_bounds(month)
    files = render_reconciliation_reports(
        recon,
        attribution,
        review=review.filter(_in_month(month)),
        changes=store.read(VENDOR_COST_CHANGES),
        pdf=pdf,
        created=end,
        period=month,
    )
    documents = DocumentStore(settings.home)
    reports = {}
    for name, (filename, data) in files.items():
        rel = f"reconciliation/{month}/{filename}"
        documents.put(rel, data)
        reports[name] = documents.uri(rel)
    if not pdf:
        for stale in report_pdf_names(month):
            documents.delete(f"reconciliation/{month}/{stale}")
    return reports
