"""Guardrail scenarios planted on top of the generated demo month (one extra JSONL file).

The generated month already trips two budgets through `pricebooks/accounts.yaml`: acct-014
crosses 80 % of its 60.00 budget (soft alert) and acct-021 reaches 100 % of its 50.00 HARD
budget (hard stop, cited on its invoice). Clean generated usage has neither a team over its
allocation nor a surge, so this file adds them, deterministically (fixed ids: ingesting the file
twice only counts duplicates):

* TEAM: acct-003 (Support Automation, a team of acct-001 with a 150.00 allocation) runs a
  steady extra 21,600 claude-haiku-4-5 output tokens every hour of the month, about 100 USD
  at list price (87.9 after its inherited 12.5 % discount). The team passes its allocation late
  in the month while the org (400.00, hard at 110 %) keeps room; the steady rate stays inside
  every anomaly baseline, so it alerts only as a budget matter.
* SURGE: acct-009 sends 40 calls of 60,000 gpt-4o output tokens (2.4 M tokens, 30 USD) in one
  hour, day 21 15:00 UTC — a runaway batch job: a token surge and a spend spike against a
  baseline of a few thousand tokens an hour.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from usagebox_pipelines.months import month_bounds

TEAM_ACCOUNT = "acct-003"
TEAM_MODEL = "claude-haiku-4-5"
TEAM_TOKENS_PER_HOUR = 21_600
SURGE_ACCOUNT = "acct-009"
SURGE_MODEL = "gpt-4o"
SURGE_CALLS = 40
SURGE_TOKENS_PER_CALL = 60_000
SURGE_DAY, SURGE_HOUR = 21, 15


def plant_guardrail_scenarios(out_dir: Path, month: str) -> list[Path]:
    """Write `events/guardrails/<month>-guardrail-scenarios.jsonl` under `out_dir`.

    Canonical events (CONTRACT.md §2); the caller ingests the returned paths with the rest of
    the demo inputs.
    """
    rows = _team_rows(month) + _surge_rows(month)
    path = Path(out_dir) / "events" / "guardrails" / f"{month}-guardrail-scenarios.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps(row, sort_keys=True, separators=(",", ":")) for row in rows)
    path.write_text("\n".join(lines) + "\n")
    return [path]


def surge_hour(month: str):
    """The UTC hour the surge is planted in (day 21, 15:00)."""
    start, _ = month_bounds(month)
    return start.replace(day=SURGE_DAY, hour=SURGE_HOUR)


def _event(event_id: str, account: str, model: str, tokens: int, at, feature: str) -> dict:
    return {
        "event_id": event_id,
        "account_id": account,
        "meter_id": "output_tokens",
        "quantity": tokens,
        "timestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model_id": model,
        "product_id": "llm-api",
        "unit": "tokens",
        "dimensions": {"feature": feature},
    }


def _team_rows(month: str) -> list[dict]:
    start, end = month_bounds(month)
    hours = int((end - start) / timedelta(hours=1))
    return [
        _event(
            f"gr-{month}-team-{i:04d}",
            TEAM_ACCOUNT,
            TEAM_MODEL,
            TEAM_TOKENS_PER_HOUR,
            start + timedelta(hours=i, minutes=30),
            "chat",
        )
        for i in range(hours)
    ]


def _surge_rows(month: str) -> list[dict]:
    first = surge_hour(month)
    return [
        _event(
            f"gr-{month}-surge-{i:03d}",
            SURGE_ACCOUNT,
            SURGE_MODEL,
            SURGE_TOKENS_PER_CALL,
            first + timedelta(seconds=90 * i),
            "summarize",
        )
        for i in range(SURGE_CALLS)
    ]
