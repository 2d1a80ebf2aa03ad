"""Pricing asset: `rated_usage` (with `unrated_usage` and the credit ledger) per month."""

import dagster as dg
import polars as pl

from usagebox_pipelines.catalog import RATED_USAGE
from usagebox_pipelines.defs.metadata import (
    KINDS,
    OWNERS,
    check_spec,
    materialized,
    table_metadata,
)
from usagebox_pipelines.defs.metering import usage_hourly, usage_monthly
from usagebox_pipelines.defs.partitions import month_of, monthly
from usagebox_pipelines.defs.resources import UsageboxResource
from usagebox_pipelines.stages.rating import build_rated_usage


@dg.asset(
    group_name="pricing",
    kinds=KINDS,
    owners=OWNERS,
    metadata=table_metadata(RATED_USAGE),
    partitions_def=monthly,
    deps=[
        usage_monthly,
        dg.AssetDep(usage_hourly, partition_mapping=dg.TimeWindowPartitionMapping()),
    ],
    check_specs=[
        # Not blocking: drafts still refresh; `usagebox close` refuses while any exists.
        check_spec(
            "no_unrated_usage",
            "rated_usage",
            "Every unit of the month's usage matched a rate; unmatched usage is listed in "
            "`unrated_usage` and blocks `usagebox close` (never billed as free).",
            blocking=False,
        )
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
            "price_versions": sorted(rated.price_versions),
            "unrated_rows": unrated.height,
        }
        | materialized(usagebox.store, RATED_USAGE, pl.col("period") == month),
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
