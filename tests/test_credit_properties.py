"""Property: prepaid credit is drawn only by issued invoices, in issue order, never beyond the
grant; rebuilding drafts never changes the ledger (issue 11 item 14, invoicing.credit). Credit
grants (ADR 0016): never overdrawn, burned in priority order, the ledger adds up."""

from __future__ import annotations

from decimal import Decimal as D

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usagebox_pipelines.invoicing import credit
from usagebox_pipelines.months import month_bounds
from usagebox_pipelines.pricing.accounts import Account, Accounts, CreditGrant
from usagebox_pipelines.pricing.contract import contract_lines
from usagebox_pipelines.pricing.money import round_money
from usagebox_pipelines.schemas import CREDIT_GRANT_LEDGER, RATED_USAGE, conform

ACCOUNTS = Accounts(
    listed={
        "a-credit": Account("a-credit", "A", "USD", "standard", 30, prepaid_credit=D("30.00")),
        "a-commit": Account(
            "a-commit", "B", "USD", "standard", 30, minimum_commit=D("10"), prepaid_credit=D("25")
        ),
        "a-plain": Account("a-plain", "C", "USD", "standard", 30),
    }
)
MONTHS = ["2026-08", "2026-09", "2026-10", "2026-11", "2026-12"]
LINES = pl.Schema({"account_id": pl.String, "period": pl.String, "kind": pl.String,
                   "unit": pl.String, "amount": pl.Decimal(18, 2)})  # fmt: skip
amounts = st.decimals(min_value=0, max_value=40, places=3, allow_nan=False)
ops = st.lists(
    st.tuples(
        st.sampled_from(["draft", "issue"]),
        st.sampled_from(MONTHS),
        st.fixed_dictionaries({a: amounts for a in ACCOUNTS.ids()}),
    ),
    min_size=1,
    max_size=12,
)


def _usage(period: str, spend: dict[str, D]) -> pl.DataFrame:
    rows = [
        {"period": period, "account_id": a, "line_kind": "usage", "meter_id": "m", "rate_id": "r",
         "price_version": "v", "unit_price": D(1), "per": D(1), "price_model": "per_unit",
         "currency": "USD", "quantity": q, "amount": q}
        for a, q in spend.items()
    ]  # fmt: skip
    return conform(pl.DataFrame(rows, infer_schema_length=None), RATED_USAGE)


def _credit_lines(period: str, spend: dict[str, D], opening: dict[str, D]) -> pl.DataFrame:
    """What a document of `period` applies given `opening` (the close's own contract path)."""
    contract, _ = contract_lines(_usage(period, spend), period, ACCOUNTS, opening)
    rows = contract.filter(pl.col("line_kind") == "credit")
    return pl.DataFrame(
        {"account_id": rows["account_id"], "period": rows["period"], "kind": "credit",
         "unit": "credit", "amount": rows["amount"]},
        schema=LINES,
    )  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops)
def test_credit_is_drawn_only_by_issued_invoices_in_issue_order_never_beyond_the_grant(ops):
    grants = credit.grant_totals(credit.grants(ACCOUNTS))
    issued = pl.DataFrame(schema=LINES)
    closes: list[str] = []
    for op, month, spend in ops:
        if month in closes:
            continue  # an issued month never changes (its restatements carry no credit)
        ledger_before = credit.ledger(grants, closes, issued)
        opening = credit.balances(credit.grants(ACCOUNTS), issued)
        left = {a: sum(b.values(), D(0)) for a, b in opening.items()}
        lines = _credit_lines(month, spend, opening)
        for account_id, take in credit.drawn(lines).items():
            assert take <= left[account_id]  # a document never applies more than is left
        if op == "draft":
            # a draft shows its credit but never draws: balances and ledger are unchanged
            assert credit.ledger(grants, closes, issued).equals(ledger_before)
            assert credit.balances(credit.grants(ACCOUNTS), issued) == opening
            continue
        issued = pl.concat([issued, lines])
        closes.append(month)
        ledger = credit.ledger(grants, closes, issued)
        # issue order: the new close's opening is exactly the balance left by earlier closes
        new = ledger.filter(pl.col("period") == month)
        assert dict(zip(new["account_id"], new["opening"], strict=True)) == left
        # the rows of earlier closes are untouched by a later one
        assert ledger.filter(pl.col("period") != month).equals(ledger_before)
    drawn = credit.drawn(issued)
    for account_id, grant in grants.items():
        assert D(0) <= drawn.get(account_id, D(0)) <= grant
    ledger = credit.ledger(grants, closes, issued)
    for account_id, rows in ledger.group_by("account_id"):
        (account_id,) = account_id
        order = rows.with_columns(
            pos=pl.col("period").replace_strict({p: i for i, p in enumerate(closes)})
        ).sort("pos")
        openings, closings = order["opening"].to_list(), order["closing"].to_list()
        assert openings[0] == grants.get(account_id, D(0))
        assert openings[1:] == closings[:-1] and all(c >= 0 for c in closings)


# --------------------------------------------------------------------------- credit grants

GRANT_MONTHS = ["2026-05", "2026-06", "2026-07", "2026-08"]
starts = st.sampled_from([None, *(month_bounds(m)[0] for m in GRANT_MONTHS)])
grant_specs = st.lists(
    st.tuples(
        st.decimals(min_value=0, max_value=50, places=2, allow_nan=False),
        st.integers(min_value=0, max_value=2),
        starts,
        starts,
        st.booleans(),
    ),
    min_size=1,
    max_size=4,
)
spend = st.decimals(min_value=0, max_value=40, places=3, allow_nan=False)
grant_ops = st.lists(st.tuples(st.sampled_from(GRANT_MONTHS), spend, spend), min_size=1, max_size=6)


def _grant_account(specs: list) -> Accounts:
    grants = []
    for i, (amount, priority, effective, expires, restricted) in enumerate(specs):
        if effective is not None and expires is not None and expires <= effective:
            expires = None
        models = ("m1",) if restricted else ()
        grants.append(CreditGrant(f"g{i}", amount, effective, expires, priority, (), models))
    account = Account("a", "A", "USD", "standard", 30, credit_grants=tuple(grants))
    return Accounts(listed={"a": account})


def _two_lines(period: str, m1: D, m2: D) -> pl.DataFrame:
    rows = [
        {"period": period, "account_id": "a", "line_kind": "usage", "meter_id": "m",
         "model_id": model, "rate_id": model, "price_version": "v", "unit_price": D(1),
         "per": D(1), "price_model": "per_unit", "currency": "USD", "quantity": q, "amount": q}
        for model, q in (("m1", m1), ("m2", m2))
    ]  # fmt: skip
    return conform(pl.DataFrame(rows, infer_schema_length=None), RATED_USAGE)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=grant_specs, ops=grant_ops)
def test_grants_are_never_overdrawn_and_burn_in_priority_order_across_any_closes(specs, ops):
    """Invariants, over any sequence of closes (months in any order, each closed once):
    grants never overdrawn — Σ draws per grant ≤ its amount, no draw above its balance, none
    outside [effective, expires), all credit ≤ what is due; draw order respects priority — an
    unrestricted grant draws only when every usable unrestricted grant before it in burn order
    is used up; the ledger's draw rows add up to the issued draws, its balances never < 0."""
    accounts = _grant_account(specs)
    account = accounts.get("a")
    grants = credit.grants(accounts)
    issued = pl.DataFrame(schema=GRANT_LINES)
    closes: list[str] = []
    stored = pl.DataFrame(schema=CREDIT_GRANT_LEDGER)
    for n, (month, m1, m2) in enumerate(ops):
        if month in closes:
            continue
        opening = credit.balances(grants, issued)["a"]
        rated = _two_lines(month, m1, m2)
        contract, closing = contract_lines(rated, month, accounts, {"a": opening})
        rows = contract.filter(pl.col("line_kind") == "credit")
        took = {
            r.removeprefix("credit_grant:"): -a
            for r, a in rows.select("rate_id", "amount").iter_rows()
        }
        start, end = month_bounds(month)
        due = sum(contract.filter(pl.col("line_kind") != "credit")["amount"], D(0))
        due += sum(rated.select(round_money(pl.col("amount"), 2)).to_series(), D(0))
        assert sum(took.values(), D(0)) <= max(due, D(0))
        ordered = sorted(account.grants, key=lambda g: g.burn_key)
        for g in ordered:
            assert took.get(g.grant_id, D(0)) <= opening[g.grant_id]
            if g.grant_id in took:
                assert g.usable_in(start, end)
        open_ = [g for g in ordered if not g.restricted and g.usable_in(start, end)]
        for i, g in enumerate(open_):
            if took.get(g.grant_id, D(0)) > 0:
                assert all(closing["a"][e.grant_id] == 0 for e in open_[:i])
        lines = pl.DataFrame(
            [
                (f"UBX-{n}-{r}", "a", month, "credit", r, a)
                for r, a in rows.select("rate_id", "amount").iter_rows()
            ],
            schema=GRANT_LINES,
            orient="row",
        )
        issued = pl.concat([issued, lines])
        closes.append(month)
        new = credit.grant_ledger_rows(grants, closes, issued, stored, month)
        stored = pl.concat([stored, new])
        assert credit.grant_ledger_rows(grants, closes, issued, stored, month).is_empty()
    used = credit.drawn_by_grant(issued).get("a", {})
    for g in account.grants:
        assert D(0) <= used.get(g.grant_id, D(0)) <= g.amount
    draws = stored.filter(pl.col("kind") == "draw")
    assert draws["balance_after"].min() is None or draws["balance_after"].min() >= 0
    by_grant = dict(draws.group_by("grant_id").agg(pl.col("amount").sum()).iter_rows())
    assert {k: -v for k, v in by_grant.items()} == {k: v for k, v in used.items() if v}


GRANT_LINES = pl.Schema({"invoice_number": pl.String, "account_id": pl.String,
                         "period": pl.String, "kind": pl.String, "unit": pl.String,
                         "amount": pl.Decimal(18, 2)})  # fmt: skip
