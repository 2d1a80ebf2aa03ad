"""Pricing asset: `rated_usage` (with `unrated_usage` and the credit ledger) per month."""

import dagster as dg

from usagebox_pipelines.defs.metering import usage_hourly, usage_monthly
from usagebox_pipelines.defs.partitions import month_of, monthly
from usagebox_pipelines.defs.resources import UsageboxResource
from usagebox_pipelines.stages.rating import build_rated_usage


@dg.asset(
    group_name="pricing",
    kinds={"deltalake", "polars"},
    partitions_def=monthly,
    deps=[
        usage_monthly,
        dg.AssetDep(usage_hourly, partition_mapping=dg.TimeWindowPartitionMapping()),
    ],
    check_specs=[
        # Not blocking: drafts still refresh; `usagebox close` refuses while any exists.
        dg.AssetCheckSpec("no_unrated_usage", asset="rated_usage", blocking=False)
    ],
)
def rated_usage(
    context: dg.AssetExecutionContext, usagebox: UsageboxResource
) -> dg.MaterializeResult:
    """Usage × the price version in effect at each hour, plus discount/minimum/credit lines."""
    month = month_of(context.partition_key)
    settings = usagebox.settings
    rated = build_rated_usage(usagebox.store, settings.pricebooks, month, context.run_id)
    unrated = rated.unrated
    return dg.MaterializeResult(
        metadata={
            "rows": rated.rows,
            "price_versions": sorted(rated.price_versions),
            "unrated_rows": unrated.height,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="no_unrated_usage",
                passed=unrated.height == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "unrated": dg.MetadataValue.json(
                        unrated.head(20).cast({c: str for c in unrated.columns}).to_dicts()
                    )
                },
            )
        ],
    )


pricing_assets = [rated_usage]
