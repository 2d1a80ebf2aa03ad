"""Invoicing assets: `draft_invoices` (monthly job) and the close's three steps, plus the
`month_close` schedule.

Drafts refresh with every monthly run and carry invariant 4 as a blocking check. The close is
its own job (group `close`) so a nightly run can never issue invoices by accident: it needs
`approve: true` in the run config, or `USAGEBOX_AUTO_APPROVE_CLOSE=1` for unattended closes.
A refused or unapproved close fails the run with the reason; a closed month is a no-op.
An approved close is three assets in three jobs (ADR 0019 §5), chained by sensors:
`issued_invoices` numbers and stamps (`close_job`), `invoice_documents` renders the PDFs per
month × shard (`invoice_documents_job`, shards side by side), `period_closes` checks every
number has its document and appends the marker (`finish_close_job`).
"""

import os
from datetime import datetime, timedelta

import dagster as dg
import polars as pl

from usagebox_pipelines.catalog import INVOICES, PERIOD_CLOSES
from usagebox_pipelines.defs.jobs import close_job
from usagebox_pipelines.defs.metadata import (
    KINDS,
    OWNERS,
    check_spec,
    issued_metadata,
    materialized_by_shard,
    numbered_metadata,
    per_partition,
    table_metadata,
)
from usagebox_pipelines.defs.partitions import (
    BY_MONTH,
    month_of,
    month_shard_keys,
    month_shards,
    monthly,
)
from usagebox_pipelines.defs.pricing import rated_usage
from usagebox_pipelines.defs.resources import UsageboxResource
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.invariants import all_of
from usagebox_pipelines.pricing.accounts import load_accounts
from usagebox_pipelines.stages.close import close_month, finish_month
from usagebox_pipelines.stages.close_documents import render_documents
from usagebox_pipelines.stages.drafts import refresh_drafts
from usagebox_pipelines.stages.results import NeedsApproval, Numbered
from usagebox_pipelines.stages.verify import draft_lines_match_rated

GRACE_ENV = "USAGEBOX_CLOSE_GRACE_DAYS"
AUTO_APPROVE_ENV = "USAGEBOX_AUTO_APPROVE_CLOSE"
DEFAULT_GRACE_DAYS = 3


@dg.asset(
    group_name="invoicing",
    kinds=KINDS,
    owners=OWNERS,
    metadata=table_metadata(INVOICES),
    partitions_def=month_shards,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[rated_usage, dg.AssetDep("guardrail_decisions")],
    check_specs=[
        check_spec(
            "4_invoice_lines_equal_rated_usage",
            "draft_invoices",
            "Invariant 4: the month's draft usage lines equal its rated usage, plus "
            "adjustment lines for months closed earlier (per month shard).",
        )
    ],
)
def draft_invoices(
    context: dg.AssetExecutionContext, usagebox: UsageboxResource
) -> dg.MaterializeResult:
    """Draft invoices of an open month: rated usage + adjustments owed by closed months."""
    store, settings = usagebox.store, usagebox.settings
    checks, counts = [], {}
    keys = month_shard_keys(context)
    for key, month, shard in keys:
        invoices, lines = refresh_drafts(
            store, settings.pricebooks, month, context.run_id, shard=shard
        )
        checks.append(draft_lines_match_rated(store, settings.pricebooks, month, shard))
        adjustments = lines.filter(pl.col("kind") == "adjustment")
        counts[key] = {
            "documents": invoices.height,
            "lines": lines.height,
            "adjustment_lines": adjustments.height,
            "totals": dg.MetadataValue.json(_totals(invoices)),
        }
    root = load_accounts(settings.pricebooks).root
    by_shard = materialized_by_shard(store, INVOICES, keys, lambda m: _of(m, "draft"), root)
    per_partition(context, {k: meta | by_shard[k] for k, meta in counts.items()}, "draft_invoices")
    check = all_of(checks)
    return dg.MaterializeResult(
        check_results=[
            dg.AssetCheckResult(
                check_name=check.name,
                passed=check.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "detail": check.detail,
                    "examples": dg.MetadataValue.json(check.examples),
                },
            )
        ],
    )


def _of(month: str, status: str) -> pl.Expr:
    return (pl.col("period") == month) & (pl.col("status") == status)


def _totals(invoices: pl.DataFrame) -> dict[str, str]:
    """Draft total per currency, for the asset page."""
    return {
        str(currency): str(part["total"].sum())
        for (currency,), part in invoices.group_by("currency")
    }


class CloseConfig(dg.Config):
    """`approve`: issue the invoices. Unset = the `USAGEBOX_AUTO_APPROVE_CLOSE=1` env switch."""

    approve: bool | None = None


def auto_approve() -> bool:
    return os.environ.get(AUTO_APPROVE_ENV, "") == "1"


@dg.asset(
    group_name="close",
    kinds=KINDS,
    owners=OWNERS,
    metadata=table_metadata(INVOICES),
    partitions_def=monthly,
    deps=[dg.AssetDep(draft_invoices, partition_mapping=BY_MONTH)],
)
def issued_invoices(
    context: dg.AssetExecutionContext, config: CloseConfig, usagebox: UsageboxResource
) -> dg.MaterializeResult:
    """Close step 1: the approved month's invoices, numbered and stamped (not yet visible:
    their PDFs render per month shard, then `period_closes` marks the month closed)."""
    month = month_of(context.partition_key)
    approve = auto_approve() if config.approve is None else config.approve
    try:
        result = close_month(
            usagebox.store,
            usagebox.settings,
            month,
            approve=approve,
            approved_by=f"dagster:{context.run_id}",
            run_id=context.run_id,
            number_only=True,
        )
    except UsageboxError as exc:
        raise dg.Failure(description=f"close {month} refused: {exc}") from None
    if isinstance(result, NeedsApproval):
        raise dg.Failure(
            description=f"close {month} needs approval: run with config approve: true "
            f"(or set {AUTO_APPROVE_ENV}=1)",
            metadata={"control_totals": dg.MetadataValue.json(result.control_totals)},
        )
    if isinstance(result, Numbered):
        context.log.info(
            f"{month}: numbered {result.documents} document(s) "
            f"({result.first_number} to {result.last_number}); their PDFs follow"
        )
        return dg.MaterializeResult(metadata=numbered_metadata(usagebox.store, result))
    context.log.info(f"{month}: {result.status} with {len(result.invoices)} document(s)")
    return dg.MaterializeResult(metadata=issued_metadata(usagebox.store, result))


@dg.asset(
    group_name="close",
    kinds=KINDS,
    owners=OWNERS,
    metadata=table_metadata(INVOICES),  # it writes the documents' paths and hashes there
    partitions_def=month_shards,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[dg.AssetDep(issued_invoices, partition_mapping=BY_MONTH)],
)
def invoice_documents(
    context: dg.AssetExecutionContext, usagebox: UsageboxResource
) -> dg.MaterializeResult:
    """Close step 2: the PDFs of the numbered invoices of a month shard's accounts, their
    paths and hashes written into the issued rows (shards render side by side)."""
    counts = {}
    for key, month, shard in month_shard_keys(context):
        done = render_documents(
            usagebox.store, usagebox.settings, month, context.run_id, shard=shard
        )
        counts[key] = {"rendered": done.rendered, "kept": done.kept}
        context.log.info(f"{key}: {done.rendered} document(s) rendered, {done.kept} kept")
    per_partition(context, counts, "invoice_documents")
    return dg.MaterializeResult()


@dg.asset(
    group_name="close",
    kinds=KINDS,
    owners=OWNERS,
    metadata=table_metadata(PERIOD_CLOSES),
    partitions_def=monthly,
    deps=[dg.AssetDep(invoice_documents, partition_mapping=BY_MONTH)],
)
def period_closes(
    context: dg.AssetExecutionContext, usagebox: UsageboxResource
) -> dg.MaterializeResult:
    """Close step 3: the month's `period_closes` marker, once every numbered invoice has its
    PDF (gapless numbers); from then on the invoices are issued and never change."""
    month = month_of(context.partition_key)
    try:
        result = finish_month(usagebox.store, usagebox.settings, month, run_id=context.run_id)
    except UsageboxError as exc:
        raise dg.Failure(description=str(exc)) from None
    context.log.info(f"{month}: {result.status} with {len(result.invoices)} document(s)")
    return dg.MaterializeResult(metadata=issued_metadata(usagebox.store, result))


def grace_days() -> int:
    """Days after month end before the schedule closes it (`USAGEBOX_CLOSE_GRACE_DAYS`)."""
    raw = os.environ.get(GRACE_ENV, "")
    try:
        return max(0, int(raw)) if raw else DEFAULT_GRACE_DAYS
    except ValueError:
        return DEFAULT_GRACE_DAYS


def month_to_close(now: datetime, grace: int) -> str | None:
    """The previous month once `grace` full days have passed since its end, else None."""
    first_of_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if now < first_of_month + timedelta(days=grace):
        return None
    return (first_of_month - timedelta(days=1)).strftime("%Y-%m")


# Off until someone turns it on: it issues numbered invoices (with approval from config or env).
@dg.schedule(
    job=close_job,
    cron_schedule="0 6 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
def month_close(context: dg.ScheduleEvaluationContext):
    """Daily: request the previous month's close once the grace days are over; the run key is
    per month, so each month is requested once (approval still comes from config or env)."""
    month = month_to_close(context.scheduled_execution_time, grace_days())
    if month is None:
        return dg.SkipReason(f"previous month still within its {grace_days()}-day grace period")
    return dg.RunRequest(run_key=f"close-{month}", partition_key=f"{month}-01")


invoicing_assets = [draft_invoices, issued_invoices, invoice_documents, period_closes]
invoicing_schedules = [month_close]
