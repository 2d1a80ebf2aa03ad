"""Spend guardrails: budgets and allocations, soft/hard caps, burn rate, anomalies, decisions.

Pure Polars logic over the pricing engine (spend is priced exactly like the invoice), plus
`stages` (the one store-facing module). See docs/adr/0005-guardrails-*.md.

- `budgets`: limits from `pricebooks/accounts.yaml` (budget per subtree, caps, allocations)
- `spend`: exact month-to-date spend at any cutoff; per-hour amounts
- `state`: `spend_state` rows (spend, headroom, thresholds crossed, burn, projection)
- `anomalies`: token surges and spend spikes against robust trailing baselines
- `decisions`: the append-only decision trace, alerts, invoice notes for hard stops
- `export`: the enforcement policy JSON and the per-account text report
"""

from usagebox_pipelines.guardrails.anomalies import AnomalyConfig, detect_anomalies
from usagebox_pipelines.guardrails.budgets import (
    BudgetError,
    BudgetTree,
    Limit,
    build_budget_tree,
)
from usagebox_pipelines.guardrails.decisions import hard_stop_notes
from usagebox_pipelines.guardrails.export import build_policy, status_text
from usagebox_pipelines.guardrails.schemas import (
    GUARDRAIL_ALERTS,
    GUARDRAIL_DECISIONS,
    SPEND_STATE,
    USAGE_ANOMALIES,
)
from usagebox_pipelines.guardrails.spend import hourly_amounts, month_usage, spend_at
from usagebox_pipelines.guardrails.state import evaluate_spend

__all__ = [
    "GUARDRAIL_ALERTS",
    "GUARDRAIL_DECISIONS",
    "SPEND_STATE",
    "USAGE_ANOMALIES",
    "AnomalyConfig",
    "BudgetError",
    "BudgetTree",
    "Limit",
    "build_budget_tree",
    "build_policy",
    "detect_anomalies",
    "evaluate_spend",
    "hard_stop_notes",
    "hourly_amounts",
    "month_usage",
    "spend_at",
    "status_text",
]
