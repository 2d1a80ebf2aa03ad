"""Pricing asset: `rated_usage` (with `unrated_usage`) per month × month shard."""

import dagster as dg
import polars as pl

from usagebox_pipelines.catalog import RATED_USAGE
from usagebox_pipelines.defs.metadata import (
    KINDS,
    OWNERS,
    check_spec,
    materialized_by_shard,
    per_partition,
    table_metadata,
)
from usagebox_pipelines.defs.metering import usage_hourly, usage_monthly
from usagebox_pipelines.defs.partitions import BY_MONTH, month_shard_keys, month_shards
from usagebox_pipelines.defs.resources import UsageboxResource
from usagebox_pipelines.pricing.accounts import load_accounts
from usagebox_pipelines.stages.rating import build_rated_usage


@dg.asset(
    group_name="pricing",
    kinds=KINDS,
    owners=OWNERS,
    metadata=table_metadata(RATED_USAGE),
    partitions_def=month_shards,
    backfill_policy=dg.BackfillPolicy.single_run(),
    # after the shard's guardrails: waivers of usage past a hard stop read its decisions
    # (without the edge, a multiprocess run rated beside guardrails and missed them)
    deps=[
        usage_monthly,
        dg.AssetDep(usage_hourly, partition_mapping=BY_MONTH),
        dg.AssetDep("guardrail_decisions"),
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
    store, settings = usagebox.store, usagebox.settings
    unrated, counts = [], {}
    keys = month_shard_keys(context)
    for key, month, shard in keys:
        rated = build_rated_usage(store, settings.pricebooks, month, context.run_id, shard=shard)
        unrated.append(rated.unrated)
        counts[key] = {
            "price_versions": sorted(rated.price_versions),
            "rated_rows": rated.rows,
            "unrated_rows": rated.unrated.height,
        }
    root = load_accounts(settings.pricebooks).root
    by_shard = materialized_by_shard(store, RATED_USAGE, keys, _period, root)
    per_partition(
        context, {key: meta | by_shard[key] for key, meta in counts.items()}, "rated_usage"
    )
    missing = pl.concat(unrated)
    return dg.MaterializeResult(
        check_results=[
            dg.AssetCheckResult(
                check_name="no_unrated_usage",
                passed=missing.height == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "unrated": dg.MetadataValue.json(
                        missing.head(20).cast({c: str for c in missing.columns}).to_dicts()
                    )
                },
            )
        ],
    )


def _period(month: str) -> pl.Expr:
    return pl.col("period") == month


pricing_assets = [rated_usage]
