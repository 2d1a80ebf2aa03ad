"""Credit grants (ADR 0016): parsing, the burn order, expiry, `applies_to`, the invoice line and
the append-only grant ledger, each against hand-computed numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path

import polars as pl
import pytest

from usagebox_pipelines.invoicing import credit
from usagebox_pipelines.invoicing.lines import build_invoice_lines
from usagebox_pipelines.invoicing.stamps import credit_map, credit_stamp
from usagebox_pipelines.pricing.accounts import (
    PREPAID_GRANT,
    Account,
    Accounts,
    AccountsError,
    CreditGrant,
    load_accounts,
)
from usagebox_pipelines.pricing.contract import contract_lines
from usagebox_pipelines.schemas import CREDIT_GRANT_LEDGER, RATED_USAGE, conform


def accounts_from(tmp_path: Path, body: str) -> Accounts:
    (tmp_path / "accounts.yaml").write_text(body)
    return load_accounts(tmp_path)


def usage(period: str, account_id: str, lines: list[tuple[str, str, str]]) -> pl.DataFrame:
    """RATED_USAGE usage rows: (meter, model, amount) per line."""
    rows = [
        {"period": period, "account_id": account_id, "line_kind": "usage", "meter_id": m,
         "model_id": model, "rate_id": f"{m}@{model}", "price_version": "v", "unit_price": D(1),
         "per": D(1), "price_model": "per_unit", "currency": "USD", "quantity": D(a),
         "amount": D(a), "pricebook": "standard"}
        for m, model, a in lines
    ]  # fmt: skip
    if not rows:
        return pl.DataFrame(schema=RATED_USAGE)
    return conform(pl.DataFrame(rows, infer_schema_length=None), RATED_USAGE)


def draws(contract: pl.DataFrame) -> list[tuple[str, str]]:
    """(rate_id, amount) of the credit rows, in order."""
    rows = contract.filter(pl.col("line_kind") == "credit")
    return [(r, f"{a:.2f}") for r, a in rows.select("rate_id", "amount").iter_rows()]


# --------------------------------------------------------------------------- accounts.yaml

GRANTS_YAML = """
accounts:
  acct-g:
    currency: USD
    credit_grants:
      - {id: paid-2026, amount: "100.00", priority: 1}
      - {id: promo, amount: "30", effective: 2026-01-01, expires: "2026-07-01T00:00:00Z"}
      - id: gpt-only
        amount: "40.00"
        applies_to: {models: [gpt-4.1]}
"""


def test_grants_parse_with_defaults_and_prepaid_credit_is_the_grant_prepaid_credit(tmp_path):
    accounts = accounts_from(tmp_path, GRANTS_YAML)
    paid, promo, gpt = accounts.get("acct-g").grants
    assert paid == CreditGrant("paid-2026", D("100.00"), priority=1)
    assert promo.effective == datetime(2026, 1, 1, tzinfo=UTC)
    assert promo.expires == datetime(2026, 7, 1, tzinfo=UTC) and promo.priority == 0
    assert gpt.models == ("gpt-4.1",) and gpt.meters == () and gpt.restricted
    legacy = Account("a", "A", "USD", "standard", 30, prepaid_credit=D("30.00"))
    assert legacy.grants == (CreditGrant(PREPAID_GRANT, D("30.00")),)


@pytest.mark.parametrize(
    ("grants", "message"),
    [
        ('[{id: a, amount: "1"}, {id: a, amount: "2"}]',
         "credit_grants[1].id: duplicate grant id 'a'"),
        ('[{id: a, amount: "-5"}]', "credit_grants[0].amount: must be at least 0"),
        ('[{id: a, amount: "1.005"}]', "credit_grants[0].amount: at most 2 decimal places"),
        ('[{id: a, amount: "1", effective: 2026-07-01, expires: 2026-07-01}]',
         "credit_grants[0].expires: must be after effective"),
        ('[{id: a, amount: "1", expires: "2026-07-01T00:00:00"}]',
         "credit_grants[0].expires: needs a UTC offset"),
        ('[{id: a, amount: "1", applies_to: {}}]',
         "credit_grants[0].applies_to: needs meters and/or models"),
        ('[{id: a, amount: "1", applies_to: {models: []}}]',
         "credit_grants[0].applies_to.models: must be a non-empty list"),
        ('[{id: a, amount: "1", priority: "high"}]',
         "credit_grants[0].priority: must be an integer"),
        ('[{id: a}]', "credit_grants[0].amount: required"),
        ('[{amount: "1"}]', "credit_grants[0].id: required"),
    ],
)  # fmt: skip
def test_invalid_grants_are_refused_naming_file_and_field(tmp_path, grants, message):
    with pytest.raises(AccountsError) as err:
        accounts_from(tmp_path, f"accounts:\n  acct-001:\n    credit_grants: {grants}\n")
    assert f"accounts.yaml: accounts.acct-001.{message}" in str(err.value)


def test_a_grant_named_prepaid_credit_beside_prepaid_credit_is_refused(tmp_path):
    body = 'accounts:\n  acct-001:\n    prepaid_credit: "5"\n    credit_grants: [{id: prepaid_credit, amount: "1"}]\n'  # noqa: E501
    with pytest.raises(AccountsError, match=r"credit_grants\[0\]\.id: also set by prepaid_credit"):
        accounts_from(tmp_path, body)


# --------------------------------------------------------------------------- hand-computed


def test_two_grants_burn_lower_priority_first(tmp_path):
    """Usage 120.00; promo 30 (priority 0) burns before paid-2026 100 (priority 1):
    promo 30.00 → 0.00 left, paid 90.00 → 10.00 left, nothing due."""
    accounts = accounts_from(tmp_path, GRANTS_YAML)
    rows, closing = contract_lines(
        usage("2026-03", "acct-g", [("input_tokens", "gpt-4o", "120.00")]), "2026-03", accounts
    )
    assert draws(rows) == [("credit_grant:promo", "-30.00"), ("credit_grant:paid-2026", "-90.00")]
    assert closing["acct-g"] == {"paid-2026": D("10.00"), "promo": D(0), "gpt-only": D("40.00")}


def test_a_grant_pays_the_month_it_expires_in_and_not_the_month_after(tmp_path):
    """promo expires 2026-07-01T00:00Z: June [06-01, 07-01) overlaps [01-01, 07-01), July does
    not. June usage 10.00 → promo 10.00 (20.00 left); July usage 10.00 → paid-2026 pays it, the
    20.00 left on promo is not used."""
    accounts = accounts_from(tmp_path, GRANTS_YAML)
    june, after_june = contract_lines(
        usage("2026-06", "acct-g", [("input_tokens", "gpt-4o", "10.00")]), "2026-06", accounts
    )
    assert draws(june) == [("credit_grant:promo", "-10.00")]
    july, after_july = contract_lines(
        usage("2026-07", "acct-g", [("input_tokens", "gpt-4o", "10.00")]),
        "2026-07",
        accounts,
        after_june,
    )
    assert draws(july) == [("credit_grant:paid-2026", "-10.00")]
    assert after_july["acct-g"]["promo"] == D("20.00")  # kept, but never used again


def test_a_grant_that_starts_mid_month_pays_that_month_and_none_before(tmp_path):
    body = 'accounts:\n  a:\n    credit_grants: [{id: later, amount: "5", effective: "2026-05-15T12:00:00Z"}]\n'  # noqa: E501
    accounts = accounts_from(tmp_path, body)
    for period, expected in (("2026-04", []), ("2026-05", [("credit_grant:later", "-5.00")])):
        rows, _ = contract_lines(usage(period, "a", [("m", "x", "9")]), period, accounts)
        assert draws(rows) == expected


def test_a_grant_for_one_model_pays_only_that_models_lines(tmp_path):
    """gpt-only (40, models [gpt-4.1]) pays the 25.00 of gpt-4.1 lines only; the claude 60.00
    is paid by paid-2026 (priority 1). Order by priority: promo is outside its dates here."""
    accounts = accounts_from(tmp_path, GRANTS_YAML)
    lines = [("input_tokens", "gpt-4.1", "15.00"), ("output_tokens", "gpt-4.1", "10.00"),
             ("output_tokens", "claude-opus-4-1", "60.00")]  # fmt: skip
    rows, closing = contract_lines(usage("2026-09", "acct-g", lines), "2026-09", accounts)
    assert draws(rows) == [
        ("credit_grant:gpt-only", "-25.00"),
        ("credit_grant:paid-2026", "-60.00"),
    ]
    assert closing["acct-g"]["gpt-only"] == D("15.00")


def test_zero_usage_draws_nothing_and_keeps_every_balance(tmp_path):
    accounts = accounts_from(tmp_path, GRANTS_YAML)
    rows, closing = contract_lines(usage("2026-03", "acct-g", []), "2026-03", accounts)
    assert draws(rows) == []
    assert closing["acct-g"] == {"paid-2026": D("100.00"), "promo": D(30), "gpt-only": D("40.00")}


def test_a_grant_used_up_exactly_pays_nothing_the_month_after(tmp_path):
    body = 'accounts:\n  a:\n    credit_grants: [{id: pack, amount: "75.00"}]\n'
    accounts = accounts_from(tmp_path, body)
    first, left = contract_lines(usage("2026-01", "a", [("m", "x", "75.00")]), "2026-01", accounts)
    assert draws(first) == [("credit_grant:pack", "-75.00")] and left["a"]["pack"] == D("0.00")
    second, _ = contract_lines(
        usage("2026-02", "a", [("m", "x", "10.00")]), "2026-02", accounts, left
    )
    assert draws(second) == []


def test_openmeter_draw_down_example_priority_then_expiry():
    """OpenMeter (Kong Konnect Metering & Billing), "Draw-down example":
    https://developer.konghq.com/metering-and-billing/credits/consumption-and-expiration/
    and the burn order of https://openmeter.io/docs/monetize/entitlements/grant .
    Grants A (priority 1, expires T10, 50), B (priority 1, expires T20, 80), C (priority 2,
    never, 100); a 90 charge consumes A 50, B 40, C 0."""
    t10, t20 = datetime(2026, 10, 10, tzinfo=UTC), datetime(2026, 10, 20, tzinfo=UTC)
    grants = (
        CreditGrant("C", D(100), priority=2),
        CreditGrant("B", D(80), expires=t20, priority=1),
        CreditGrant("A", D(50), expires=t10, priority=1),
    )
    account = Account("om", "OpenMeter", "USD", "standard", 30, credit_grants=grants)
    accounts = Accounts(listed={"om": account})
    rows, closing = contract_lines(usage("2026-10", "om", [("m", "x", "90")]), "2026-10", accounts)
    assert draws(rows) == [("credit_grant:A", "-50.00"), ("credit_grant:B", "-40.00")]
    assert closing["om"] == {"A": D(0), "B": D(40), "C": D(100)}


def test_openmeter_credit_then_invoice_example_invoices_the_remainder():
    """Same page, "Credit then invoice": a 100 USD charge against a 40 USD balance consumes 40
    and invoices the remaining 60."""
    account = Account(
        "om", "OpenMeter", "USD", "standard", 30, credit_grants=(CreditGrant("g", D(40)),)
    )
    rows, _ = contract_lines(
        usage("2026-10", "om", [("m", "x", "100")]), "2026-10", Accounts(listed={"om": account})
    )
    assert draws(rows) == [("credit_grant:g", "-40.00")]
    assert sum(rows["amount"].to_list(), D(0)) + D(100) == D(60)


def test_the_credit_line_names_the_grant_and_what_is_left_of_it(tmp_path):
    accounts = accounts_from(tmp_path, GRANTS_YAML)
    rated = usage("2026-03", "acct-g", [("input_tokens", "gpt-4o", "120.00")])
    contract, _ = contract_lines(rated, "2026-03", accounts)
    lines = build_invoice_lines(pl.concat([rated, contract]), accounts.get("acct-g"), "2026-03")
    credit_lines = lines.filter(pl.col("kind") == "credit")
    assert credit_lines.select("description", pl.col("amount").cast(pl.String)).rows() == [
        ("Credit grant paid-2026 (balance left 10.00 USD)", "-90.00"),  # lines read by name
        ("Credit grant promo (balance left 0.00 USD)", "-30.00"),
    ]
    assert lines["amount"].sum() == 0


def test_old_flat_stamps_read_as_the_grant_prepaid_credit_and_rate_the_same():
    assert credit_map('{"a":"12.50"}') == {"a": {PREPAID_GRANT: D("12.50")}}
    nested = {"a": {PREPAID_GRANT: D("12.50")}}
    assert credit_map(credit_stamp(nested)) == nested
    accounts = Accounts(
        listed={"a": Account("a", "A", "USD", "standard", 30, prepaid_credit=D("30.00"))}
    )
    rated = usage("2026-03", "a", [("m", "x", "20.00")])
    old, _ = contract_lines(rated, "2026-03", accounts, {"a": D("12.50")})
    new, _ = contract_lines(rated, "2026-03", accounts, credit_map('{"a":"12.50"}'))
    assert old.equals(new) and draws(new) == [("prepaid_credit", "-12.50")]


def test_a_stamped_grant_no_longer_in_accounts_yaml_still_pays_when_rebuilt():
    """An issued invoice rebuilds from its stamp even after its grant left accounts.yaml."""
    accounts = Accounts(listed={"a": Account("a", "A", "USD", "standard", 30)})
    rated = usage("2026-03", "a", [("m", "x", "20.00")])
    rows, _ = contract_lines(rated, "2026-03", accounts, {"a": {PREPAID_GRANT: D("5.00")}})
    assert draws(rows) == [("prepaid_credit", "-5.00")]


# --------------------------------------------------------------------------- the ledger

LEDGER_LINES = pl.Schema({"invoice_number": pl.String, "account_id": pl.String,
                          "period": pl.String, "kind": pl.String, "unit": pl.String,
                          "amount": pl.Decimal(18, 2)})  # fmt: skip


def issued(rows: list[tuple[str, str, str, str]]) -> pl.DataFrame:
    """Issued credit lines: (invoice number, period, unit, amount)."""
    return pl.DataFrame(
        [(n, "acct-g", p, "credit", u, D(a)) for n, p, u, a in rows],
        schema=LEDGER_LINES,
        orient="row",
    )


def ledger_rows(frame: pl.DataFrame) -> list[tuple]:
    cols = ["grant_id", "period", "invoice_number", "kind", "amount", "balance_after"]
    return [
        (g, p, n, k, f"{a:.2f}", f"{b:.2f}") for g, p, n, k, a, b in frame.select(cols).iter_rows()
    ]


def test_the_ledger_appends_grants_draws_and_expiries_once(tmp_path):
    """June: promo draws 10.00 (UBX-1). July: paid-2026 draws 10.00 (UBX-2) and promo, expired
    on 07-01, lapses with its 20.00 left. A rerun of July's close appends nothing."""
    grants = credit.grants(accounts_from(tmp_path, GRANTS_YAML))
    june = issued([("UBX-1", "2026-06", "credit_grant:promo", "-10.00")])
    first = credit.grant_ledger_rows(
        grants, ["2026-06"], june, pl.DataFrame(schema=CREDIT_GRANT_LEDGER), "2026-06"
    )
    assert ledger_rows(first) == [
        ("promo", "2026-06", None, "grant", "30.00", "30.00"),  # in burn order
        ("gpt-only", "2026-06", None, "grant", "40.00", "40.00"),
        ("paid-2026", "2026-06", None, "grant", "100.00", "100.00"),
        ("promo", "2026-06", "UBX-1", "draw", "-10.00", "20.00"),
    ]
    both = pl.concat([june, issued([("UBX-2", "2026-07", "credit_grant:paid-2026", "-10.00")])])
    closes = ["2026-06", "2026-07"]
    second = credit.grant_ledger_rows(grants, closes, both, first, "2026-07")
    assert ledger_rows(second) == [
        ("paid-2026", "2026-07", "UBX-2", "draw", "-10.00", "90.00"),
        ("promo", "2026-07", None, "expiry", "-20.00", "0.00"),
    ]
    stored = pl.concat([first, second])
    assert credit.grant_ledger_rows(grants, closes, both, stored, "2026-07").is_empty()


def test_a_ledger_append_lost_in_a_crash_is_caught_up_by_the_next_close(tmp_path):
    """June's close crashed after its marker, before its ledger append: July's close appends
    June's rows (with June's period) and its own, and no row twice."""
    grants = credit.grants(accounts_from(tmp_path, GRANTS_YAML))
    both = issued([("UBX-1", "2026-06", "credit_grant:promo", "-10.00"),
                   ("UBX-2", "2026-07", "credit_grant:promo", "-5.00")])  # fmt: skip
    rows = credit.grant_ledger_rows(
        grants, ["2026-06", "2026-07"], both, pl.DataFrame(schema=CREDIT_GRANT_LEDGER), "2026-07"
    )
    draws_ = [r for r in ledger_rows(rows) if r[3] == "draw"]
    assert draws_ == [
        ("promo", "2026-06", "UBX-1", "draw", "-10.00", "20.00"),
        ("promo", "2026-07", "UBX-2", "draw", "-5.00", "15.00"),
    ]
    assert rows.unique(["grant_id", "kind", "period", "invoice_number"]).height == rows.height


def test_balances_are_per_grant_and_old_credit_lines_are_the_grant_prepaid_credit():
    grants = {"acct-g": {PREPAID_GRANT: CreditGrant(PREPAID_GRANT, D(30)),
                         "promo": CreditGrant("promo", D(10))}}  # fmt: skip
    lines = issued([("UBX-1", "2026-06", "credit", "-12.00"),
                    ("UBX-2", "2026-07", "credit_grant:promo", "-4.00")])  # fmt: skip
    assert credit.balances(grants, lines) == {"acct-g": {PREPAID_GRANT: D(18), "promo": D(6)}}


def test_applies_to_a_meter_or_model_no_rate_prices_is_refused_naming_the_field(tmp_path):
    """A grant for a meter (or model) its pricebook never prices could pay nothing: a typo."""
    from usagebox_pipelines.config import DEFAULT_PRICEBOOKS
    from usagebox_pipelines.pricing.accounts import check_grant_scopes
    from usagebox_pipelines.pricing.pricebook import load_pricebooks

    books = load_pricebooks(DEFAULT_PRICEBOOKS)
    ok = 'accounts:\n  a:\n    credit_grants: [{id: g, amount: "1", applies_to: {meters: [output_tokens], models: [gpt-4.1]}}]\n'  # noqa: E501
    check_grant_scopes(accounts_from(tmp_path, ok), books)
    for typo, field in (("meters: [output_tokenz]", "meters[0]: unknown meter 'output_tokenz'"),
                        ("meters: [output_tokens], models: [gpt-4.2]",
                         "models[0]: unknown model 'gpt-4.2'")):  # fmt: skip
        body = f'accounts:\n  a:\n    credit_grants: [{{id: g, amount: "1", applies_to: {{{typo}}}}}]\n'  # noqa: E501
        with pytest.raises(AccountsError) as err:
            check_grant_scopes(accounts_from(tmp_path, body), books)
        assert f"accounts.yaml: accounts.a.credit_grants[0].applies_to.{field}" in str(err.value)
