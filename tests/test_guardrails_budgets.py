"""Budgets, caps and allocations: the limits built from accounts.yaml and their validation."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D
from pathlib import Path

import polars as pl
import pytest

from tests.test_guardrails_fixtures import write_books
from usagebox_pipelines.config import DEFAULT_PRICEBOOKS
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.guardrails.budgets import BudgetError, build_budget_tree
from usagebox_pipelines.pricing import Accounts, load_accounts


def test_limits_cover_subtrees_with_caps_and_levels(tmp_path: Path) -> None:
    tree = build_budget_tree(load_accounts(write_books(tmp_path)), ["stranger"])
    assert tree.subtree("org") == ["org", "sibling", "team"]
    assert tree.level("team") == 1 and tree.root("team") == "org" and tree.level("stranger") == 0
    by_key = {lim.key: lim for lim in tree.limits}
    assert by_key["team|budget"].monthly == D(100) and by_key["team|budget"].enforcement == "HARD"
    assert by_key["sibling|budget"].monthly is None
    assert by_key["stranger|budget"].monthly is None  # unlisted but active: a row, no budget
    cap = by_key["disc|cap:output_tokens:*"]
    assert (cap.soft_threshold, cap.hard_threshold, cap.hard_status) == (16, 20, "hard_alert")
    order = [lim.account_id for lim in tree.limits]
    assert order.index("org") < order.index("team")  # parents before children
    members = tree.membership().filter(pl.col("limit_key") == "org|budget")
    assert sorted(members["account_id"].to_list()) == ["org", "sibling", "team"]


def test_demo_accounts_build_a_tree() -> None:
    tree = build_budget_tree(load_accounts(DEFAULT_PRICEBOOKS))
    assert tree.subtree("acct-001") == ["acct-001", "acct-002", "acct-003"]
    assert tree.limit("acct-021").hard_status == "hard_stop"
    assert tree.limit("acct-014").soft_threshold == D(48)
    assert tree.limit("acct-001", "cap:*:claude-opus-4-1").monthly == D(80)


@pytest.mark.parametrize(
    ("accounts_yaml", "message"),
    [
        (
            "accounts:\n  org: {budget: {monthly: '100'}}\n"
            "  team: {parent: org, budget: {monthly: '150'}}\n",
            r"accounts\.team\.budget\.monthly: allocation 150 exceeds the budget of its "
            r"parent org \(100\)",
        ),
        (
            # the nearest *budgeted* ancestor counts: mid has no budget of its own
            "accounts:\n  org: {budget: {monthly: '100'}}\n  mid: {parent: org}\n"
            "  user: {parent: mid, budget: {monthly: '101'}}\n",
            r"accounts\.user\.budget\.monthly: allocation 101 exceeds .* org",
        ),
        (
            "accounts:\n  a: {budget: {monthly: '10', caps: [{model_id: m1, monthly: '11'}]}}\n",
            r"accounts\.a\.budget\.caps\[0\]\.monthly: cap 11 exceeds",
        ),
    ],
    ids=["child-above-parent", "grandchild-above-org", "cap-above-budget"],
)
def test_allocation_errors_name_the_field(tmp_path: Path, accounts_yaml: str, message: str) -> None:
    accounts = load_accounts(write_books(tmp_path, accounts_yaml))
    with pytest.raises(BudgetError, match=message):
        build_budget_tree(accounts)


def test_children_may_share_a_parent_budget_beyond_its_total(tmp_path: Path) -> None:
    """Over-subscription is allowed: the parent's remainder still bounds every child."""
    yaml = (
        "accounts:\n  org: {budget: {monthly: '100'}}\n"
        "  a: {parent: org, budget: {monthly: '80'}}\n  b: {parent: org, budget: {monthly: '80'}}\n"
    )
    assert build_budget_tree(load_accounts(write_books(tmp_path, yaml))).limit("b").monthly == 80


@pytest.mark.parametrize(
    ("accounts_yaml", "message"),
    [
        ("accounts:\n  a: {parent: nobody}\n", r"accounts\.a\.parent: unknown parent account"),
        (
            "accounts:\n  a: {parent: b}\n  b: {parent: a}\n",
            r"accounts\.a\.parent: cycle in parent chain: a -> b -> a",
        ),
    ],
    ids=["unknown-parent", "cycle"],
)
def test_yaml_hierarchy_errors_are_clear(tmp_path: Path, accounts_yaml: str, message: str) -> None:
    with pytest.raises(UsageboxError, match=message):
        load_accounts(write_books(tmp_path, accounts_yaml))


def test_hierarchy_built_in_code_is_checked_too(tmp_path: Path) -> None:
    """Accounts assembled without the YAML loader still get clear errors, never a hang."""
    base = load_accounts(write_books(tmp_path))
    looped = {**base.listed, "org": replace(base.listed["org"], parent="team")}
    with pytest.raises(BudgetError, match=r"cycle in parent chain: org -> team -> org"):
        build_budget_tree(Accounts(base.defaults, looped, base.file))
    orphan = {**base.listed, "team": replace(base.listed["team"], parent="ghost")}
    with pytest.raises(BudgetError, match=r"accounts\.team\.parent: unknown parent account"):
        build_budget_tree(Accounts(base.defaults, orphan, base.file))
