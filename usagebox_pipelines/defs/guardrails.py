"""Guardrail assets (spend_state, usage_anomalies, guardrail_decisions) and the alert sensor.

One multi-asset refreshes all three tables for a month partition, because decisions are derived
from the state and anomalies of the same evaluation (one consistent `as_of`). It runs in the
monthly job: nightly, and after every inbox ingest (`month_after_touched_days`). The sensor turns
new escalating decisions into alert rows (once per decision) and shows each alert in the UI as
an observation of `guardrail_decisions`.
"""

from collections.abc import Callable
from datetime import UTC, datetime

import dagster as dg
import polars as pl

from usagebox_pipelines.catalog import GUARDRAIL_DECISIONS, SPEND_STATE, USAGE_ANOMALIES, Table
from usagebox_pipelines.defs.metadata import counted, per_partition, spec
from usagebox_pipelines.defs.metering import usage_monthly
from usagebox_pipelines.defs.partitions import MONTH_SHARDS, month_shard_keys, month_shards
from usagebox_pipelines.defs.resources import UsageboxResource
from usagebox_pipelines.pricing.accounts import load_accounts
from usagebox_pipelines.shards import MonthShard
from usagebox_pipelines.stages.guardrails import raise_alerts, refresh_guardrails
from usagebox_pipelines.storage import DeltaStore

GROUP = "guardrails"
_PREVIEW_ROWS = 25


@dg.multi_asset(
    name="guardrails",
    partitions_def=month_shards,
    backfill_policy=dg.BackfillPolicy.single_run(),
    specs=[
        spec(
            "usage_anomalies",
            USAGE_ANOMALIES,
            "Token surges and spend spikes per account × model × meter × hour, "
            "scored against the series' own trailing baseline (median/MAD).",
            [usage_monthly],
            GROUP,
        ),
        spec(
            "spend_state",
            SPEND_STATE,
            "Month-to-date spend per account and limit (budget over the subtree, "
            "caps): headroom, thresholds crossed, burn rate, projected hard-cap time.",
            [usage_monthly],
            GROUP,
        ),
        spec(
            "guardrail_decisions",
            GUARDRAIL_DECISIONS,
            "Append-only trace of every guardrail state change, with its inputs.",
            ["spend_state", "usage_anomalies"],
            GROUP,
        ),
    ],
)
def guardrails(context: dg.AssetExecutionContext, usagebox: UsageboxResource):
    """Refresh the month's (shard's) spend_state and usage_anomalies; append new decisions."""
    store = usagebox.store
    keys = month_shard_keys(context)
    summaries = {}
    for key, month, shard in keys:
        summaries[key] = refresh_guardrails(
            store, usagebox.settings.pricebooks, month, datetime.now(UTC), context.run_id,
            shard=shard,
        )  # fmt: skip
        for status in ("soft_alert", "hard_alert", "hard_stop"):
            for scope in summaries[key][status]:
                context.log.warning(f"{month}: {scope} is {status}")
    root = load_accounts(usagebox.settings.pricebooks).root
    metadata: dict[str, dict[str, dict]] = {
        "usage_anomalies": {}, "spend_state": {}, "guardrail_decisions": {},
    }  # fmt: skip
    months: dict[str, dict[str, pl.DataFrame]] = {}
    for key, month, shard in keys:
        if month not in months:  # each table read once per month, after every shard wrote
            months[month] = {t.name: _month_rows(store, t, month) for t in _TABLES}
        tables = {n: _of_shard(f, shard, root) for n, f in months[month].items()}
        for asset, meta in _metadata(store, tables, summaries[key]).items():
            metadata[asset][key] = meta
    for asset, by_key in metadata.items():
        per_partition(context, by_key, asset)
        yield dg.MaterializeResult(asset_key=asset)


_TABLES = (SPEND_STATE, USAGE_ANOMALIES, GUARDRAIL_DECISIONS)


def _month_rows(store: DeltaStore, table: Table, month: str) -> pl.DataFrame:
    return store.scan(table).filter(pl.col("period") == month).collect()


def _of_shard(rows: pl.DataFrame, shard: MonthShard, root: Callable[[str], str]) -> pl.DataFrame:
    """The month's rows of the shard's accounts (all of them for an unsharded month)."""
    if shard.whole:
        return rows
    return rows.filter(pl.col("account_id").is_in(shard.owned(rows["account_id"], root)))


def _metadata(store: DeltaStore, tables: dict[str, pl.DataFrame], summary: dict) -> dict:
    """Each guardrail table's metadata for one month × shard partition, from its own rows:
    previews and `dagster/row_count` of the partition's accounts."""
    state, anomalies = tables["spend_state"], tables["usage_anomalies"]
    decisions = tables["guardrail_decisions"]
    latest = decisions.sort("effective_at", "seq").tail(_PREVIEW_ROWS)
    return {
        "usage_anomalies": {
            "flagged_hours": anomalies.height,
            "anomalies": dg.MetadataValue.md(_md(anomalies, _ANOMALY_COLUMNS)),
        }
        | counted(store, USAGE_ANOMALIES, anomalies.height),
        "spend_state": {
            "as_of": summary["as_of"],
            "accounts": summary["accounts"],
            "by_status": dg.MetadataValue.json(summary["status"]),
            "not_ok": dg.MetadataValue.md(
                _md(state.filter(pl.col("status") != "ok"), _STATE_COLUMNS)
            ),
        }
        | counted(store, SPEND_STATE, state.height),
        "guardrail_decisions": {
            "new_decisions": summary["new_decisions"],
            "decisions_in_month": decisions.height,
            "latest": dg.MetadataValue.md(_md(latest, _DECISION_COLUMNS)),
        }
        | counted(store, GUARDRAIL_DECISIONS, decisions.height),
    }


_STATE_COLUMNS = [
    "account_id", "limit_id", "status", "rule", "budget", "spend", "pct_of_budget",
    "effective_remaining", "soft_crossed_at", "hard_crossed_at", "decision_id",
]  # fmt: skip
_ANOMALY_COLUMNS = [
    "account_id", "model_id", "meter_id", "hour", "kind", "value", "baseline_median", "score",
]  # fmt: skip
_DECISION_COLUMNS = [
    "effective_at", "account_id", "limit_id", "rule", "from_status", "to_status", "spend",
    "threshold", "decision_id",
]  # fmt: skip


def _md(frame: pl.DataFrame, columns: list[str]) -> str:
    """A small markdown table for the asset page (money shown to the cent)."""
    if frame.is_empty():
        return "_none_"
    rows = frame.select(columns).head(_PREVIEW_ROWS).iter_rows()
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "\n".join("| " + " | ".join(_cell(v) for v in row) + " |" for row in rows)


def _cell(value: object) -> str:
    from decimal import Decimal

    if value is None:
        return ""
    if isinstance(value, Decimal):
        return f"{value.quantize(Decimal('0.01')):,}"
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def guardrail_alerts(context: dg.SensorEvaluationContext, usagebox: UsageboxResource):
    """Alert once per new soft/hard crossing or raised anomaly: a row and a UI observation."""
    alerts = raise_alerts(usagebox.store, datetime.now(UTC), run_id="sensor:guardrail_alerts")
    if alerts.is_empty():
        return dg.SkipReason("no new guardrail decisions to alert on")
    events = []
    root = load_accounts(usagebox.settings.pricebooks).root if MONTH_SHARDS > 1 else str
    for row in alerts.iter_rows(named=True):
        shard = MonthShard.of_root(root(row["account_id"]), MONTH_SHARDS)  # the partition
        context.log.warning(f"[{row['severity']}] {row['message']}")
        events.append(
            dg.AssetObservation(
                asset_key="guardrail_decisions",
                partition=f"{row['period']}-01|{shard.index}",
                metadata={
                    "alert_id": row["alert_id"],
                    "decision_id": row["decision_id"],
                    "account_id": row["account_id"],
                    "limit_id": row["limit_id"],
                    "status": row["to_status"],
                    "severity": row["severity"],
                    "message": row["message"],
                },
            )
        )
    return dg.SensorResult(asset_events=events)


guardrail_assets = [guardrails]
guardrail_sensors = [guardrail_alerts]
