"""Reconciliation assets: vendor bills vs metered usage, and cost attribution with margin."""

import dagster as dg

from usagebox_pipelines.defs.partitions import month_of, monthly
from usagebox_pipelines.defs.pricing import rated_usage
from usagebox_pipelines.defs.resources import UsageboxResource
from usagebox_pipelines.stages.reconciliation import reconcile_month


class ReconciliationConfig(dg.Config):
    """`pdf_reports: false` is the nightly month-to-date refresh: tables and CSVs only (the
    month's PDFs are removed rather than left contradicting them)."""

    pdf_reports: bool = True


#: Run config of a monthly run that refreshes reconciliation without rendering its PDFs.
NIGHTLY_RECONCILIATION = {"reconciliation_assets": {"config": {"pdf_reports": False}}}


@dg.multi_asset(
    group_name="reconciliation",
    partitions_def=monthly,
    specs=[
        # after rated_usage (and so after the month's usage_hourly): the metered side and the
        # revenue of cost attribution read them, and must not be the previous run's
        dg.AssetSpec(
            "reconciliation",
            deps=[rated_usage],
            kinds={"deltalake", "polars"},
            description="Vendor × UTC day × model × meter: metered vs billed, status.",
        ),
        dg.AssetSpec(
            "cost_attribution",
            deps=[rated_usage],
            kinds={"deltalake", "polars"},
            description="Account × model × month: revenue, allocated cost, margin.",
        ),
    ],
)
def reconciliation_assets(
    context: dg.AssetExecutionContext, usagebox: UsageboxResource, config: ReconciliationConfig
):
    """Rebuild the month's reconciliation and cost attribution from the loaded vendor bills."""
    result = reconcile_month(
        usagebox.store,
        usagebox.settings,
        month_of(context.partition_key),
        context.run_id,
        pdf_reports=config.pdf_reports,
    )
    if "skipped" in result:
        context.log.info(result["skipped"])
        meta = {"skipped": result["skipped"]}
        yield dg.MaterializeResult(asset_key="reconciliation", metadata=meta)
        yield dg.MaterializeResult(asset_key="cost_attribution", metadata=meta)
        return
    meta = {
        "statuses": dg.MetadataValue.json(result["statuses"]),
        "reports": dg.MetadataValue.json(result["reports"]),
    }
    yield dg.MaterializeResult(asset_key="reconciliation", metadata=meta)
    yield dg.MaterializeResult(
        asset_key="cost_attribution", metadata={"summary": dg.MetadataValue.json(result["summary"])}
    )
