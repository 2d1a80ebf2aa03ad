"""Percentage charges (Lago's `percentage` charge model): the quantity is a transaction amount
and is charged `rate` percent of it, matched to the cent against Lago's worked numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path

import polars as pl
import pytest
import yaml

from usagebox_pipelines import schemas
from usagebox_pipelines.invoicing.lines import rated_lines
from usagebox_pipelines.pricing import load_accounts, load_pricebooks, rate_usage
from usagebox_pipelines.pricing.pricebook import PricebookError


def rate(tmp_path: Path, rates: list[dict], amounts: list[str]) -> pl.DataFrame:
    """Rated rows of account `x` for one `payments` event amount per hour in October."""
    book = {"pricebook": "p", "version": "1", "effective_from": "2026-10-01T00:00:00Z",
            "currency": "USD", "rates": rates}  # fmt: skip
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(book))
    (tmp_path / "accounts.yaml").write_text(yaml.safe_dump({"defaults": {"pricebook": "p"}}))
    records = [
        {"account_id": "x", "meter_id": "payments", "model_id": "card", "billable": True,
         "dimensions": "{}", "hour": datetime(2026, 10, 2, h, tzinfo=UTC), "sum": D(a),
         "count": 1}
        for h, a in enumerate(amounts)
    ]  # fmt: skip
    usage = schemas.conform(pl.DataFrame(records, infer_schema_length=None), schemas.USAGE_HOURLY)
    return rate_usage(usage, "2026-10", load_pricebooks(tmp_path), load_accounts(tmp_path)).rated


def lines(rated: pl.DataFrame) -> list[tuple[str, str, str]]:
    usage = rated_lines(rated).filter(pl.col("kind") == "usage").sort("description")
    return usage.select(
        "description", pl.col("quantity").cast(pl.String), pl.col("amount").cast(pl.String)
    ).rows()


CARD = {"meter_id": "payments", "model_id": "card"}


def test_lago_percentage_rate_on_a_transaction(tmp_path):
    """https://getlago.com/docs/guide/plans/charges/charge-models/percentage : "1.2% of $50 =
    $0.60" is the percentage part of the fourth transaction of Lago's example ($0.10 × 1 event
    + 1.2% of $50 = $0.70; the per-event fixed fee is not supported here)."""
    rated = rate(tmp_path, [{**CARD, "percentage": {"rate": "1.2"}}], ["50"])
    assert lines(rated) == [("card · Payments — 1.2% of the amount", "50.000000000000", "0.60")]


def test_lago_stripe_template_card_payments(tmp_path):
    """https://getlago.com/docs/templates/per-transaction/stripe : online card payments 2.9%,
    in-person 2.7% of the transaction amount. 100.00 + 250.00 online = 350.00 × 2.9% = 10.15;
    80.00 in person × 2.7% = 2.16."""
    online = rate(tmp_path, [{**CARD, "percentage": {"rate": "2.9"}}], ["100.00", "250.00"])
    assert lines(online)[0][1:] == ("350.000000000000", "10.15")
    in_person = rate(tmp_path, [{**CARD, "percentage": {"rate": "2.7"}}], ["80.00"])
    assert lines(in_person)[0][1:] == ("80.000000000000", "2.16")


def test_percentage_is_exact_until_the_line_then_rounded_half_up(tmp_path):
    """2.9% of 12.50 = 0.3625 exactly (rated), 0.36 on the line; 2.5% of 0.30 = 0.0075 → 0.01."""
    rated = rate(tmp_path, [{**CARD, "percentage": {"rate": "2.9"}}], ["12.50"])
    assert rated.filter(pl.col("line_kind") == "usage")["amount"].to_list() == [D("0.3625")]
    assert lines(rated)[0][2] == "0.36"
    assert (
        lines(rate(tmp_path, [{**CARD, "percentage": {"rate": "2.5"}}], ["0.30"]))[0][2] == "0.01"
    )


def test_free_units_on_a_percentage_leave_the_first_amount_of_the_month_uncharged(tmp_path):
    """Lago's "free units (total amount)": the first 500 of the month are not charged; 1.2% of
    the 700 after them = 8.40."""
    rated = rate(
        tmp_path, [{**CARD, "percentage": {"rate": "1.2"}, "free_units": "500"}], ["900", "300"]
    )
    assert lines(rated) == [
        ("card · Payments — 1.2% of the amount", "700.000000000000", "8.40"),
        ("card · Payments — included usage", "500.000000000000", "0.00"),
    ]


PER_EVENT = [("fixed_amount", "1"), ("per_transaction_min", "1"), ("per_transaction_max", "1"),
             ("free_units_per_events", 1)]  # fmt: skip


@pytest.mark.parametrize(("option", "value"), PER_EVENT)
def test_per_event_options_are_never_priced_from_hourly_sums(tmp_path, option, value):
    """Priced per transaction from `events` (tests/test_per_event_charges.py); rated from
    hours alone, the usage is unrated with the reason, never billed from its sums."""
    book = {
        "pricebook": "p",
        "version": "1",
        "effective_from": "2026-10-01T00:00:00Z",
        "currency": "USD",
        "rates": [{**CARD, "percentage": {"rate": "1.2", option: value}}],
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(book))
    (tmp_path / "accounts.yaml").write_text(yaml.safe_dump({"defaults": {"pricebook": "p"}}))
    records = [{"account_id": "x", "meter_id": "payments", "model_id": "card", "billable": True,
                "dimensions": "{}", "hour": datetime(2026, 10, 2, tzinfo=UTC), "sum": D("5"),
                "count": 1}]  # fmt: skip
    usage = schemas.conform(pl.DataFrame(records, infer_schema_length=None), schemas.USAGE_HOURLY)
    result = rate_usage(usage, "2026-10", load_pricebooks(tmp_path), load_accounts(tmp_path))
    assert result.rated.filter(pl.col("line_kind") == "usage").is_empty()
    assert result.unrated["reason"].to_list() == [
        "rate p@1 #0 is priced per event and this rating was given no events"
    ]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"percentage": {"rate": "1.2", "free_units_per_total_aggregation": "5"}},
         "percentage.free_units_per_total_aggregation: not supported: write the rate's free_units"),
        ({"percentage": {"rate": "101"}}, "percentage.rate: must be at most 100"),
        ({"percentage": {"rate": 1.2}}, "percentage.rate: write decimals as quoted strings"),
        ({"percentage": {}}, "percentage.rate: required"),
        ({"percentage": {"rate": "1.2"}, "per": 100}, "per: not used with percentage"),
    ],
)  # fmt: skip
def test_invalid_percentage_rules_are_refused_naming_the_field(tmp_path, rule, message):
    with pytest.raises(PricebookError) as err:
        rate(tmp_path, [{**CARD, **rule}], ["1"])
    assert f"p.yaml: rates[0].{message}" in str(err.value)


def test_the_content_hash_covers_the_rate(tmp_path):
    rate(tmp_path, [{**CARD, "percentage": {"rate": "1.2"}}], ["1"])
    before = load_pricebooks(tmp_path).fingerprints()
    rate(tmp_path, [{**CARD, "percentage": {"rate": "1.3"}}], ["1"])
    assert load_pricebooks(tmp_path).fingerprints() != before
