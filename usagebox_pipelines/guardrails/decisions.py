"""The decision trace (`guardrail_decisions`, append-only) and the alerts raised from it.

A decision records one *state change* of one scope: a budget or cap moving up the ladder
ok → soft_alert → hard_alert|hard_stop (or back down), an ancestor's exhausted remainder
reaching a child, an anomaly raised or cleared. Nothing is recorded when a re-evaluation finds
the same state, so reruns append nothing.

Budget scopes are compared with their *last recorded* status, not re-derived: if late events
move the crossing hour, the change already recorded stands (the trace is history, not a view).
Anomaly episodes are keyed by what they are (series, kind, transition, hour), so the same
episode always gets the same id. Ids hash what changed (and, for budgets, the decision it
follows, so a re-escalation after a recovery is a new decision), never the run or the clock.

Over 400 lines on purpose: budget and anomaly decisions share the id scheme and the trace
they append to, so they stay together.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal

import polars as pl

from usagebox_pipelines.guardrails.schemas import (
    ALERTING,
    GUARDRAIL_ALERTS,
    GUARDRAIL_DECISIONS,
    STATUS_RANK,
)
from usagebox_pipelines.schemas import conform

HOUR = timedelta(hours=1)
_SERIES = ["account_id", "model_id", "meter_id", "kind"]
SEVERITY = {
    "soft_alert": "warning",
    "raised": "warning",
    "hard_alert": "error",
    "hard_stop": "critical",
}


def decision_id(*parts: object) -> str:
    """`gd-` + 20 hex of sha256 over the parts: stable across runs, machines and versions."""
    text = "|".join("" if p is None else _text(p) for p in parts)
    return "gd-" + hashlib.sha256(text.encode()).hexdigest()[:20]


def _text(value: object) -> str:
    """The text hashed into decision ids: `str()` of Decimals as they are (scale kept), ISO
    times. Not `decimals.plain`: ids must never change, so this stays as it was."""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _json(data: Mapping[str, object]) -> str:
    return json.dumps(data, default=_text, sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------- budgets and caps


def last_statuses(
    existing: pl.DataFrame, period: str
) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(account_id, limit_id) → (status its latest decision left it in, that decision's id).

    The latest is the end of the scope's `follows` chain (no decision follows it): clocks
    and run order can tie or go backwards, the chain cannot.
    """
    mine = existing.filter((pl.col("period") == period) & (pl.col("scope") != "anomaly"))
    followed = mine.select("account_id", "limit_id", decision_id=pl.col("follows")).drop_nulls()
    ends = mine.join(followed, on=["account_id", "limit_id", "decision_id"], how="anti")
    latest = (
        ends.sort("decided_at", "seq", "effective_at")
        .group_by("account_id", "limit_id")
        .agg(pl.col("to_status").last(), pl.col("decision_id").last())
    )
    return {(a, lim): (s, d) for a, lim, s, d in latest.iter_rows()}


def budget_decisions(
    state: pl.DataFrame,
    steps: pl.DataFrame,
    existing: pl.DataFrame,
    decided_at: datetime,
    run_id: str,
) -> pl.DataFrame:
    """New decisions for budget and cap scopes whose status differs from the last recorded."""
    if state.is_empty():
        return pl.DataFrame(schema=GUARDRAIL_DECISIONS)
    period = state.get_column("period").first()
    last = last_statuses(existing, period)
    ladders: dict[tuple[str, str], list[dict]] = {}
    for step in steps.sort("at").iter_rows(named=True):
        ladders.setdefault((step["account_id"], step["limit_id"]), []).append(step)
    out: list[dict] = []
    for row in state.iter_rows(named=True):
        key = (row["account_id"], row["limit_id"])
        (before, previous), now_status = last.get(key, ("ok", None)), row["status"]
        if now_status == before:
            continue
        if STATUS_RANK[now_status] > STATUS_RANK[before]:
            climbed = [
                s
                for s in ladders.get(key, [])
                if STATUS_RANK[before] < STATUS_RANK[s["status"]] <= STATUS_RANK[now_status]
            ]
            changes = _climb_rows(row, before, climbed)
        else:
            changes = [_settle_row(row, before)]
        for change in changes:  # chained: each id also hashes the decision it follows
            decision = _decision(change, row, previous, decided_at, run_id, len(out))
            previous = decision["decision_id"]
            out.append(decision)
    return _frame(out)


def _climb_rows(row: dict, before: str, climbed: list[dict]) -> list[dict]:
    out, previous = [], before
    for step in climbed:
        change = {
            "from_status": previous,
            "to_status": step["status"],
            "rule": step["rule"],
            "effective_at": step["at"],
            "window_from": step["window_from"],
            "window_to": step["window_to"],
            "spend": step["spend"],
            "threshold": step["threshold"],
            "limited_by": step["limited_by"],
        }
        out.append(change)
        previous = step["status"]
    return out


def _settle_row(row: dict, before: str) -> dict:
    """Back down the ladder (a negative correction, a raised budget) or a changed enforcement."""
    lower = STATUS_RANK[row["status"]] < STATUS_RANK[before]
    change = {
        "from_status": before,
        "to_status": row["status"],
        "rule": "recovered" if lower else "reclassified",
        "effective_at": row["as_of"],
        "window_from": row["as_of"] and _month_start(row["as_of"]),
        "window_to": row["as_of"],
        "spend": row["spend"],
        "threshold": row["hard_threshold"],
        "limited_by": row["limited_by"],
    }
    return change


def _month_start(t: datetime) -> datetime:
    return t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _decision(
    change: dict, row: dict, previous: str | None, decided_at: datetime, run_id: str, seq: int
) -> dict:
    inputs = {
        "spend": change["spend"],
        "spend_now": row["spend"],
        "own_spend": row["own_spend"],
        "budget": row["budget"],
        "soft_pct": row["soft_pct"],
        "hard_pct": row["hard_pct"],
        "soft_threshold": row["soft_threshold"],
        "hard_threshold": row["hard_threshold"],
        "threshold": change["threshold"],
        "window": [change["window_from"], change["window_to"]],
        "members": row["members"],
        "parent_remaining": row["parent_remaining"],
        "effective_remaining": row["effective_remaining"],
        "limited_by": change["limited_by"],
        "burn_1h": row["burn_1h"],
        "burn_24h": row["burn_24h"],
        "as_of": row["as_of"],
    }
    return {
        "follows": previous,
        "decision_id": decision_id(
            row["period"],
            row["account_id"],
            row["limit_id"],
            change["from_status"],
            change["to_status"],
            change["effective_at"],
            previous,
        ),
        "period": row["period"],
        "account_id": row["account_id"],
        "level": row["level"],
        "scope": row["scope"],
        "limit_id": row["limit_id"],
        "meter_id": row["meter_id"],
        "model_id": row["model_id"],
        "budget": row["budget"],
        "soft_pct": row["soft_pct"],
        "hard_pct": row["hard_pct"],
        "enforcement": row["enforcement"],
        "currency": row["currency"],
        "inputs": _json(inputs),
        "decided_at": decided_at,
        "run_id": run_id,
        "seq": seq,
        **change,
    }


def _frame(rows: list[dict]) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame(schema=GUARDRAIL_DECISIONS)
    return conform(pl.DataFrame(rows, schema_overrides=GUARDRAIL_DECISIONS), GUARDRAIL_DECISIONS)


# --------------------------------------------------------------------------- anomalies


def anomaly_episodes(anomalies: pl.DataFrame) -> pl.DataFrame:
    """Runs of consecutive flagged hours per series: first/last hour and the peak's numbers."""
    gap = (pl.col("hour").diff() != pl.duration(hours=1)).fill_null(True)
    ordered = anomalies.sort([*_SERIES, "hour"], nulls_last=True).with_columns(
        episode=gap.cast(pl.Int32).cum_sum().over(_SERIES)
    )
    peak = pl.col("score").arg_max()
    return ordered.group_by([*_SERIES, "episode"]).agg(
        first_hour=pl.col("hour").min(),
        last_hour=pl.col("hour").max(),
        hours=pl.len(),
        period=pl.col("period").first(),
        peak_hour=pl.col("hour").get(peak),
        value=pl.col("value").get(peak),
        baseline_median=pl.col("baseline_median").get(peak),
        baseline_mad=pl.col("baseline_mad").get(peak),
        baseline_values=pl.col("baseline_values").get(peak),
        score=pl.col("score").get(peak),
        ratio=pl.col("ratio").get(peak),
        z_threshold=pl.col("z_threshold").first(),
        min_ratio=pl.col("min_ratio").first(),
        min_volume=pl.col("min_volume").first(),
        unit=pl.col("unit").first(),
    )


def anomaly_decisions(
    anomalies: pl.DataFrame,
    existing: pl.DataFrame,
    now: datetime,
    levels: Mapping[str, int],
    currencies: Mapping[str, str],
    decided_at: datetime,
    run_id: str,
) -> pl.DataFrame:
    """`raised` at each episode's first hour; `cleared` once the hour after it is complete."""
    if anomalies.is_empty():
        return pl.DataFrame(schema=GUARDRAIL_DECISIONS)
    rows = []
    for ep in anomaly_episodes(anomalies).iter_rows(named=True):
        after = ep["last_hour"] + HOUR
        rows.append(_anomaly_row(ep, "ok", "raised", ep["first_hour"], levels, currencies))
        if after + HOUR <= now:
            rows.append(_anomaly_row(ep, "raised", "cleared", after, levels, currencies))
    known = set(existing.get_column("decision_id").to_list())
    fresh = [r for r in rows if r["decision_id"] not in known]
    fresh.sort(key=lambda r: (r["effective_at"], r["decision_id"]))
    return _frame(
        [{**r, "decided_at": decided_at, "run_id": run_id, "seq": i} for i, r in enumerate(fresh)]
    )


def _anomaly_row(
    ep: dict,
    before: str,
    after: str,
    at: datetime,
    levels: Mapping[str, int],
    currencies: Mapping[str, str],
) -> dict:
    limit_id = f"anomaly:{ep['kind']}:{ep['meter_id']}:{ep['model_id'] or '*'}"
    inputs = {
        "kind": ep["kind"],
        "unit": ep["unit"],
        "peak_hour": ep["peak_hour"],
        "value": ep["value"],
        "baseline_median": ep["baseline_median"],
        "baseline_mad": ep["baseline_mad"],
        "baseline_values": json.loads(ep["baseline_values"] or "[]"),
        "score": ep["score"],
        "ratio": ep["ratio"],
        "z_threshold": ep["z_threshold"],
        "min_ratio": ep["min_ratio"],
        "min_volume": ep["min_volume"],
        "episode": [ep["first_hour"], ep["last_hour"] + HOUR],
        "hours_flagged": ep["hours"],
    }
    return {
        "decision_id": decision_id(ep["period"], ep["account_id"], limit_id, before, after, at),
        "period": ep["period"],
        "account_id": ep["account_id"],
        "level": levels.get(ep["account_id"], 0),
        "scope": "anomaly",
        "limit_id": limit_id,
        "meter_id": ep["meter_id"],
        "model_id": ep["model_id"],
        "rule": ep["kind"],
        "from_status": before,
        "to_status": after,
        "effective_at": at,
        "window_from": ep["peak_hour"],
        "window_to": ep["peak_hour"] + HOUR,
        "spend": ep["value"] if ep["kind"] == "spend_spike" else None,
        "threshold": ep["min_volume"],
        "currency": currencies.get(ep["account_id"]),
        "inputs": _json(inputs),
    }


# --------------------------------------------------------------------------- notes and alerts


def hard_stop_notes(decisions: pl.DataFrame, account_id: str, period: str) -> list[str]:
    """Invoice notes citing every hard stop of the account in the period (id and time)."""
    stops = decisions.filter(
        (pl.col("account_id") == account_id)
        & (pl.col("period") == period)
        & (pl.col("to_status") == "hard_stop")
    ).sort("effective_at", "decision_id")
    return [_note(row) for row in stops.iter_rows(named=True)]


def _note(row: dict) -> str:
    currency = row.get("currency") or ""
    what = "budget" if row["limit_id"] == "budget" else row["limit_id"].replace("cap:", "cap ")
    cause = (
        f"the remaining allocation of {row['limited_by']} was exhausted"
        if row["rule"] == "parent_remainder"
        else f"spend {_money(row['spend'])} {currency} reached the hard threshold "
        f"{_money(row['threshold'])} {currency}"
    )
    return (
        f"Spend guardrail: usage was hard-stopped ({what}) from "
        f"{row['effective_at']:%Y-%m-%d %H:%M} UTC because {cause} "
        f"(decision {row['decision_id']}, recorded {row['decided_at']:%Y-%m-%d %H:%M} UTC)."
    )


def _money(value: Decimal | None) -> str:
    return "?" if value is None else f"{value.quantize(Decimal('0.01')):,}"


def new_alerts(
    decisions: pl.DataFrame, existing: pl.DataFrame, raised_at: datetime, run_id: str
) -> pl.DataFrame:
    """One alert per escalating decision not alerted yet (idempotent on `decision_id`)."""
    todo = decisions.filter(pl.col("to_status").is_in(list(ALERTING))).join(
        existing.select("decision_id"), on="decision_id", how="anti"
    )
    if todo.is_empty():
        return pl.DataFrame(schema=GUARDRAIL_ALERTS)
    rows = [
        {
            "alert_id": "ga-" + row["decision_id"].removeprefix("gd-"),
            "decision_id": row["decision_id"],
            "period": row["period"],
            "account_id": row["account_id"],
            "limit_id": row["limit_id"],
            "rule": row["rule"],
            "to_status": row["to_status"],
            "severity": SEVERITY.get(row["to_status"], "warning"),
            "message": alert_message(row),
            "effective_at": row["effective_at"],
            "raised_at": raised_at,
            "channel": "dagster",
            "run_id": run_id,
        }
        for row in todo.sort("effective_at", "decision_id").iter_rows(named=True)
    ]
    return conform(pl.DataFrame(rows, schema_overrides=GUARDRAIL_ALERTS), GUARDRAIL_ALERTS)


def alert_message(row: Mapping) -> str:
    """One line a person can act on: who, which scope, what happened, when, the numbers."""
    at = f"{row['effective_at']:%Y-%m-%d %H:%M} UTC"
    head = f"{row['account_id']} {row['limit_id']}: {row['to_status']} at {at}"
    if row["scope"] == "anomaly":
        inputs = json.loads(row["inputs"] or "{}")
        return (
            f"{head} — {row['rule']} {inputs.get('value')} {inputs.get('unit')} vs median "
            f"{inputs.get('baseline_median')} (score {inputs.get('score'):.1f})"
        )
    currency = row.get("currency") or ""
    if row["rule"] == "parent_remainder":
        return f"{head} — no remainder left at {row['limited_by']}"
    limit = "budget" if row["scope"] == "budget" else "cap"
    return (
        f"{head} — spend {_money(row['spend'])} {currency} >= {_money(row['threshold'])} "
        f"{currency} ({row['rule']}, {limit} {_money(row['budget'])} {currency})"
    )
