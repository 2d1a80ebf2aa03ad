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
    VENDOR_REVIEW,
)
from usagebox_pipelines.config import Settings
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.reconciliation.attribution import cost_attribution
from usagebox_pipelines.reconciliation.loaders import (
    load_vendor_exports,
    merge_review,
    merge_vendor_costs,
)
from usagebox_pipelines.reconciliation.mapping import MAPPING_FILE, load_vendor_mapping
from usagebox_pipelines.reconciliation.reconcile import (
    metered_daily,
    reconcile,
    reconciliation_summary,
)
from usagebox_pipelines.reconciliation.reports import render_reconciliation_reports
from usagebox_pipelines.storage import DeltaStore, DocumentStore, writes_tables


@writes_tables("reconcile")
def load_exports(store: DeltaStore, settings: Settings, vendor: str, paths: list[Path]) -> dict:
    """Merge one vendor's exports into `vendor_costs`; idempotent, newer exports supersede."""
    mapping = load_vendor_mapping(settings.pricebooks)
    now = datetime.now(UTC)
    result = load_vendor_exports(vendor, paths, mapping, loaded_at=now)
    existing = store.read(VENDOR_COSTS)
    state, changes = merge_vendor_costs(existing, result.costs, superseded_at=now)
    changes = pl.concat([result.superseded, changes], how="diagonal_relaxed")
    if not state.equals(existing):
        store.overwrite(VENDOR_COSTS, state, metadata={"stage": "vendor_costs"})
    if changes.height:
        store.append(VENDOR_COST_CHANGES, changes)
    review = merge_review(store.read(VENDOR_REVIEW), result.review)
    store.overwrite(VENDOR_REVIEW, review)
    months = sorted({d.strftime("%Y-%m") for d in result.costs["date"].drop_nulls().to_list()})
    return {
        "vendor": vendor,
        "files": len(result.files),
        "lines": result.costs.height,
        "review": result.review.height,
        "superseded": changes.height,
        "months": months,
    }


SKIPPED = f"no {MAPPING_FILE}: reconciliation skipped"


def reconciliation_configured(settings: Settings) -> bool:
    """Reconciliation needs the vendor mapping; a pricing-only deployment has none."""
    return (Path(settings.pricebooks) / MAPPING_FILE).is_file()


@writes_tables("reconcile")
def reconcile_month(store: DeltaStore, settings: Settings, month: str, run_id: str = "cli") -> dict:
    """Rebuild `reconciliation` and `cost_attribution` for a month and write the reports.

    Without `vendors.yaml` in the pricebooks folder (pricing only) nothing is written and the
    result says `skipped` (SKIPPED); the monthly job does not fail on it.
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
    hourly = (
        store.scan(USAGE_HOURLY)
        .filter((pl.col("hour") >= start) & (pl.col("hour") < end))
        .collect()
    )
    costs = store.read(VENDOR_COSTS)
    rated = store.read(RATED_USAGE).filter(pl.col("period") == month)
    recon = reconcile(metered_daily(hourly, mapping), costs, mapping, month)
    attribution = cost_attribution(hourly, costs, rated, mapping, month)
    meta = {"run_id": run_id, "period": month}
    store.replace_partition(RECONCILIATION, recon, period=month, metadata=meta)
    store.replace_partition(COST_ATTRIBUTION, attribution, month=month, metadata=meta)
    review = store.read(VENDOR_REVIEW)
    changes = store.read(VENDOR_COST_CHANGES)
    files = render_reconciliation_reports(
        recon, attribution, review=review, changes=changes, created=end
    )
    documents = DocumentStore(settings.home)
    reports = {}
    for name, (filename, data) in files.items():
        rel = f"reconciliation/{month}/{filename}"
        documents.put(rel, data)
        reports[name] = documents.uri(rel)
    return {
        "period": month,
        "summary": reconciliation_summary(recon),
        "statuses": dict(recon.group_by("status").len().sort("status").iter_rows()),
        "reports": reports,
    }
