"""Shared guardrail fixtures: a tiny pricebook with round prices and an account hierarchy.

Prices (pricebook `simple`, USD): input_tokens of model m1 cost 1.00 a token and output_tokens
of m1 2.00 a token, so spend is the token count and every number in the scenarios can be
checked by hand. Accounts:

  solo      budget 100, HARD (soft 80 %, hard 100 %)
  proj      budget 100, HARD
  org       budget 1000, SOFT        org2     budget 100, HARD
    team    budget 100, HARD          team2   budget 80, SOFT
    sibling (no budget)               sib2    (no budget)
  disc      discount 10 %, budget 50, caps: output_tokens 20 (SOFT)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path

import polars as pl

from usagebox_pipelines import schemas
from usagebox_pipelines.guardrails.budgets import build_budget_tree
from usagebox_pipelines.guardrails.state import SpendEvaluation, evaluate_spend
from usagebox_pipelines.pricing import load_accounts, load_pricebooks

PERIOD = "2026-10"
START = datetime(2026, 10, 1, tzinfo=UTC)

PRICEBOOK = """\
pricebook: simple
version: "v1"
effective_from: 2026-10-01T00:00:00Z
currency: USD
rates:
  - {meter_id: input_tokens, model_id: m1, per: 1, unit_price: "1.00"}
  - {meter_id: output_tokens, model_id: m1, per: 1, unit_price: "2.00"}
"""

ACCOUNTS_YAML = """\
defaults: {pricebook: simple, currency: USD}
accounts:
  solo: {budget: {monthly: "100", enforcement: HARD}}
  proj: {budget: {monthly: "100", enforcement: HARD}}
  org: {budget: {monthly: "1000", enforcement: SOFT}}
  team: {parent: org, budget: {monthly: "100", enforcement: HARD}}
  sibling: {parent: org}
  org2: {budget: {monthly: "100", enforcement: HARD}}
  team2: {parent: org2, budget: {monthly: "80", enforcement: SOFT}}
  sib2: {parent: org2}
  disc:
    discount_pct: "10"
    budget: {monthly: "50", caps: [{meter_id: output_tokens, monthly: "20"}]}
"""


def write_books(folder: Path, accounts_yaml: str = ACCOUNTS_YAML) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "simple-v1.yaml").write_text(PRICEBOOK)
    (folder / "accounts.yaml").write_text(accounts_yaml)
    return folder


def at(hours: float) -> datetime:
    """START + hours (fractions allowed: 8.5 → 08:30)."""
    return START + timedelta(seconds=round(hours * 3600))


def hourly_rows(rows: list[tuple]) -> pl.DataFrame:
    """USAGE_HOURLY rows from (account, meter, hour index, quantity[, model])."""
    records = [
        {
            "account_id": account,
            "meter_id": meter,
            "model_id": rest[0] if rest else "m1",
            "billable": True,
            "dimensions": "{}",
            "hour": at(h),
            "sum": D(str(q)),
            "count": 1,
        }
        for account, meter, h, q, *rest in rows
    ]
    return schemas.conform(pl.DataFrame(records, infer_schema_length=None), schemas.USAGE_HOURLY)


def steady(account: str, per_hour: int, hours: int, meter: str = "input_tokens") -> list[tuple]:
    return [(account, meter, h, per_hour) for h in range(hours)]


def usage_with_at(hourly: pl.DataFrame) -> pl.DataFrame:
    """Rollup rows as `spend.month_usage` returns them (counted at their hour start)."""
    return hourly.with_columns(at=pl.col("hour"))


def evaluate(folder: Path, hourly: pl.DataFrame, now: datetime) -> SpendEvaluation:
    books, accounts = load_pricebooks(folder), load_accounts(folder)
    usage = usage_with_at(hourly)
    tree = build_budget_tree(accounts, usage.get_column("account_id").unique().to_list())
    return evaluate_spend(usage, tree, PERIOD, now, books, accounts)


def row(state: pl.DataFrame, account: str, limit_id: str = "budget") -> dict:
    found = state.filter((pl.col("account_id") == account) & (pl.col("limit_id") == limit_id))
    assert found.height == 1, f"{account}/{limit_id}: {found.height} rows"
    return found.row(0, named=True)


def event_rows(rows: list[tuple]) -> pl.DataFrame:
    """EVENTS rows from (event_id, account, meter, timestamp, quantity)."""
    records = [
        {
            "event_id": event_id,
            "account_id": account,
            "meter_id": meter,
            "quantity": D(str(q)),
            "timestamp": ts,
            "model_id": "m1",
            "dimensions": "{}",
            "billable": True,
            "hour": ts.replace(minute=0, second=0, microsecond=0),
            "event_date": ts.date(),
            "is_late": False,
            "status": "ok",
            "ingested_at": START,
        }
        for event_id, account, meter, ts, q in rows
    ]
    return schemas.conform(pl.DataFrame(records, infer_schema_length=None), schemas.EVENTS)


def canonical(d: dict) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def test_fixture_prices_are_one_and_two_per_token(tmp_path: Path) -> None:
    folder = write_books(tmp_path)
    result = evaluate(folder, hourly_rows([("solo", "input_tokens", 0, 3)]), at(1))
    assert row(result.state, "solo")["spend"] == D(3)
    result = evaluate(folder, hourly_rows([("solo", "output_tokens", 0, 3)]), at(1))
    assert row(result.state, "solo")["spend"] == D(6)
