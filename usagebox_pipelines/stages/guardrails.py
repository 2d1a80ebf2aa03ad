"""Store-facing guardrail stages: read tables, call the pure logic, write one commit per table.

`refresh_guardrails` is what the monthly Dagster partition (nightly, and after every inbox
ingest) and the CLI run. It is idempotent: spend_state and usage_anomalies replace their month;
guardrail_decisions only ever gains decisions not recorded yet (written first, so a crash
between writes is finished by a rerun). `raise_alerts` turns new escalating decisions into
alert rows, once each.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

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
from usagebox_pipelines.guardrails.budgets import budget_tree, check_allocations, check_hierarchy
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
from usagebox_pipelines.shards import WHOLE_MONTH, MonthShard, account_shards, in_shard
from usagebox_pipelines.stages.month_shards import replace_shard_rows, writes_month_shard
from usagebox_pipelines.stages.rating import month_weights
from usagebox_pipelines.storage import DeltaStore, writes_tables


def as_of(month: str, now: datetime) -> datetime:
    """The evaluation time inside the month: `now`, clipped to [month start, month end]."""
    start, end = month_bounds(month)
    return min(max(now, start), end)


@writes_month_shard("guardrails")
def refresh_guardrails(
    store: DeltaStore,
    pricebooks_dir: Path | str,
    month: str,
    now: datetime | None = None,
    run_id: str = "cli",
    config: AnomalyConfig = AnomalyConfig(),
    *,
    shard: MonthShard = WHOLE_MONTH,
) -> dict:
    """Recompute spend_state and usage_anomalies for `month` (or its month shard `shard`, ADR
    0019) at `now`; record new decisions.

    Spend and anomalies are evaluated in shards of whole account hierarchies (a parent's
    budget covers its subtree), each reading only its accounts' rows: memory is bounded by a
    shard, not by the month. Decisions are then taken once over every shard's rows.
    """
    now = now or datetime.now(UTC)
    folder = Path(pricebooks_dir)
    load_pricebooks(folder)  # an invalid pricebook fails here, before any shard starts
    accounts = load_accounts(folder)
    at = as_of(month, now)
    check_hierarchy(accounts)
    check_allocations(accounts)
    shards = _hierarchy_shards(store, month, accounts, shard)
    known = [a for ids in shards for a in ids]
    strays = None if shard.whole else _strays(store, month, known, shard)
    builds, first_hour = _builds(store), _first_hour(store)
    jobs = [
        # the last shard also takes usage not rolled up yet of accounts no shard lists
        _ShardJob(store.home, str(folder), ids, known if n == len(shards) - 1 else None,
                  strays, month, at, config, builds, first_hour)
        for n, ids in enumerate(shards)
    ]  # fmt: skip
    parts = _evaluate_shards(store, jobs)
    state = pl.concat([p.state for p in parts])
    anomalies = pl.concat([p.anomalies for p in parts])
    levels = {a: lvl for p in parts for a, lvl in p.levels.items()}
    currencies = {a: accounts.get(a).currency for a in levels}
    existing = store.read(GUARDRAIL_DECISIONS)
    steps = pl.concat([p.steps for p in parts])
    fresh = pl.concat(
        [
            budget_decisions(state, steps, existing, now, run_id),
            anomaly_decisions(anomalies, existing, at, levels, currencies, now, run_id),
        ]
    ).join(existing.select("decision_id"), on="decision_id", how="anti")
    meta = {"run_id": run_id, "month": month, "as_of": at.isoformat()}
    if not fresh.is_empty():
        store.append(GUARDRAIL_DECISIONS, fresh, metadata=meta)
    state = with_anomalies(state, anomalies)
    state = with_decisions(state, pl.concat([existing, fresh]))
    written = sorted(levels)
    for table, rows in ((SPEND_STATE, state), (USAGE_ANOMALIES, anomalies)):
        replace_shard_rows(
            store, table, rows, shard=shard, root=accounts.root, written=written,
            metadata=meta, period=month,
        )  # fmt: skip
    return _summary(month, at, state, anomalies, fresh)


@dataclass(frozen=True)
class _ShardJob:
    """One shard's evaluation, as plain values a worker process can take (it opens the tables
    and reads the pricebooks itself)."""

    home: str
    pricebooks: str
    ids: list[str]
    known: list[str] | None  # every shard's accounts: this shard takes the others' strays
    strays: list[str] | None  # in a month shard (ADR 0019): the strays that belong to it
    month: str
    at: datetime
    config: AnomalyConfig
    builds: pl.DataFrame | None
    first_hour: datetime | None


def guardrail_workers(shards: int) -> int:
    """Processes that evaluate `shards` shards: 0 = this process (the default).

    `USAGEBOX_GUARDRAIL_WORKERS=N` evaluates the shards in a pool of N worker processes that
    only read (from `POOL_FROM_SHARDS` shards on: a spawned worker costs about a second). On
    this project's 2-core bench machine the step already keeps 1.6 cores busy (Polars
    threads), so a pool of 2 took 10 M events' `guardrails` from 40.2 s to 33.7 s for about
    1 GiB more memory; with more cores than Polars keeps busy it gains more."""
    cap = os.environ.get("USAGEBOX_GUARDRAIL_WORKERS", "").strip() or "0"
    if not cap.isdigit():
        raise UsageboxError(f"USAGEBOX_GUARDRAIL_WORKERS={cap!r}: expected a whole number")
    limit = int(cap)
    if shards < POOL_FROM_SHARDS or limit < 2:
        return 0
    return min(limit, shards)


#: Shards from which guardrails are evaluated in a process pool (see `guardrail_workers`).
POOL_FROM_SHARDS = 4


def _evaluate_shards(store: DeltaStore, jobs: list[_ShardJob]) -> list[_ShardResult]:
    """Every shard's result, in shard order (what is written never depends on scheduling);
    in this process the tables are opened once, through `store`."""
    workers = guardrail_workers(len(jobs))
    if workers == 0:
        return [_evaluate_job(job, store) for job in jobs]
    spawn = multiprocessing.get_context("spawn")  # polars' threads do not survive a fork
    with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
        return list(pool.map(_evaluate_job, jobs))


def _evaluate_job(job: _ShardJob, store: DeltaStore | None = None) -> _ShardResult:
    """`_evaluate_shard` of one job, in this process (`store`) or a worker, which opens the
    home itself (pricebooks and accounts are parsed once per process: their loaders cache by
    file content)."""
    store = store or DeltaStore(job.home)
    folder = Path(job.pricebooks)
    reading = _Reading(store.scan(USAGE_HOURLY), store.scan(EVENTS), job.builds, job.first_hour)
    strays = None if job.known is None else ~pl.col("account_id").is_in(job.known)
    if strays is not None and job.strays is not None:
        strays = strays & pl.col("account_id").is_in(job.strays)
    return _evaluate_shard(
        reading, job.ids, strays, job.month, job.at,
        load_pricebooks(folder), load_accounts(folder), job.config,
    )  # fmt: skip


@dataclass(frozen=True)
class _Reading:
    """The lazy inputs every shard filters to its accounts, and the first hour with data."""

    hourly: pl.LazyFrame
    events: pl.LazyFrame
    builds: pl.DataFrame | None
    first_hour: datetime | None


@dataclass(frozen=True)
class _ShardResult:
    state: pl.DataFrame
    steps: pl.DataFrame
    anomalies: pl.DataFrame
    levels: dict[str, int]


def _strays(store: DeltaStore, month: str, known: list[str], shard: MonthShard) -> list[str]:
    """Accounts of `shard` with events in the month but no hourly rows yet (no shard lists
    them): unlisted, so each is its own root. One column of the month's events is read."""
    start, end = month_bounds(month)
    days = (pl.col("event_date") >= start.date()) & (pl.col("event_date") <= end.date())
    hours = (pl.col("hour") >= start) & (pl.col("hour") < end)
    found = (
        store.scan(EVENTS)
        .filter(days & hours & ~pl.col("account_id").is_in(known))
        .select("account_id")
        .unique()
        .collect(engine="streaming")
    )
    return shard.owned(found.get_column("account_id"), lambda account: account)


def _first_hour(store: DeltaStore) -> datetime | None:
    """The earliest hour in `usage_hourly`, from the Delta log's file statistics (no data read:
    a scan of the column would read all history)."""
    files = store.files(USAGE_HOURLY)
    if files.is_empty() or "min.hour" not in files.columns:
        return None
    return cast(datetime | None, files.get_column("min.hour").min())


def _builds(store: DeltaStore) -> pl.DataFrame | None:
    if not store.exists(HOUR_BUILDS):
        return None
    return store.read(HOUR_BUILDS).select(HOUR_BUILDS.schema.names())


def _hierarchy_shards(
    store: DeltaStore, month: str, accounts: Accounts, shard: MonthShard
) -> list[list[str]]:
    """Listed accounts and those with hourly rows this month (of the month shard `shard`), in
    shards of whole hierarchies weighed by their hourly rows (at least one shard; accounts
    whose only usage is not rolled up yet are found by the last shard, see
    `refresh_guardrails`)."""
    weight = month_weights(store, month)
    ids = shard.owned([*weight.get_column("account_id"), *accounts.ids()], accounts.root)
    roots = pl.DataFrame({"account_id": ids, "root": [accounts.root(a) for a in ids]})
    by_root = (
        roots.join(weight, on="account_id", how="left")
        .group_by("root")
        .agg(pl.col("w").fill_null(0).sum())
        .rename({"root": "account_id"})
    )
    family = roots.group_by("root").agg(pl.col("account_id"))
    members = dict(family.iter_rows())
    return [sorted(a for r in shard for a in members[r]) for shard in account_shards(by_root)]


def _evaluate_shard(
    reading: _Reading,
    ids: list[str],
    strays: pl.Expr | None,
    month: str,
    at: datetime,
    books: PricebookSet,
    accounts: Accounts,
    config: AnomalyConfig,
) -> _ShardResult:
    """spend_state rows, status steps and anomalies of one shard of whole hierarchies (plus,
    with `strays`, the accounts it selects: unlisted, so each is a hierarchy of its own)."""
    mine = in_shard(ids)
    if strays is not None:
        mine = mine | strays
    hourly = reading.hourly.filter(mine)
    usage = month_usage(
        hourly,
        reading.events.filter(mine),
        reading.builds,
        month,
        at,
        split_at=[at - HOUR, at - 24 * HOUR],
    )
    tree = budget_tree(accounts, [*ids, *usage.get_column("account_id").unique().to_list()])
    evaluation = evaluate_spend(usage, tree, month, at, books, accounts)
    history = _history_series(hourly, month, books, accounts, config)
    series = pl.concat([history, evaluation.hourly])
    firsts = (reading.first_hour, cast(datetime | None, series.get_column("hour").min()))
    known = [f for f in firsts if f is not None]
    anomalies = detect_anomalies(series, month, at, accounts, config, min(known) if known else None)
    levels = {a: tree.level(a) for a in tree.ids}
    return _ShardResult(evaluation.state, evaluation.steps, anomalies, levels)


def _history_series(
    hourly: pl.LazyFrame,
    month: str,
    books: PricebookSet,
    accounts: Accounts,
    config: AnomalyConfig,
) -> pl.DataFrame:
    """Hourly amounts of the `baseline_days` before the month (baselines reach into it).
    History before the first stored hour is unknown (not silence): no baseline there."""
    start, _ = month_bounds(month)
    lookback = start - timedelta(days=config.baseline_days)
    history = history_usage(hourly, lookback, start)
    previous = f"{lookback.year:04d}-{lookback.month:02d}"
    return hourly_amounts(history, previous, books, accounts)


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
