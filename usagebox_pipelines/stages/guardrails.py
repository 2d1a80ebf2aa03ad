"""Store-facing guardrail stages: read tables, call the pure logic, write one commit per table.

`refresh_guardrails` is what the monthly Dagster partition (nightly, and after every inbox
ingest) and the CLI run. It is idempotent: spend_state and usage_anomalies replace their month;
guardrail_decisions only ever gains decisions not recorded yet (written first, so a crash
between writes is finished by a rerun). `raise_alerts` turns new escalating decisions into
alert rows, once each.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from usagebox_pipelines.catalog import (
    EVENTS,
    GUARDRAIL_ALERTS,
    GUARDRAIL_DECISIONS,
    HOUR_BUILDS,
    SPEND_STATE,
    USAGE_ANOMALIES,
    USAGE_HOURLY,
)
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.guardrails.anomalies import AnomalyConfig, detect_anomalies
from usagebox_pipelines.guardrails.budgets import build_budget_tree
from usagebox_pipelines.guardrails.decisions import (
    anomaly_decisions,
    budget_decisions,
    new_alerts,
)
from usagebox_pipelines.guardrails.export import build_policy
from usagebox_pipelines.guardrails.spend import (
    HOUR,
    history_usage,
    hourly_amounts,
    month_usage,
)
from usagebox_pipelines.guardrails.state import evaluate_spend, with_anomalies
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing import Accounts, PricebookSet, load_accounts, load_pricebooks
from usagebox_pipelines.storage import DeltaStore, writes_tables


def as_of(month: str, now: datetime) -> datetime:
    """The evaluation time inside the month: `now`, clipped to [month start, month end]."""
    start, end = month_bounds(month)
    return min(max(now, start), end)


@writes_tables("guardrails")
def refresh_guardrails(
    store: DeltaStore,
    pricebooks_dir: Path | str,
    month: str,
    now: datetime | None = None,
    run_id: str = "cli",
    config: AnomalyConfig = AnomalyConfig(),
) -> dict:
    """Recompute spend_state and usage_anomalies for `month` at `now`; record new decisions."""
    now = now or datetime.now(UTC)
    folder = Path(pricebooks_dir)
    books, accounts = load_pricebooks(folder), load_accounts(folder)
    start, _ = month_bounds(month)
    at = as_of(month, now)
    hourly = store.scan(USAGE_HOURLY)
    builds = store.read(HOUR_BUILDS) if store.exists(HOUR_BUILDS) else None
    usage = month_usage(
        hourly,
        store.scan(EVENTS),
        None if builds is None else builds.select(HOUR_BUILDS.schema.names()),
        month,
        at,
        split_at=[at - HOUR, at - 24 * HOUR],
    )
    tree = build_budget_tree(accounts, usage.get_column("account_id").unique().to_list())
    evaluation = evaluate_spend(usage, tree, month, at, books, accounts)
    anomalies = _anomalies(hourly, evaluation.hourly, month, at, books, accounts, config)
    existing = store.read(GUARDRAIL_DECISIONS)
    fresh = pl.concat(
        [
            budget_decisions(evaluation.state, evaluation.steps, existing, now, run_id),
            anomaly_decisions(
                anomalies,
                existing,
                at,
                {a: tree.level(a) for a in tree.ids},
                {a: accounts.get(a).currency for a in tree.ids},
                now,
                run_id,
            ),
        ]
    ).join(existing.select("decision_id"), on="decision_id", how="anti")
    meta = {"run_id": run_id, "month": month, "as_of": at.isoformat()}
    if not fresh.is_empty():
        store.append(GUARDRAIL_DECISIONS, fresh, metadata=meta)
    state = with_anomalies(evaluation.state, anomalies)
    state = with_decisions(state, pl.concat([existing, fresh]))
    store.replace_partition(SPEND_STATE, state, period=month, metadata=meta)
    store.replace_partition(USAGE_ANOMALIES, anomalies, period=month, metadata=meta)
    return _summary(month, at, state, anomalies, fresh)


def _anomalies(
    hourly: pl.LazyFrame,
    month_series: pl.DataFrame,
    month: str,
    at: datetime,
    books: PricebookSet,
    accounts: Accounts,
    config: AnomalyConfig,
) -> pl.DataFrame:
    """Score the month's hours against baselines that may reach into the previous month."""
    start, _ = month_bounds(month)
    lookback = start - timedelta(days=config.baseline_days)
    history = history_usage(hourly, lookback, start)
    previous = f"{lookback.year:04d}-{lookback.month:02d}"
    series = pl.concat([hourly_amounts(history, previous, books, accounts), month_series])
    # History before the first stored hour is unknown (not silence): no baseline there.
    firsts = [
        hourly.select(pl.col("hour").min()).collect(engine="streaming").item(),
        series.get_column("hour").min(),
    ]
    known = [f for f in firsts if f is not None]
    return detect_anomalies(series, month, at, accounts, config, min(known) if known else None)


def with_decisions(state: pl.DataFrame, decisions: pl.DataFrame) -> pl.DataFrame:
    """Attach the latest decision of each (account, limit) scope: the row's audit pointer."""
    scoped = decisions.filter(pl.col("scope") != "anomaly")
    followed = scoped.select("period", "account_id", "limit_id", decision_id=pl.col("follows"))
    keys = ["period", "account_id", "limit_id"]
    latest = (
        scoped.join(followed.drop_nulls(), on=[*keys, "decision_id"], how="anti")
        .sort("decided_at", "seq")
        .group_by(keys)
        .agg(pl.col("decision_id").last(), pl.col("decided_at").last())
    )
    return (
        state.drop("decision_id", "decided_at")
        .join(latest, on=["period", "account_id", "limit_id"], how="left")
        .select(SPEND_STATE.schema.names())
    )


def _summary(
    month: str, at: datetime, state: pl.DataFrame, anomalies: pl.DataFrame, fresh: pl.DataFrame
) -> dict:
    budget = state.filter(pl.col("scope") == "budget")
    by_status = dict(budget.group_by("status").agg(pl.len()).sort("status").iter_rows())
    return {
        "month": month,
        "as_of": at.isoformat(),
        "accounts": budget.height,
        "status": by_status,
        **{s: _scopes_in(state, s) for s in ("soft_alert", "hard_alert", "hard_stop")},
        "anomalies": anomalies.height,
        "new_decisions": fresh.height,
    }


def _scopes_in(state: pl.DataFrame, status: str) -> list[str]:
    """`account:limit` of every row in `status` (e.g. `acct-021:budget`)."""
    label = pl.concat_str("account_id", pl.lit(":"), "limit_id")
    return sorted(state.filter(pl.col("status") == status).select(label).to_series().to_list())


@writes_tables("guardrail alerts")
def raise_alerts(
    store: DeltaStore, now: datetime | None = None, run_id: str = "cli"
) -> pl.DataFrame:
    """Alert rows for escalating decisions not alerted yet (at most one per decision)."""
    decisions = store.read(GUARDRAIL_DECISIONS)
    existing = store.read(GUARDRAIL_ALERTS)
    alerts = new_alerts(decisions, existing, now or datetime.now(UTC), run_id)
    if not alerts.is_empty():
        store.append(GUARDRAIL_ALERTS, alerts, metadata={"run_id": run_id})
    return alerts


# --------------------------------------------------------------------------- reading back


def latest_period(store: DeltaStore) -> str:
    """The newest month in spend_state (a user error when none was computed yet)."""
    periods = store.scan(SPEND_STATE).select(pl.col("period").max()).collect()
    period = periods.item()
    if period is None:
        raise UsageboxError(
            "no spend_state yet: run `usagebox run --month YYYY-MM` (or pass --refresh)"
        )
    return period


def read_decisions(store: DeltaStore, month: str | None = None) -> pl.DataFrame:
    """The decision trace, optionally of one month (empty when nothing was decided yet)."""
    decisions = store.read(GUARDRAIL_DECISIONS)
    return decisions if month is None else decisions.filter(pl.col("period") == month)


def current_policy(
    store: DeltaStore, month: str | None = None, generated_at: datetime | None = None
) -> dict:
    """The enforcement policy of `month` (default: the newest month in spend_state)."""
    month = month or latest_period(store)
    state = store.scan(SPEND_STATE).filter(pl.col("period") == month).collect()
    if state.is_empty():
        raise UsageboxError(f"no spend_state for {month}: run `usagebox run --month {month}`")
    decisions = read_decisions(store, month)
    return build_policy(state, decisions, generated_at=generated_at or datetime.now(UTC))
