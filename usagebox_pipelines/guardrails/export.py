"""The enforcement policy: what an online enforcer loads (JSON) and what a person reads (text).

Built only from stored tables (spend_state, guardrail_decisions), so the export shows exactly
what the pipeline decided. Money is an exact decimal string (never a float: an enforcer
comparing against a float cap would drift), times are RFC 3339 UTC.

Per account: `status` of its budget scope (own or inherited from an ancestor whose remainder
ran out), `hard_stop` (block all usage), `headroom` per meter = the least of the budget's
effective remaining (ancestors included) and every cap on that meter held by the account or an
ancestor (`"*"` = any meter), `headroom_by_model` likewise for model caps, and the caps with
their own status (a cap in hard_stop blocks only its meter/model), and the month's anomaly
episodes (`open` until cleared).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal

import polars as pl

from usagebox_pipelines.decimals import decimal_text

POLICY_VERSION = 1


def money(value: Decimal | None) -> str | None:
    """Exact decimal text without trailing zeros (`6.1294762805`, `400`)."""
    return None if value is None else decimal_text(value)


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def build_policy(
    state: pl.DataFrame,
    decisions: pl.DataFrame,
    meters: Mapping[str, Iterable[str]] | None = None,
    generated_at: datetime | None = None,
) -> dict:
    """The policy document for the single period in `state`."""
    if state.is_empty():
        return {"version": POLICY_VERSION, "period": None, "accounts": {}}
    period = state.get_column("period").first()
    as_of = state.get_column("as_of").max()
    rows = {(r["account_id"], r["limit_id"]): r for r in state.iter_rows(named=True)}
    caps = [r for r in rows.values() if r["scope"] == "cap"]
    anomalies = _anomalies(decisions, period)
    accounts = {}
    for (account_id, limit_id), row in sorted(rows.items()):
        if limit_id != "budget":
            continue
        chain = [account_id, *_ancestors(rows, account_id)]
        mine = [c for c in caps if c["account_id"] in chain]
        own = row["meters"].split(",") if row.get("meters") else []
        used = (meters or {}).get(account_id, own)
        accounts[account_id] = _account(row, mine, used, anomalies.get(account_id, []))
    return {
        "version": POLICY_VERSION,
        "period": period,
        "as_of": _time(as_of),
        "generated_at": _time(generated_at),
        "accounts": accounts,
    }


def _ancestors(rows: Mapping, account_id: str) -> list[str]:
    out, parent = [], rows[(account_id, "budget")]["parent_id"]
    while parent is not None and (parent, "budget") in rows and parent not in out:
        out.append(parent)
        parent = rows[(parent, "budget")]["parent_id"]
    return out


def _account(row: dict, caps: list[dict], used: Iterable[str], anomalies: list[dict]) -> dict:
    effective = row["effective_remaining"]
    headroom = {"*": money(effective)}
    for meter in sorted({*used, *(c["meter_id"] for c in caps if c["meter_id"])}):
        bound = _least(
            [effective]
            + [c["remaining"] for c in caps if c["meter_id"] == meter and not c["model_id"]]
        )
        headroom[meter] = money(bound)
    by_model = {
        model: money(
            _least(
                [effective]
                + [c["remaining"] for c in caps if c["model_id"] == model and not c["meter_id"]]
            )
        )
        for model in sorted({c["model_id"] for c in caps if c["model_id"]})
    }
    return {
        "status": row["status"],
        "hard_stop": row["status"] == "hard_stop",
        "rule": row["rule"],
        "since": _time(row["status_since"]),
        "enforcement": row["enforcement"],
        "level": row["level"],
        "parent": row["parent_id"],
        "currency": row["currency"],
        "budget": money(row["budget"]),
        "spend": money(row["spend"]),
        "pct_of_budget": money(row["pct_of_budget"]),
        "remaining": money(row["remaining"]),
        "effective_remaining": money(effective),
        "limited_by": row["limited_by"],
        "headroom": headroom,
        "headroom_by_model": by_model,
        "caps": [_cap(c) for c in sorted(caps, key=lambda c: (c["level"], c["limit_id"]))],
        "burn_per_hour": {"last_hour": money(row["burn_1h"]), "last_24h": money(row["burn_24h"])},
        "projected_hard_at": _time(row["projected_hard_at"]),
        "soft_crossed_at": _time(row["soft_crossed_at"]),
        "hard_crossed_at": _time(row["hard_crossed_at"]),
        "anomaly_hours": row["anomaly_hours"],
        "decision": {"id": row["decision_id"], "recorded_at": _time(row["decided_at"])}
        if row["decision_id"]
        else None,
        "anomalies": anomalies,
    }


def _least(values: list[Decimal | None]) -> Decimal | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def _cap(row: dict) -> dict:
    return {
        "owner": row["account_id"],
        "limit_id": row["limit_id"],
        "meter_id": row["meter_id"],
        "model_id": row["model_id"],
        "status": row["status"],
        "hard_stop": row["status"] == "hard_stop",
        "cap": money(row["budget"]),
        "spend": money(row["spend"]),
        "remaining": money(row["remaining"]),
    }


def _anomalies(decisions: pl.DataFrame, period: str) -> dict[str, list[dict]]:
    """Per account: the period's anomaly episodes (raised, and cleared when they ended)."""
    mine = decisions.filter((pl.col("period") == period) & (pl.col("scope") == "anomaly"))
    raised = mine.filter(pl.col("to_status") == "raised")
    cleared = mine.filter(pl.col("to_status") == "cleared").select(
        "account_id", "limit_id", cleared_at=pl.col("effective_at")
    )
    # An episode's clear is the first clear after its raise (episodes of one series never overlap).
    episodes = (
        raised.join(cleared, on=["account_id", "limit_id"], how="left")
        .with_columns(
            cleared_at=pl.when(pl.col("cleared_at") > pl.col("effective_at")).then("cleared_at")
        )
        .group_by("decision_id")
        .agg(pl.all().exclude("cleared_at").first(), pl.col("cleared_at").min())
        .sort("account_id", "effective_at", "limit_id")
    )
    out: dict[str, list[dict]] = {}
    for row in episodes.iter_rows(named=True):
        out.setdefault(row["account_id"], []).append(
            {
                "kind": row["rule"],
                "meter_id": row["meter_id"],
                "model_id": row["model_id"],
                "open": row["cleared_at"] is None,
                "since": _time(row["effective_at"]),
                "cleared_at": _time(row["cleared_at"]),
                "decision_id": row["decision_id"],
            }
        )
    return out


# --------------------------------------------------------------------------- for a person


def status_text(
    policy: dict, account_id: str, decisions: pl.DataFrame, name: str | None = None
) -> str:
    """A short, plain report of one account's guardrail state."""
    acct = policy["accounts"][account_id]
    cur = acct["currency"] or ""
    title = f"{account_id}" + (f" — {name}" if name and name != account_id else "")
    lines = [
        f"{title}   period {policy['period']}, as of {policy['as_of']}",
        f"status:    {acct['status'].upper().replace('_', ' ')}"
        + (f" ({acct['rule']} since {acct['since']})" if acct["rule"] else ""),
    ]
    if acct["parent"]:
        lines.append(f"parent:    {acct['parent']} (level {acct['level']})")
    if acct["budget"] is not None:
        lines.append(f"budget:    {_show(acct['budget'])} {cur}, enforcement {acct['enforcement']}")
        lines.append(f"spend:     {_show(acct['spend'])} {cur} ({_show(acct['pct_of_budget'])} %)")
        lines.append(f"remaining: {_show(acct['remaining'])} {cur} to the hard threshold")
    else:
        lines.append(f"spend:     {_show(acct['spend'])} {cur} (no budget of its own)")
    if acct["limited_by"] and acct["limited_by"] != account_id:
        lines.append(
            f"effective: {_show(acct['effective_remaining'])} {cur} (bound by {acct['limited_by']})"
        )
    burn = acct["burn_per_hour"]
    lines.append(
        f"burn:      {_show(burn['last_hour'])} {cur}/h last hour, "
        f"{_show(burn['last_24h'])} {cur}/h last 24 h"
        + (f"; hard threshold at {acct['projected_hard_at']}" if acct["projected_hard_at"] else "")
    )
    for cap in acct["caps"]:
        lines.append(
            f"cap:       {cap['limit_id']} of {cap['owner']}: {_show(cap['spend'])} / "
            f"{_show(cap['cap'])} {cur}, {cap['status']}"
        )
    heads = ", ".join(f"{k} {_show(v)}" for k, v in acct["headroom"].items())
    lines.append(f"headroom:  {heads}")
    for anomaly in acct["anomalies"]:
        until = "still open" if anomaly["open"] else f"cleared {anomaly['cleared_at']}"
        lines.append(
            f"anomaly:   {anomaly['kind']} on {anomaly['model_id'] or '-'} {anomaly['meter_id']} "
            f"from {anomaly['since']}, {until} ({anomaly['decision_id']})"
        )
    lines.extend(_recent(decisions, account_id, policy["period"]))
    return "\n".join(lines)


def _show(value: str | None) -> str:
    if value is None:
        return "unlimited"
    return f"{Decimal(value).quantize(Decimal('0.01')):,}"


def _recent(decisions: pl.DataFrame, account_id: str, period: str, n: int = 8) -> list[str]:
    mine = decisions.filter((pl.col("account_id") == account_id) & (pl.col("period") == period))
    out = []
    for row in mine.sort("effective_at", "seq").tail(n).iter_rows(named=True):
        out.append(
            f"decision:  {row['effective_at']:%Y-%m-%d %H:%M} {row['limit_id']} "
            f"{row['from_status']} -> {row['to_status']} ({row['rule']}, {row['decision_id']})"
        )
    return out
