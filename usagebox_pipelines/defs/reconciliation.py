"""Reconciliation assets: vendor bills vs metered usage, and cost attribution with margin."""

import dagster as dg
import polars as pl

from usagebox_pipelines.catalog import COST_ATTRIBUTION, RECONCILIATION
from usagebox_pipelines.defs.metadata import materialized, spec
from usagebox_pipelines.defs.partitions import BY_MONTH, month_of, monthly
from usagebox_pipelines.defs.pricing import rated_usage
from usagebox_pipelines.defs.resources import UsageboxResource
from usagebox_pipelines.stages.reconciliation import reconcile_month


class ReconciliationConfig(dg.Config):
    """`pdf_reports`: render the PDF reports in this run (true) or not (false); by default
    only for a closed month. The close renders an open month's PDFs with its invoices; a run
    writes the tables and CSVs (stages.reconciliation.reconcile_month)."""

    pdf_reports: bool | None = None


@dg.multi_asset(
    partitions_def=monthly,
    specs=[
        # after rated_usage (and so after the month's usage_hourly): the metered side and the
        # revenue of cost attribution read them, and must not be the previous run's
        spec(
            "reconciliation",
            RECONCILIATION,
            "Vendor × UTC day × model × meter: metered vs billed, status.",
            [dg.AssetDep(rated_usage, partition_mapping=BY_MONTH)],
            "reconciliation",
        ),
        spec(
            "cost_attribution",
            COST_ATTRIBUTION,
            "Account × model × month: revenue, allocated cost, margin.",
            [dg.AssetDep(rated_usage, partition_mapping=BY_MONTH)],
            "reconciliation",
        ),
    ],
)
def reconciliation_assets(
    context: dg.AssetExecutionContext, usagebox: UsageboxResource, config: ReconciliationConfig
):
    """Rebuild the month's reconciliation and cost attribution from the loaded vendor bills."""
    month = month_of(context.partition_key)
    store = usagebox.store
    result = reconcile_month(
        store, usagebox.settings, month, context.run_id, pdf_reports=config.pdf_reports
    )
    if "skipped" in result:
        context.log.info(result["skipped"])
        meta = {"skipped": result["skipped"]}
        for key, table in (
            ("reconciliation", RECONCILIATION),
            ("cost_attribution", COST_ATTRIBUTION),
        ):
            where = pl.col("period" if table is RECONCILIATION else "month") == month
            yield dg.MaterializeResult(
                asset_key=key, metadata=meta | materialized(store, table, where)
            )
        return
    meta = {
        "statuses": dg.MetadataValue.json(result["statuses"]),
        "reports": dg.MetadataValue.json(result["reports"]),
    }
    yield dg.MaterializeResult(
        asset_key="reconciliation",
        metadata=meta | materialized(store, RECONCILIATION, pl.col("period") == month),
    )
    yield dg.MaterializeResult(
        asset_key="cost_attribution",
        metadata={"summary": dg.MetadataValue.json(result["summary"])}
        | materialized(store, COST_ATTRIBUTION, pl.col("month") == month),
    )
