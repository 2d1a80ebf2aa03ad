"""Properties over generated demo usage: spend_state is priced exactly like the invoice.

* MTD spend of completed hours = the draft invoice's charges for that usage (its usage lines
  and discount line), exactly and as rounded on the invoice. Minimum true-up and prepaid
  credit are excluded on purpose: they are how usage is paid, not what it costs.
* Every reported crossing hour is exact: rating the usage before that hour stays below the
  threshold, rating it through the end of that hour reaches it.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usagebox_demo import generate_usage
from usagebox_pipelines import schemas
from usagebox_pipelines.config import DEFAULT_PRICEBOOKS
from usagebox_pipelines.guardrails import spend
from usagebox_pipelines.guardrails.budgets import BudgetTree, build_budget_tree
from usagebox_pipelines.guardrails.state import evaluate_spend
from usagebox_pipelines.invoicing.lines import build_draft_invoices
from usagebox_pipelines.pricing import Accounts, load_accounts, load_pricebooks, rate_usage
from usagebox_pipelines.pricing.accounts import Budget

PERIOD = "2026-10"
BOOKS = load_pricebooks(DEFAULT_PRICEBOOKS)
ACCOUNTS = load_accounts(DEFAULT_PRICEBOOKS)
HOUR = timedelta(hours=1)
FAST = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Each example re-rates two prefixes per crossing found (about 12): keep it to a few.
SLOW = settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def demo_hourly(seed: int, n_events: int = 400, n_accounts: int = 6) -> pl.DataFrame:
    events = generate_usage(PERIOD, seed, n_events, n_accounts)
    rolled = (
        events.with_columns(hour=pl.col("timestamp").dt.truncate("1h"), billable=pl.lit(True))
        .group_by(*schemas.ROLLUP_KEYS, "dimensions", "hour")
        .agg(sum=pl.col("quantity").sum(), count=pl.len())
    )
    return schemas.conform(rolled, schemas.USAGE_HOURLY).with_columns(at=pl.col("hour"))


def evaluate(hourly: pl.DataFrame, accounts: Accounts, now: datetime):
    tree = build_budget_tree(accounts, hourly.get_column("account_id").unique().to_list())
    return tree, evaluate_spend(hourly, tree, PERIOD, now, BOOKS, accounts).state


def invoice_charges(hourly: pl.DataFrame, accounts: Accounts) -> dict[str, tuple[D, D]]:
    """Per account: (exact, rounded) sum of the draft invoice's usage and discount lines."""
    rated = rate_usage(hourly.drop("at"), PERIOD, BOOKS, accounts).rated
    _, lines = build_draft_invoices(rated, accounts, PERIOD)
    sums = (
        lines.filter(pl.col("kind").is_in(["usage", "discount"]))
        .group_by("account_id")
        .agg(pl.col("exact_amount").sum(), pl.col("amount").sum())
    )
    return {a: (e, r) for a, e, r in sums.iter_rows()}


def subtree_sum(tree: BudgetTree, account: str, per_account: dict, i: int) -> D:
    return sum((per_account.get(m, (D(0), D(0)))[i] for m in tree.subtree(account)), D(0))


@FAST
@given(seed=st.integers(0, 10_000), day=st.integers(1, 31), hour=st.integers(0, 23))
def test_mtd_spend_equals_the_draft_invoice_for_completed_hours(
    seed: int, day: int, hour: int
) -> None:
    now = datetime(2026, 10, day, hour, tzinfo=UTC) + HOUR
    hourly = demo_hourly(seed)
    tree, state = evaluate(hourly, ACCOUNTS, now)
    charges = invoice_charges(hourly.filter(pl.col("hour") < now), ACCOUNTS)
    for row in state.filter(pl.col("scope") == "budget").iter_rows(named=True):
        account = row["account_id"]
        assert row["own_spend"] == charges.get(account, (D(0), D(0)))[0], account
        assert row["spend"] == subtree_sum(tree, account, charges, 0), account
        assert row["billed"] == subtree_sum(tree, account, charges, 1), account


def with_small_budgets(accounts: Accounts, monthly: D) -> Accounts:
    listed = {
        a: dataclasses.replace(acct, budget=Budget(monthly=monthly, soft_pct=D(50)))
        for a, acct in accounts.listed.items()
    }
    return Accounts(accounts.defaults, listed, accounts.file)


@SLOW
@given(seed=st.integers(0, 10_000), budget=st.sampled_from(["3", "7.5", "11.11"]))
def test_crossing_hours_are_exact(seed: int, budget: str) -> None:
    accounts = with_small_budgets(ACCOUNTS, D(budget))
    hourly = demo_hourly(seed)
    tree, state = evaluate(hourly, accounts, datetime(2026, 11, 1, tzinfo=UTC))
    checked = 0
    for row in state.filter(pl.col("scope") == "budget").iter_rows(named=True):
        for crossed, threshold in (
            (row["soft_crossed_at"], row["soft_threshold"]),
            (row["hard_crossed_at"], row["hard_threshold"]),
        ):
            if crossed is None:
                assert row["spend"] < threshold
                continue
            before = invoice_charges(hourly.filter(pl.col("hour") < crossed), accounts)
            after = invoice_charges(hourly.filter(pl.col("hour") < crossed + HOUR), accounts)
            account = row["account_id"]
            assert subtree_sum(tree, account, before, 0) < threshold, (account, crossed)
            assert subtree_sum(tree, account, after, 0) >= threshold, (account, crossed)
            checked += 1
    assert checked > 0


@SLOW
@given(seed=st.integers(0, 10_000), shard_rows=st.sampled_from([1, 37, 400]))
def test_account_shards_give_the_same_state(seed: int, shard_rows: int) -> None:
    """Rating in shards of whole accounts (memory bound) changes no number of the state."""
    accounts = with_small_budgets(ACCOUNTS, D("7.5"))
    hourly = demo_hourly(seed, n_events=600, n_accounts=8)
    now = datetime(2026, 10, 20, 5, 30, tzinfo=UTC)
    tree = build_budget_tree(accounts, hourly.get_column("account_id").unique().to_list())
    whole = evaluate_spend(hourly, tree, PERIOD, now, BOOKS, accounts)
    saved = spend.SHARD_ROWS
    spend.SHARD_ROWS = shard_rows
    try:
        sharded = evaluate_spend(hourly, tree, PERIOD, now, BOOKS, accounts)
    finally:
        spend.SHARD_ROWS = saved
    assert sharded.state.equals(whole.state)
    assert sharded.steps.equals(whole.steps)
    assert sharded.hourly.equals(whole.hourly)
    assert whole.steps.height > 0  # crossings were searched (bisection through spend_at)
