"""accounts.yaml: defaults for unlisted ids, inheritance down the hierarchy, strict errors."""

from __future__ import annotations

from decimal import Decimal as D
from pathlib import Path

import pytest

from usagebox_pipelines.pricing.accounts import Accounts, AccountsError, load_accounts

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "pricebooks" / "rating"


def test_shipped_accounts_cover_acct_001_to_050() -> None:
    accounts = load_accounts(ROOT / "pricebooks")
    assert accounts.ids() == [f"acct-{i:03d}" for i in range(1, 51)]
    for account_id in accounts.ids():
        account = accounts.get(account_id)
        assert account.name and account.email and len(account.address) >= 2
        assert (account.currency, account.pricebook) == ("USD", "standard")


def test_shipped_accounts_exercise_every_contract_term() -> None:
    accounts = load_accounts(ROOT / "pricebooks")
    listed = [accounts.get(a) for a in accounts.ids()]
    assert accounts.children("acct-001") == ["acct-002", "acct-003"]
    assert accounts.get("acct-002").discount_pct == D("12.5")  # inherited from the org
    assert sum(a.discount_pct > 0 for a in listed) >= 3
    assert sum(a.minimum_commit is not None for a in listed) >= 2
    assert accounts.get("acct-042").minimum_commit == D("250.00")
    assert accounts.get("acct-004").prepaid_credit is not None
    budgets = {a.account_id: a.budget for a in listed if a.budget is not None}
    assert budgets["acct-021"].enforcement == "HARD"
    assert budgets["acct-001"].caps and budgets["acct-014"].soft_pct == 80


def test_unlisted_account_gets_the_defaults_block() -> None:
    accounts = load_accounts(FIXTURES)
    account = accounts.get("someone-new")
    assert (account.pricebook, account.currency, account.payment_terms_days) == (
        "simple",
        "USD",
        30,
    )
    assert account.discount_pct == 0 and account.minimum_commit is None and not account.listed


def test_child_inherits_unset_settings_but_not_commitments() -> None:
    accounts = load_accounts(FIXTURES)
    team = accounts.get("team")
    assert (team.discount_pct, team.payment_terms_days, team.parent) == (D(20), 45, "org")
    assert accounts.root("team") == "org" and accounts.ancestors("team") == ["org"]
    assert accounts.get("a-all").prepaid_credit == D("30.00")


def test_missing_file_means_defaults_for_everyone(tmp_path: Path) -> None:
    accounts = load_accounts(tmp_path)
    assert accounts.ids() == [] and accounts.get("x").pricebook == "standard"
    assert isinstance(accounts, Accounts)


INVALID = [
    ("unknown top key", "acounts: {}\n", r"acounts: unknown key"),
    ("unknown account key", "accounts:\n  a: {name: A, colour: red}\n", r"accounts\.a\.colour"),
    ("bad decimal", "accounts:\n  a: {discount_pct: 'ten'}\n", r"accounts\.a\.discount_pct: not a"),
    ("float money", "accounts:\n  a: {minimum_commit: 100.5}\n", r"minimum_commit: write decimals"),
    ("negative credit", "accounts:\n  a: {prepaid_credit: '-1'}\n", r"prepaid_credit: must be at"),
    (
        "discount over 100",
        "accounts:\n  a: {discount_pct: '101'}\n",
        r"discount_pct: must be at most",
    ),
    (
        "unknown parent",
        "accounts:\n  a: {parent: b}\n",
        r"accounts\.a\.parent: unknown parent account 'b'",
    ),
    (
        "parent cycle",
        "accounts:\n  a: {parent: b}\n  b: {parent: c}\n  c: {parent: a}\n",
        r"accounts\.a\.parent: cycle in parent chain: a -> b -> c -> a",
    ),
    ("self parent", "accounts:\n  a: {parent: a}\n", r"parent: cycle in parent chain: a -> a"),
    (
        "child currency",
        "accounts:\n  a: {currency: USD}\n  b: {parent: a, currency: EUR}\n",
        r"accounts\.b\.currency: EUR differs from parent a",
    ),
    ("unknown currency", "accounts:\n  a: {currency: ABC}\n", r"currency: unknown currency 'ABC'"),
    ("bad email", "accounts:\n  a: {email: nobody}\n", r"accounts\.a\.email: not an email"),
    (
        "budget no monthly",
        "accounts:\n  a: {budget: {soft_pct: 50}}\n",
        r"budget\.monthly: required",
    ),
    (
        "budget enforcement",
        "accounts:\n  a: {budget: {monthly: '10', enforcement: MAYBE}}\n",
        r"budget\.enforcement: must be HARD or SOFT",
    ),
    (
        "budget soft over hard",
        "accounts:\n  a: {budget: {monthly: '10', soft_pct: 90, hard_pct: 80}}\n",
        r"budget\.soft_pct: must not exceed hard_pct",
    ),
    (
        "cap without target",
        "accounts:\n  a: {budget: {monthly: '10', caps: [{monthly: '5'}]}}\n",
        r"budget\.caps\[0\]: a cap needs meter_id and/or model_id",
    ),
    ("bad defaults", "defaults: {pricebook: standard, region: eu}\n", r"defaults\.region: unknown"),
    ("duplicate account", "accounts:\n  a: {}\n  a: {}\n", r"invalid YAML .*duplicate key 'a'"),
]


@pytest.mark.parametrize(("text", "pattern"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_accounts_name_file_and_field(tmp_path: Path, text: str, pattern: str) -> None:
    (tmp_path / "accounts.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(AccountsError, match=r"accounts\.yaml: (\S+\.)?" + pattern):
        load_accounts(tmp_path)


def test_budget_defaults_are_80_and_100_percent(tmp_path: Path) -> None:
    (tmp_path / "accounts.yaml").write_text("accounts:\n  a: {budget: {monthly: '50.00'}}\n")
    budget = load_accounts(tmp_path).get("a").budget
    assert budget is not None
    assert (budget.monthly, budget.soft_pct, budget.hard_pct) == (D("50.00"), 80, 100)
    assert budget.enforcement == "SOFT" and budget.caps == ()


def test_after_hard_stop_policy_is_validated_naming_file_and_field(tmp_path) -> None:
    from usagebox_pipelines.pricing.accounts import AccountsError, load_accounts

    folder = tmp_path / "pb"
    folder.mkdir()
    body = "accounts:\n  acct-x:\n    name: X\n    after_hard_stop: {}\n"
    (folder / "accounts.yaml").write_text(body.format("bill"))
    assert load_accounts(folder).get("acct-x").after_hard_stop == "bill"
    assert load_accounts(folder).get("unlisted").after_hard_stop == "bill"
    (folder / "accounts.yaml").write_text(body.format("waive"))
    assert load_accounts(folder).get("acct-x").after_hard_stop == "waive"
    for bad, why in (("refund", "must be one of bill, waive"), ("Waive", "got 'Waive'")):
        (folder / "accounts.yaml").write_text(body.format(bad))
        with pytest.raises(AccountsError, match=rf"accounts.yaml: .*after_hard_stop: .*{why}"):
            load_accounts(folder)
