"""VAT: the treatment per customer country, exact half-up tax, tax before prepaid credit."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from tests.test_invoicing_fixtures import PERIOD, rated
from usagebox_pipelines.invoicing.lines import build_draft_invoices
from usagebox_pipelines.pricing.accounts import AccountsError, load_accounts
from usagebox_pipelines.pricing.contract import contract_lines
from usagebox_pipelines.pricing.tax import (
    OUTSIDE_SCOPE,
    REVERSE_CHARGE,
    STANDARD,
    ZERO_RATED,
    tax_of,
)

D = Decimal

ACCOUNTS = """
defaults: {country: US}
tax:
  name: VAT
  seller_country: GB
  countries:
    GB: {rate: "20"}
    DE: {rate: "19", reverse_charge: true}
  elsewhere: {rate: "0", note: "Outside the scope of UK VAT."}
accounts:
  uk: {name: UK Ltd, country: GB, tax_id: "GB 1"}
  de-b2b: {name: DE GmbH, country: DE, tax_id: "DE 298 471 635"}
  de-b2c: {name: A Person, country: DE}
  us: {name: US Inc}
  charity: {name: Charity, country: GB, tax_rate: "0", tax_note: "Exempt: charity."}
  prepaid: {name: Prepaid Ltd, country: GB, prepaid_credit: "50.00"}
  odd-rate: {name: Odd, country: GB, tax_rate: "8.875"}
"""


@pytest.fixture
def accounts(tmp_path: Path):
    (tmp_path / "accounts.yaml").write_text(ACCOUNTS, encoding="utf-8")
    return load_accounts(tmp_path)


@pytest.mark.parametrize(
    ("base", "rate", "expected"),
    [
        (D("0.125"), D(20), D("0.03")),  # 0.025 → half-up, not half-even (0.02)
        (D("0.075"), D(20), D("0.02")),  # 0.015 → 0.02
        (D("61.70"), D(20), D("12.34")),
        (D("56.92"), D(20), D("11.38")),  # 11.384
        (D("10.00"), D("8.875"), D("0.89")),  # 0.8875 exactly, half-up
        (D("-0.125"), D(20), D("-0.03")),  # a credit note's tax: half away from zero
        (D("99.99"), D(0), D("0.00")),
    ],
)
def test_tax_is_exact_and_rounded_half_up(base, rate, expected):
    assert tax_of(base, rate, 2) == expected


def test_treatment_by_country_tax_id_and_override(accounts):
    got = {a: (accounts.get(a).tax.code, accounts.get(a).tax.rate) for a in accounts.ids()}
    assert got["uk"] == (STANDARD, D(20))
    assert got["de-b2b"] == (REVERSE_CHARGE, D(0))  # EU business with a VAT id, other country
    assert got["de-b2c"] == (STANDARD, D(19))  # no VAT id: no reverse charge
    assert got["us"] == (OUTSIDE_SCOPE, D(0))
    assert got["charity"] == (ZERO_RATED, D(0))
    assert accounts.get("de-b2b").tax.note.startswith("Reverse charge")
    assert "Article 196" in accounts.get("de-b2b").tax.note
    assert accounts.get("charity").tax.note == "Exempt: charity."
    assert accounts.get("unlisted").tax.code == OUTSIDE_SCOPE  # the defaults' country


def test_without_a_tax_block_there_is_no_tax(tmp_path: Path):
    (tmp_path / "accounts.yaml").write_text("accounts:\n  a: {country: GB}\n", encoding="utf-8")
    assert load_accounts(tmp_path).get("a").tax is None


@pytest.mark.parametrize(
    ("snippet", "where"),
    [
        ("tax: {countries: {GB: {rate: 20.0}}}", "rate"),  # a YAML float is inexact
        ('tax: {countries: {GB: {rate: "120"}}}', "rate"),
        ('tax: {countries: {gb: {rate: "20"}}}', "countries"),
        ('tax: {countries: {GB: {rate: "20", vat: 1}}}', "vat"),
        ('accounts: {a: {country: "Germany"}}', "country"),
    ],
)
def test_bad_tax_settings_are_refused_naming_the_field(tmp_path: Path, snippet, where):
    (tmp_path / "accounts.yaml").write_text(snippet + "\n", encoding="utf-8")
    with pytest.raises(AccountsError, match=where):
        load_accounts(tmp_path)


def usage(account_id: str, amount: str) -> pl.DataFrame:
    return rated(
        [
            {
                "account_id": account_id,
                "meter_id": "input_tokens",
                "model_id": "gpt-4.1",
                "rate_id": "r",
                "quantity": 1_000_000,
                "per": 1_000_000,
                "unit_price": amount,
                "amount": amount,
            }
        ]
    )


def draft(accounts, account_id: str, amount: str, opening=None) -> tuple[dict, pl.DataFrame]:
    rows = usage(account_id, amount)
    contract, _ = contract_lines(rows, PERIOD, accounts, opening)
    invoices, lines = build_draft_invoices(pl.concat([rows, contract]), accounts, PERIOD)
    return invoices.row(0, named=True), lines


def test_uk_invoice_gets_a_tax_line_on_its_net_amount(accounts):
    invoice, lines = draft(accounts, "uk", "0.125")
    tax = lines.filter(pl.col("kind") == "tax").row(0, named=True)
    assert (tax["quantity"], tax["unit_price"], tax["per"]) == (D("0.13"), D(20), D(100))
    assert tax["amount"] == D("0.03") and tax["description"] == "VAT 20%"
    assert invoice["subtotal"] == D("0.13") and invoice["total"] == D("0.16")


def test_reverse_charge_and_zero_rated_keep_a_zero_tax_line_that_names_them(accounts):
    for account_id, labels in [
        ("de-b2b", ["VAT 0% (reverse charge)"]),
        ("charity", ["VAT 0% (zero rated)"]),
        ("us", []),  # outside the scope of UK VAT: no line, the wording is printed
    ]:
        invoice, lines = draft(accounts, account_id, "10.00")
        tax = lines.filter(pl.col("kind") == "tax")
        assert tax["description"].to_list() == labels
        assert tax["amount"].to_list() == [D("0.00")] * len(labels)
        assert invoice["total"] == invoice["subtotal"] == D("10.00")


def test_prepaid_credit_pays_the_tax_too_and_never_more(accounts):
    invoice, lines = draft(accounts, "prepaid", "30.00")  # 30 + 6 VAT = 36 ≤ 50
    amounts = dict(lines.select("kind", "amount").iter_rows())
    assert amounts == {"usage": D("30.00"), "tax": D("6.00"), "credit": D("-36.00")}
    assert invoice["total"] == D("0.00")
    invoice, lines = draft(accounts, "prepaid", "50.00", opening={"prepaid": D("50.00")})
    amounts = dict(lines.select("kind", "amount").iter_rows())
    assert amounts == {"usage": D("50.00"), "tax": D("10.00"), "credit": D("-50.00")}
    assert invoice["total"] == D("10.00")
    order = lines.sort("line_no")["kind"].to_list()
    assert order == ["usage", "tax", "credit"]
