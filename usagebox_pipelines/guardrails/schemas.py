"""Column schemas of the guardrail tables (spend_state, usage_anomalies, decisions, alerts).

Kept beside the guardrail logic (not in usagebox_pipelines/schemas.py) so the module can ship
on its own; the types follow the shared rules: exact money Decimal(38, 12), rounded invoice
money Decimal(18, 2), UTC microsecond timestamps, half-open windows `[from, to)`.
"""

from __future__ import annotations

import polars as pl

from usagebox_pipelines.schemas import MONEY, MONEY2, QTY, TS

PCT = pl.Decimal(38, 12)

# Statuses in escalation order: a budget scope only ever moves along this ladder.
STATUS_RANK: dict[str, int] = {"ok": 0, "soft_alert": 1, "hard_alert": 2, "hard_stop": 3}
ANOMALY_STATES = ("raised", "cleared")
ALERTING = ("soft_alert", "hard_alert", "hard_stop", "raised")

# One row per account × scope (`budget` over the account's subtree, or one `cap`) and month.
# `spend` is the subtree's month-to-date spend priced like the invoice (usage + discount lines,
# exact), `own_spend` the account's own share, `billed` the same money rounded as the invoice
# rounds it. Headroom is measured to the hard threshold; `effective_remaining` also respects
# every ancestor's remainder (`limited_by` names the account whose remainder binds). Budget rows
# also count the account's flagged anomaly hours of the month (details in usage_anomalies);
# `members` is the subtree and `meters` the meters the account itself used (comma-separated).
SPEND_STATE = pl.Schema(
    {
        "period": pl.String(),
        "as_of": TS,
        "account_id": pl.String(),
        "parent_id": pl.String(),
        "root_id": pl.String(),
        "level": pl.Int32(),
        "members": pl.String(),
        "meters": pl.String(),
        "scope": pl.String(),
        "limit_id": pl.String(),
        "meter_id": pl.String(),
        "model_id": pl.String(),
        "currency": pl.String(),
        "enforcement": pl.String(),
        "budget": MONEY,
        "soft_pct": PCT,
        "hard_pct": PCT,
        "soft_threshold": MONEY,
        "hard_threshold": MONEY,
        "own_spend": MONEY,
        "spend": MONEY,
        "billed": MONEY2,
        "pct_of_budget": PCT,
        "remaining": MONEY,
        "parent_remaining": MONEY,
        "effective_remaining": MONEY,
        "limited_by": pl.String(),
        "status": pl.String(),
        "rule": pl.String(),
        "status_since": TS,
        "soft_crossed_at": TS,
        "hard_crossed_at": TS,
        "spend_at_soft": MONEY,
        "spend_at_hard": MONEY,
        "burn_1h": MONEY,
        "burn_24h": MONEY,
        "burn_window_from": TS,
        "projected_hard_at": TS,
        "projected_in_period": pl.Boolean(),
        "anomaly_hours": pl.Int32(),
        "last_anomaly_at": TS,
        "decision_id": pl.String(),
        "decided_at": TS,
    }
)

# One row per flagged account × model × meter × hour × kind (`token_surge` on token
# quantities, `spend_spike` on hourly spend). The baseline is the same hour of each of the
# previous `samples` days; `baseline_values` is the JSON list that median and MAD came from.
USAGE_ANOMALIES = pl.Schema(
    {
        "period": pl.String(),
        "account_id": pl.String(),
        "model_id": pl.String(),
        "meter_id": pl.String(),
        "hour": TS,
        "kind": pl.String(),
        "unit": pl.String(),
        "value": QTY,
        "baseline_median": QTY,
        "baseline_mad": QTY,
        "baseline_values": pl.String(),
        "samples": pl.Int32(),
        "baseline_from": TS,
        "baseline_to": TS,
        "score": pl.Float64(),
        "ratio": pl.Float64(),
        "z_threshold": pl.Float64(),
        "min_ratio": pl.Float64(),
        "min_volume": QTY,
        "detected_at": TS,
    }
)

# Append-only: one row per state change of one scope (ok → soft_alert → hard_stop, recovery,
# anomaly raised/cleared). `decision_id` is a hash of what changed (never of the run), so a
# rerun finds it already recorded. `inputs` is the JSON of every number the rule looked at.
# `follows` chains a budget/cap scope's decisions (the id of the one before; null for the first).
GUARDRAIL_DECISIONS = pl.Schema(
    {
        "decision_id": pl.String(),
        "follows": pl.String(),
        "period": pl.String(),
        "account_id": pl.String(),
        "level": pl.Int32(),
        "scope": pl.String(),
        "limit_id": pl.String(),
        "meter_id": pl.String(),
        "model_id": pl.String(),
        "rule": pl.String(),
        "from_status": pl.String(),
        "to_status": pl.String(),
        "seq": pl.Int32(),
        "effective_at": TS,
        "window_from": TS,
        "window_to": TS,
        "spend": MONEY,
        "budget": MONEY,
        "threshold": MONEY,
        "soft_pct": PCT,
        "hard_pct": PCT,
        "enforcement": pl.String(),
        "currency": pl.String(),
        "limited_by": pl.String(),
        "inputs": pl.String(),
        "decided_at": TS,
        "run_id": pl.String(),
    }
)

# One row per alert the sensor raised; `decision_id` is unique, which makes alerting idempotent.
GUARDRAIL_ALERTS = pl.Schema(
    {
        "alert_id": pl.String(),
        "decision_id": pl.String(),
        "period": pl.String(),
        "account_id": pl.String(),
        "limit_id": pl.String(),
        "rule": pl.String(),
        "to_status": pl.String(),
        "severity": pl.String(),
        "message": pl.String(),
        "effective_at": TS,
        "raised_at": TS,
        "channel": pl.String(),
        "run_id": pl.String(),
    }
)
