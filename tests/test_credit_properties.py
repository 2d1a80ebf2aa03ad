"""Property: prepaid credit is drawn only by issued invoices, in issue order, never beyond the
grant; rebuilding drafts never changes the ledger (issue 11 item 14, invoicing.credit)."""

from __future__ import annotations

from decimal import Decimal as D

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usagebox_pipelines.invoicing import credit
from usagebox_pipelines.pricing.accounts import Account, Accounts
from usagebox_pipelines.pricing.contract import contract_lines
from usagebox_pipelines.schemas import RATED_USAGE, conform

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
