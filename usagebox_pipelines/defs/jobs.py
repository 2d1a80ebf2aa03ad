"""Jobs the schedules, sensors and `usagebox run` launch (the same ones everywhere).

Each job is tagged with the lease its steps take (ADR 0012), so a deployment's run queue can
hold exclusive runs back instead of starting them only to wait on the lease
(`deploy/dagster.yaml`: one `usagebox/lease=exclusive` run at a time, one run per
`dagster/partition`). `hourly_job` is the one that fans out: one run per UTC day, any number at
once, each replacing only its day of `usage_hourly`. `monthly_job` runs the per-account monthly
assets, one partition per month × month shard (ADR 0019): one run for every shard of a month
(`month_range_tags`), or a run per shard in a deployment; `reconcile_job` then reconciles the
month against the vendor bills. A close is three jobs (ADR 0019 §5): `close_job` numbers the
month, `invoice_documents_job` renders its PDFs per month shard, `finish_close_job` appends the
marker once every document is there.
"""

import dagster as dg

from usagebox_pipelines.defs.partitions import MONTH_SHARDS, daily, month_shards, monthly

LEASE_TAG = "usagebox/lease"
EXCLUSIVE_RUN = {LEASE_TAG: "exclusive"}
SHARED_RUN = {LEASE_TAG: "shared"}
#: A month × shard job: with one shard its run holds the lease for the whole month; with more,
#: each shard's run holds it shared, beside the other shards' runs.
MONTH_SHARD_RUN = EXCLUSIVE_RUN if MONTH_SHARDS == 1 else SHARED_RUN

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=["raw_events", "events"],
    description="Ingest inbox files and fold them into `events`.",
    tags=EXCLUSIVE_RUN,
)
daily_job = dg.define_asset_job(
    "daily_job",
    selection=["events", "usage_hourly"],
    partitions_def=daily,
    description="Bring `events` up to date, then rebuild every hour of the selected UTC days of "
    "`usage_hourly`.",
    tags=EXCLUSIVE_RUN,
)
hourly_job = dg.define_asset_job(
    "hourly_job",
    selection=["usage_hourly"],
    partitions_def=daily,
    description="Rebuild every hour of one UTC day of `usage_hourly` from `events` as it is; "
    "runs of different days go together (the shared lease; a backfill fans out by day).",
    tags=SHARED_RUN,
)
monthly_job = dg.define_asset_job(
    "monthly_job",
    selection=dg.AssetSelection.all()
    - dg.AssetSelection.assets("raw_events", "events", "usage_hourly")
    - dg.AssetSelection.groups("reconciliation", "close"),
    partitions_def=month_shards,
    description="Monthly stages per month × month shard: usage_monthly, rating, guardrails and "
    "draft invoices of the shard's accounts.",
    tags=MONTH_SHARD_RUN,
)
reconcile_job = dg.define_asset_job(
    "reconcile_job",
    selection=dg.AssetSelection.groups("reconciliation"),
    partitions_def=monthly,
    description="Reconciliation and cost attribution of a month, after every shard of its "
    "monthly_job.",
    tags=EXCLUSIVE_RUN,
)
close_job = dg.define_asset_job(
    "close_job",
    selection=["issued_invoices"],
    partitions_def=monthly,
    description="Month close, step 1 of 3: number and stamp the month's invoices (needs "
    "approval); `invoice_documents_job` and `finish_close_job` follow (sensors).",
    tags=EXCLUSIVE_RUN,
)
invoice_documents_job = dg.define_asset_job(
    "invoice_documents_job",
    selection=["invoice_documents"],
    partitions_def=month_shards,
    description="Month close, step 2 of 3: render the numbered invoices' PDFs of a month shard's "
    "accounts (a run per shard, side by side).",
    tags=MONTH_SHARD_RUN,
)
finish_close_job = dg.define_asset_job(
    "finish_close_job",
    selection=["period_closes"],
    partitions_def=monthly,
    description="Month close, step 3 of 3: check every numbered invoice has its PDF, then append "
    "the `period_closes` marker (the month is closed) and render its reconciliation reports.",
    tags=EXCLUSIVE_RUN,
)

PARTITION_RANGE_START = "dagster/asset_partition_range_start"
PARTITION_RANGE_END = "dagster/asset_partition_range_end"


def day_range_tags(first_key: str, last_key: str) -> dict[str, str]:
    """Tags that make one run materialise a range of daily partitions (single-run backfill)."""
    return {PARTITION_RANGE_START: first_key, PARTITION_RANGE_END: last_key}


def month_range_tags(month: str) -> dict[str, str]:
    """Tags that make one `monthly_job` run materialise every shard of `month` ('2026-10')."""
    return {
        PARTITION_RANGE_START: f"{month}-01|0",
        PARTITION_RANGE_END: f"{month}-01|{MONTH_SHARDS - 1}",
    }


def month_run_requests(
    run_key: str, month: str, job_name: str = "monthly_job"
) -> list[dg.RunRequest]:
    """Runs of a month × shard job (`monthly_job`, `invoice_documents_job`) for `month`: one
    per month shard, each its own partition (a deployment runs them side by side, a pod each;
    a sensor follows the last: `reconcile_after_month`, `finish_close_after_documents`)."""
    return [
        dg.RunRequest(
            run_key=run_key if MONTH_SHARDS == 1 else f"{run_key}|{shard}",
            job_name=job_name,
            partition_key=f"{month}-01|{shard}",
        )
        for shard in range(MONTH_SHARDS)
    ]


def month_of_run(tags: dict[str, str]) -> str | None:
    """The month ('2026-10') a monthly or month × shard run materialised: from its partition, or the
    start of its range of shards."""
    key = tags.get("dagster/partition") or tags.get(PARTITION_RANGE_START)
    return key[:7] if key else None
