"""Per-event charges (ADR 0018): Lago's percentage options priced per transaction, and the
`dynamic` model, priced from `events` rows, never from hourly sums.

Hand-computed tables pin the boundaries; the Lago cases name the spec they come from
(getlago/lago-api, spec/services/charges/charge_models/*_service_spec.rb)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usagebox_pipelines import schemas
from usagebox_pipelines.invoicing.lines import rated_lines
from usagebox_pipelines.invoicing.render import merged_sections
from usagebox_pipelines.pricing import load_accounts, load_pricebooks, rate_usage
from usagebox_pipelines.pricing.pricebook import PricebookError
from usagebox_pipelines.pricing.rating import RatingResult, rate_events
from usagebox_pipelines.rollups.aggregate import rollup_hourly

DAY = datetime(2026, 10, 2, tzinfo=UTC)
CARD = {"meter_id": "payments", "model_id": "*"}
LAGO_SPEC = "getlago/lago-api spec/services/charges/charge_models/percentage_service_spec.rb"


def folder(
    tmp: Path, rates: list[dict], accounts: dict | None = None, later: list[dict] | None = None
) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    book = {"pricebook": "p", "version": "1", "effective_from": "2026-09-01T00:00:00Z",
            "currency": "USD", "rates": rates}  # fmt: skip
    (tmp / "p-1.yaml").write_text(yaml.safe_dump(book))
    if later is not None:
        v2 = {**book, "version": "2", "effective_from": "2026-10-16T00:00:00Z", "rates": later}
        (tmp / "p-2.yaml").write_text(yaml.safe_dump(v2))
    body: dict[str, Any] = {"defaults": {"pricebook": "p"}}
    if accounts:
        body["accounts"] = accounts
    (tmp / "accounts.yaml").write_text(yaml.safe_dump(body))
    return tmp


def events_frame(rows: list[dict]) -> pl.DataFrame:
    """`events` rows: each dict has event_id, quantity and optional timestamp, account_id,
    meter_id, dimensions, correction_of (a correction counts in its original's hour)."""
    records = []
    for i, row in enumerate(rows):
        ts = row.get("timestamp", DAY + timedelta(minutes=i))
        records.append(
            {
                "event_id": row["event_id"],
                "account_id": row.get("account_id", "x"),
                "meter_id": row.get("meter_id", "payments"),
                "quantity": D(row["quantity"]),
                "timestamp": ts,
                "dimensions": row.get("dimensions", "{}"),
                "billable": True,
                "correction_of": row.get("correction_of"),
                "status": "ok",
            }
        )
    if not records:
        return pl.DataFrame(schema=schemas.EVENTS)
    frame = pl.DataFrame(records, infer_schema_length=None).with_columns(
        pl.col("correction_of").cast(pl.String), hour=pl.col("timestamp").dt.truncate("1h")
    )
    originals = frame.filter(pl.col("correction_of").is_null()).select(
        pl.col("event_id").alias("_o"), pl.col("hour").alias("_h")
    )
    frame = (
        frame.join(originals, left_on="correction_of", right_on="_o", how="left")
        .with_columns(hour=pl.coalesce("_h", "hour"))
        .with_columns(event_date=pl.col("hour").dt.date())
    )
    return schemas.conform(frame, schemas.EVENTS)


def rate(path: Path, events: pl.DataFrame, period: str = "2026-10") -> RatingResult:
    hourly = rollup_hourly(
        events.lazy(), datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    )
    books, accounts = load_pricebooks(path), load_accounts(path)
    return rate_usage(hourly, period, books, accounts, events=events)


def amounts(amounts: list[str], **extra: Any) -> pl.DataFrame:
    return events_frame(
        [{"event_id": f"e{i}", "quantity": a, **extra} for i, a in enumerate(amounts)]
    )


def charged(result: RatingResult) -> D:
    """The exact usage amount of the month (all usage lines)."""
    usage = result.rated.filter(pl.col("line_kind") == "usage")
    return usage["amount"].sum() if usage.height else D(0)


def pct(**options: Any) -> list[dict]:
    return [{**CARD, "percentage": {k: v for k, v in options.items() if v is not None}}]


# --- hand-computed tables ---------------------------------------------------------------

STRIPE = {"rate": "2.9", "fixed_amount": "0.30", "per_transaction_min": "0.50",
          "per_transaction_max": "5.00"}  # fmt: skip


@pytest.mark.parametrize(
    ("amounts_", "expected", "why"),
    [
        ([], "0", "zero events: nothing charged, no line"),
        (["10.00"], "0.59", "2.9% × 10 + 0.30 = 0.59"),
        (["1.00"], "0.50", "0.029 + 0.30 = 0.329 < min 0.50: the minimum"),
        (["6.55"], "0.50", "0.18995 + 0.30 = 0.48995 < 0.50: the minimum"),
        (["6.90"], "0.5001", "0.2001 + 0.30 = 0.5001: just above the minimum"),
        (["162.06896551"], "4.999999999790", "under the max by a hair (12 places kept)"),
        (["500.00"], "5.00", "14.80 > max 5.00: the maximum"),
        (["1.00", "10.00", "500.00"], "6.09", "0.50 + 0.59 + 5.00, each clamped on its own"),
    ],
)  # fmt: skip
def test_each_transaction_is_rate_plus_fee_clamped_to_min_and_max(
    tmp_path, amounts_, expected, why
):
    result = rate(folder(tmp_path, pct(**STRIPE)), amounts(amounts_))
    assert charged(result) == D(expected), why
    assert result.unrated.is_empty()


@pytest.mark.parametrize(
    ("count", "expected"),
    [(0, "0"), (1, "0"), (2, "0"), (3, "1.30"), (4, "2.60")],
)
def test_free_units_per_events_boundary(tmp_path, count, expected):
    """The first 2 transactions of the month are free; the 3rd (exactly past the boundary)
    pays 1% × 100 + 0.30 = 1.30."""
    rules = pct(rate="1", fixed_amount="0.30", free_units_per_events=2)
    result = rate(folder(tmp_path, rules), amounts(["100"] * count))
    assert charged(result) == D(expected)
    if count:
        included = result.rated.filter(pl.col("price_model") == "included")
        assert included["quantity"].sum() == D(100) * min(count, 2)


def test_free_events_pay_no_minimum_but_the_free_amount_crossing_event_does(tmp_path):
    """free_units (an amount) 150 on [100, 100, 100], 1% + min 0.75: the first is wholly free
    (0, no minimum), the second pays on 50 → 0.50 → min 0.75, the third 1.00."""
    rules = [{**pct(rate="1", per_transaction_min="0.75")[0], "free_units": "150"}]
    result = rate(folder(tmp_path, rules), amounts(["100", "100", "100"]))
    assert charged(result) == D("1.75")
    transactions = rate_events(
        amounts(["100", "100", "100"]),
        "2026-10",
        load_pricebooks(tmp_path),
        load_accounts(tmp_path),
    ).transactions
    assert transactions["status"].to_list() == ["free_units", "minimum", "charged"]


def test_a_refund_nets_into_its_original_transaction(tmp_path):
    """e0 200.00 is refunded by 150.00 (correction_of e0, a day later): one transaction of 50.00
    → 2.9% × 50 + 0.30 = 1.75 (not two transactions, not 200 clamped at the max); a full
    refund voids the transaction (no fee, not counted)."""
    rows = [
        {"event_id": "e0", "quantity": "200.00"},
        {"event_id": "r0", "quantity": "-150.00", "correction_of": "e0",
         "timestamp": DAY + timedelta(days=1)},
        {"event_id": "e1", "quantity": "20.00"},
        {"event_id": "r1", "quantity": "-20.00", "correction_of": "e1"},
    ]  # fmt: skip
    path = folder(tmp_path, pct(**STRIPE))
    result = rate(path, events_frame(rows))
    assert charged(result) == D("1.75")
    tx = rate_events(events_frame(rows), "2026-10", load_pricebooks(path), load_accounts(path))
    assert tx.transactions.select("event_id", "events", "status").rows() == [
        ("e0", 2, "charged"),
        ("e1", 2, "void"),
    ]


def test_a_version_change_mid_month_prices_each_transaction_by_its_own_version(tmp_path):
    """v1 (to 16 Oct): 2% + 0.10, 1 free event; v2: 3%, max 1.00. Free events count across
    versions (the position is per rate id): 1 Oct free, 10 Oct 2.10; 20 Oct 100 → 3.00 → 1.00."""
    v1 = [
        {
            **CARD,
            "id": "cards",
            "percentage": {"rate": "2", "fixed_amount": "0.10", "free_units_per_events": 1},
        }
    ]
    v2 = [{**CARD, "id": "cards", "percentage": {"rate": "3", "per_transaction_max": "1.00"}}]
    rows = [
        {"event_id": "a", "quantity": "100", "timestamp": datetime(2026, 10, 1, 5, tzinfo=UTC)},
        {"event_id": "b", "quantity": "100", "timestamp": datetime(2026, 10, 10, tzinfo=UTC)},
        {"event_id": "c", "quantity": "100", "timestamp": datetime(2026, 10, 20, tzinfo=UTC)},
    ]  # fmt: skip
    result = rate(folder(tmp_path, v1, later=v2), events_frame(rows))
    usage = result.rated.filter(pl.col("line_kind") == "usage")
    by_version = usage.group_by("price_version").agg(pl.col("amount").sum()).sort("price_version")
    assert by_version.rows() == [("1", D("2.10")), ("2", D("1.00"))]


def test_a_zoned_account_bills_the_events_of_its_own_month(tmp_path):
    """New York's October is [1 Oct 04:00Z, 1 Nov 04:00Z): an event at 1 Oct 02:00Z is
    September there, one at 1 Nov 02:00Z is October. UTC account: the reverse."""
    rows = [
        {"event_id": f"{a}-{n}", "account_id": a, "quantity": "100", "timestamp": ts}
        for a in ("ny", "utc")
        for n, ts in enumerate(
            [datetime(2026, 10, 1, 2, tzinfo=UTC), datetime(2026, 11, 1, 2, tzinfo=UTC)]
        )
    ]
    path = folder(
        tmp_path,
        pct(rate="1", fixed_amount="0.25"),
        accounts={"ny": {"time_zone": "America/New_York"}, "utc": {}},
    )
    result = rate(path, events_frame(rows))
    usage = result.rated.filter(pl.col("line_kind") == "usage")
    got = usage.group_by("account_id").agg(pl.col("amount").sum(), pl.col("first_hour").min())
    assert got.sort("account_id").rows() == [
        ("ny", D("1.25"), datetime(2026, 11, 1, 2, tzinfo=UTC)),
        ("utc", D("1.25"), datetime(2026, 10, 1, 2, tzinfo=UTC)),
    ]


def test_hourly_rows_of_per_event_rates_are_not_counted_twice(tmp_path):
    """The same meter has a plain rate for another model: it is rated from hours, the
    per-event rate only from events."""
    rules = [
        {"meter_id": "payments", "model_id": "card",
         "percentage": {"rate": "1", "fixed_amount": "1"}},
        {"meter_id": "payments", "model_id": "*", "unit_price": "0.01"},
    ]  # fmt: skip
    rows = [{"event_id": "a", "quantity": "100"}, {"event_id": "b", "quantity": "100"}]
    frame = events_frame(rows).with_columns(
        model_id=pl.when(pl.col("event_id") == "a").then(pl.lit("card")).otherwise(pl.lit("wire"))
    )
    result = rate(folder(tmp_path, rules), frame)
    usage = result.rated.filter(pl.col("line_kind") == "usage").sort("model_id", "price_model")
    assert usage.select("model_id", "price_model", "quantity", "amount").rows() == [
        ("card", "percentage", D(100), D(1)),
        ("card", "transaction_fee", D(0), D(1)),
        ("wire", "per_unit", D(100), D(1)),
    ]


def test_invoice_lines_describe_each_part_and_add_up(tmp_path):
    """[1.00, 10.00, 20.00, 500.00] at 2.9% + 0.30, min 0.50, max 5.00: 10.00 and 20.00 are
    charged as computed (0.87 of rate, 2 × 0.30 fees), 1.00 is raised to the minimum, 500.00
    capped at the maximum. Quantities add up to the amounts (1 + 10 + 20 + 500 = 531)."""
    result = rate(folder(tmp_path, pct(**STRIPE)), amounts(["1.00", "10.00", "20.00", "500.00"]))
    lines = rated_lines(result.rated).filter(pl.col("kind") == "usage").sort("description")
    assert lines.select("description", "quantity", "amount").rows() == [
        ("Payments — 1 transaction(s) at the maximum of 5.00 per transaction", D(500), D("5.00")),
        ("Payments — 1 transaction(s) at the minimum of 0.50 per transaction", D(1), D("0.50")),
        ("Payments — 2 transaction(s) × fixed fee 0.30", D(0), D("0.60")),
        ("Payments — 2.9% of the amount", D(30), D("0.87")),
    ]
    assert charged(result) == D("6.97")


# --- dynamic ------------------------------------------------------------------------------

DYNAMIC = [{"meter_id": "calls", "model_id": "*", "dynamic": {"amount_key": "total"}}]


def test_dynamic_charges_the_sum_of_the_events_own_amounts(tmp_path):
    rows = [
        {"event_id": "a", "meter_id": "calls", "quantity": "1", "dimensions": '{"total":"0.0132"}'},
        {"event_id": "b", "meter_id": "calls", "quantity": "2", "dimensions": '{"total":"0.5"}'},
    ]  # fmt: skip
    result = rate(folder(tmp_path, DYNAMIC), events_frame(rows))
    usage = result.rated.filter(pl.col("line_kind") == "usage")
    assert usage.select("price_model", "quantity", "amount", "dimensions").rows() == [
        ("dynamic", D(3), D("0.5132"), "{}")
    ]


def test_lago_dynamic_precise_total_amount(tmp_path):
    """getlago/lago-api spec/services/charges/charge_models/dynamic_service_spec.rb: 20 units
    with a precise total of 40.2 cents → amount 0.402 (0.40 on the invoice); with zero units
    the amount is 0 (here: a transaction whose quantity nets to 0 is void)."""
    rows = [
        {"event_id": f"e{i}", "meter_id": "calls", "quantity": "1",
         "dimensions": f'{{"total":"{"0.0201"}"}}'}
        for i in range(20)
    ]  # fmt: skip
    result = rate(folder(tmp_path, DYNAMIC), events_frame(rows))
    assert charged(result) == D("0.402")
    line = rated_lines(result.rated).filter(pl.col("kind") == "usage")
    assert line["amount"].to_list() == [D("0.40")]
    zero = [{"event_id": "z", "meter_id": "calls", "quantity": "0", "dimensions": '{"total":"1"}'}]
    assert charged(rate(folder(tmp_path, DYNAMIC), events_frame(zero))) == D(0)


def test_a_dynamic_refund_scales_its_originals_amount(tmp_path):
    """A correction inherits the original's dimensions (events.build), so it refunds pro rata:
    4 units at 1.00 refunded by 1 → 0.75; refunded by all 4 → void (0)."""
    dims = '{"total":"1.00"}'
    rows = [
        {"event_id": "a", "meter_id": "calls", "quantity": "4", "dimensions": dims},
        {"event_id": "ra", "meter_id": "calls", "quantity": "-1", "dimensions": dims,
         "correction_of": "a"},
        {"event_id": "b", "meter_id": "calls", "quantity": "4", "dimensions": dims},
        {"event_id": "rb", "meter_id": "calls", "quantity": "-4", "dimensions": dims,
         "correction_of": "b"},
    ]  # fmt: skip
    path = folder(tmp_path, DYNAMIC)
    assert charged(rate(path, events_frame(rows))) == D("0.75")
    tx = rate_events(events_frame(rows), "2026-10", load_pricebooks(path), load_accounts(path))
    assert tx.transactions.select("event_id", "charge", "status").rows() == [
        ("a", D("0.75"), "charged"),
        ("b", D(0), "void"),
    ]


@pytest.mark.parametrize(
    "dimensions", ["{}", '{"total":"abc"}', '{"total":"-1"}', '{"total":"0.0000000000001"}']
)
def test_a_dynamic_event_without_a_valid_amount_is_unrated_never_free(tmp_path, dimensions):
    rows = [
        {"event_id": "ok", "meter_id": "calls", "quantity": "1", "dimensions": '{"total":"2"}'},
        {"event_id": "bad", "meter_id": "calls", "quantity": "1", "dimensions": dimensions},
    ]  # fmt: skip
    result = rate(folder(tmp_path, DYNAMIC), events_frame(rows))
    assert charged(result) == D(2)
    assert result.blocks_close
    (reason,) = result.unrated["reason"].to_list()
    assert "needs each event's amount in dimension 'total'" in reason
    assert reason.endswith("first event bad")


# --- ported from Lago ---------------------------------------------------------------------

MINMAX = {"rate": "1", "per_transaction_min": "1.75", "per_transaction_max": "12"}


@pytest.mark.parametrize(
    ("options", "expected", "case"),
    [
        ({}, "23.75", "applies the min and max per transaction: 1.75 + 10 + 12"),
        ({"fixed_amount": "1.0"}, "25", "with fixed_amount: 2 + 11 + 12"),
        ({"free_units_per_events": 2}, "12", "with free units per events: only 10000 pays, 12"),
    ],
)
def test_lago_min_max_per_transaction(tmp_path, options, expected, case):
    """LAGO_SPEC, 'when applying min / max amount per transaction' / 'when premium': events
    [100, 1000, 10000] at 1%, min 1.75, max 12 (the case is named in the parameters)."""
    rules = pct(**MINMAX, **options)
    assert charged(rate(folder(tmp_path, rules), amounts(["100", "1000", "10000"]))) == D(expected)


def test_lago_min_max_with_free_units_per_total_aggregation(tmp_path):
    """LAGO_SPEC 'with free units per total aggregation' (300 free): (100 + 1000 − 300) × 1%
    + 12 = 20 (the first event is wholly free, so no minimum on it)."""
    rules = [{**pct(**MINMAX)[0], "free_units": "300"}]
    assert charged(rate(folder(tmp_path, rules), amounts(["100", "1000", "10000"]))) == D(20)


@pytest.mark.parametrize(
    ("options", "amounts_", "expected", "case"),
    [
        ({"rate": "1.3", "fixed_amount": "2.0", "free_units_per_events": 3},
         ["50", "100", "250", "400"], "7.2",
         "'when free_units_per_total_aggregation is nil': (800 − 400) × 1.3% + (4 − 3) × 2"),
        ({"rate": "1.3", "fixed_amount": "2.0"}, ["50", "100", "250", "400"], "18.4",
         "'when free units are not set': 800 × 1.3% + 4 × 2"),
        ({"rate": "0", "fixed_amount": "2.0"}, ["50", "100", "250", "400"], "8",
         "'when rate is 0': (4 − 0) × 2.0"),
        ({"rate": "1.3", "fixed_amount": "2.0", "free_units_per_events": 5},
         ["50", "100", "250"], "0", "'when free_units_count > number of events': 0"),
    ],
)  # fmt: skip
def test_lago_percentage_cases(tmp_path, options, amounts_, expected, case):
    """LAGO_SPEC: the cases whose events are given (count 4, running totals 50, 150, 400 of
    800); each case named in the parameters."""
    assert charged(rate(folder(tmp_path, pct(**options)), amounts(amounts_))) == D(expected), case


def test_both_free_options_apply_one_after_the_other_unlike_lago(tmp_path):
    """LAGO_SPEC 'when both free units per events and per total aggregation are applied'
    (3 free events, 10000 free amount: Lago 11, its free amount governs the events). Here the
    first 3 transactions are free, then the free amount comes off the later ones (ADR 0018):
    a 4th of 20000 pays on 10000 → 12 (max)."""
    rules = [{**pct(**MINMAX, free_units_per_events=3)[0], "free_units": "10000"}]
    result = rate(folder(tmp_path, rules), amounts(["100", "1000", "10000", "20000"]))
    assert charged(result) == D(12)


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({**CARD, "percentage": {"rate": "1", "fixed_amount": 0.3}},
         "rates[0].percentage.fixed_amount: write decimals as quoted strings"),
        ({**CARD, "percentage": {"rate": "1", "per_transaction_min": "2",
                                 "per_transaction_max": "1"}},
         "rates[0].percentage.per_transaction_min: must not exceed per_transaction_max"),
        ({**CARD, "percentage": {"rate": "1", "free_units_per_events": "2"}},
         "rates[0].percentage.free_units_per_events: must be an integer"),
        ({**CARD, "percentage": {"rate": "1", "per_transaction_max": "-1"}},
         "rates[0].percentage.per_transaction_max: must be at least 0"),
        ({**CARD, "dynamic": {}}, "rates[0].dynamic.amount_key: required"),
        ({**CARD, "dynamic": {"amount_key": "a b"}},
         "rates[0].dynamic.amount_key: must be a dimension key"),
        ({**CARD, "dynamic": {"amount_key": "t"}, "free_units": "1"},
         "rates[0].free_units: not used with dynamic"),
        ({**CARD, "dynamic": {"amount_key": "t"}, "per": 2}, "rates[0].per: not used with dynamic"),
    ],
)  # fmt: skip
def test_invalid_per_event_rules_name_file_and_field(tmp_path, rule, message):
    with pytest.raises(PricebookError) as err:
        load_pricebooks(folder(tmp_path, [rule]))
    assert f"p-1.yaml: {message}" in str(err.value)


# --- properties ---------------------------------------------------------------------------

_amount = st.decimals(min_value=D("0.01"), max_value=D("100000"), places=2)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    left=st.lists(_amount, max_size=8),
    right=st.lists(_amount, max_size=8),
    options=st.fixed_dictionaries(
        {
            "rate": st.sampled_from(["0", "1.2", "2.9", "100"]),
            "fixed_amount": st.sampled_from([None, "0.30", "2"]),
            "per_transaction_min": st.sampled_from([None, "0.50"]),
            "per_transaction_max": st.sampled_from([None, "5.00", "250"]),
        }
    ),
)
def test_property_transactions_are_additive_clamped_and_exact(tmp_path, left, right, options):
    """Invariant: without free events or free units, a transaction's charge depends on it
    alone, so rating two disjoint event sets gives the sum of each (additivity); every
    charged transaction lies within [min, max]; no column is ever a float."""
    path = folder(tmp_path, pct(**options))
    books, accounts = load_pricebooks(path), load_accounts(path)

    def run(values: list[D], prefix: str) -> Any:
        frame = events_frame(
            [{"event_id": f"{prefix}{i}", "quantity": str(v)} for i, v in enumerate(values)]
        )
        return rate_events(frame, "2026-10", books, accounts)

    both = events_frame(
        [{"event_id": f"l{i}", "quantity": str(v)} for i, v in enumerate(left)]
        + [{"event_id": f"r{i}", "quantity": str(v)} for i, v in enumerate(right)]
    )
    total = rate_events(both, "2026-10", books, accounts)

    def amount(result: Any) -> D:
        return result.lines["amount"].sum() if result.lines.height else D(0)

    assert amount(total) == amount(run(left, "l")) + amount(run(right, "r"))
    charges = total.transactions.filter(pl.col("status") != "void")["charge"]
    if options["per_transaction_min"] is not None and charges.len():
        assert charges.min() >= D(options["per_transaction_min"])
    if options["per_transaction_max"] is not None and charges.len():
        assert charges.max() <= D(options["per_transaction_max"])
    for frame in (total.lines, total.transactions):
        assert not any(dtype.is_float() for dtype in frame.dtypes)


# --- through the stages: rated_usage, drafts, close, explain, reproduce -------------------

CLOSE_BOOK = """\
pricebook: pay
version: "1"
effective_from: 2026-10-01T00:00:00Z
currency: USD
rates:
  - id: cards
    meter_id: payments
    model_id: "*"
    percentage: {rate: "2.9", fixed_amount: "0.30", per_transaction_min: "0.50",
                 per_transaction_max: "5.00", free_units_per_events: 1}
  - {id: search, meter_id: search_calls, model_id: "*", dynamic: {amount_key: cost}}
  - {meter_id: input_tokens, model_id: "*", per: 1000000, unit_price: "2.00"}
"""
CLOSE_ACCOUNTS = """\
defaults: {pricebook: pay, currency: USD}
accounts:
  acct-001: {name: "Northwind Analytics Inc."}
  acct-ny: {name: "Hudson Payments LLC", time_zone: America/New_York}
"""


def test_per_event_charges_close_explain_and_reproduce(tmp_path: Path) -> None:
    """acct-001: p1 10.00 free (first event), p2 1.00 → min 0.50, p3 100.00 refunded by 50.00
    → 1.45 + 0.30, p4 500.00 → max 5.00; two search calls at their own 0.0132 + 0.5.
    acct-ny (New York): p5 at 1 Oct 02:00Z is its September, so p6 is its first October
    transaction (free) and p7 20.00 pays 0.58 + 0.30."""
    from tests.conftest import event
    from tests.test_close_scenario import OCT, build_month, ingest, issued
    from usagebox_pipelines.config import Settings
    from usagebox_pipelines.stages.books import all_lines
    from usagebox_pipelines.stages.close import close_month
    from usagebox_pipelines.stages.drafts import refresh_drafts
    from usagebox_pipelines.stages.explain import explain_invoice
    from usagebox_pipelines.stages.reproduce import verify_invoice
    from usagebox_pipelines.storage import DeltaStore

    books = tmp_path / "pricebooks"
    books.mkdir()
    (books / "pay-1.yaml").write_text(CLOSE_BOOK)
    (books / "accounts.yaml").write_text(CLOSE_ACCOUNTS)

    def pay(event_id: str, account: str, qty: str, ts: str, **extra: object) -> dict:
        return event(event_id, account, qty, ts, "payments", model_id=None, **extra)

    rows = [
        pay("p1", "acct-001", "10.00", "2026-10-02T10:00:00Z"),
        pay("p2", "acct-001", "1.00", "2026-10-03T10:00:00Z"),
        pay("p3", "acct-001", "100.00", "2026-10-04T10:00:00Z"),
        pay("r3", "acct-001", "-50.00", "2026-10-06T10:00:00Z", correction_of="p3"),
        pay("p4", "acct-001", "500.00", "2026-10-05T10:00:00Z"),
        event("s1", "acct-001", 1, "2026-10-07T10:00:00Z", "search_calls", model_id=None,
              dimensions={"cost": "0.0132"}),
        event("s2", "acct-001", 1, "2026-10-08T10:00:00Z", "search_calls", model_id=None,
              dimensions={"cost": "0.5"}),
        pay("p5", "acct-ny", "100.00", "2026-10-01T02:00:00Z"),
        pay("p6", "acct-ny", "100.00", "2026-10-10T10:00:00Z"),
        pay("p7", "acct-ny", "20.00", "2026-10-11T10:00:00Z"),
        event("t1", "acct-001", 1_000_000, "2026-10-09T10:00:00Z", model_id="gpt-4.1"),
    ]  # fmt: skip
    store, settings = DeltaStore(str(tmp_path / "home")), Settings(str(tmp_path / "home"), books)
    ingest(store, tmp_path / "in" / "october.jsonl", rows)
    build_month(store, books, OCT)
    refresh_drafts(store, books, OCT)
    # force: p5 leaves New York's September open with billable usage
    now = datetime(2026, 11, 3, tzinfo=UTC)
    close_month(store, settings, OCT, approve=True, now=now, force=True)
    numbers = dict(issued(store, OCT).select("account_id", "invoice_number").iter_rows())

    def lines_of(account: str) -> set[tuple[str, str]]:
        lines = all_lines(store).filter(pl.col("invoice_number") == numbers[account])
        return set(lines.select("description", pl.col("amount").cast(pl.String)).rows())

    assert lines_of("acct-001") == {
        ("Payments — 1 transaction(s) at the maximum of 5.00 per transaction", "5.00"),
        ("Payments — 1 transaction(s) at the minimum of 0.50 per transaction", "0.50"),
        ("Payments — 1 transaction(s) × fixed fee 0.30", "0.30"),
        ("Payments — 2.9% of the amount", "1.45"),
        ("Payments — included usage", "0.00"),
        ("Search calls — each event's own price", "0.51"),
        ("gpt-4.1 · Input tokens", "2.00"),
    }
    assert lines_of("acct-ny") == {
        ("Payments — 1 transaction(s) × fixed fee 0.30", "0.30"),
        ("Payments — 2.9% of the amount", "0.58"),
        ("Payments — included usage", "0.00"),
    }
    report = explain_invoice(store, settings, numbers["acct-001"])
    by_line = {line["description"]: line for line in report.lines}
    share = by_line["Payments — 2.9% of the amount"]
    assert share["rule"]["fixed_amount"] == "0.30"
    assert share["rule"]["per_transaction_max"] == "5.00"
    assert share["rule"]["free_units_per_events"] == 1
    per_event = share["per_event"]
    assert (per_event["transactions"], per_event["charged"], per_event["free_events"]) == (4, 1, 1)
    assert (per_event["clamped_to_minimum"], per_event["clamped_to_maximum"]) == (1, 1)
    assert per_event["total_charge"] == "7.25"  # 0.50 + 1.75 + 5.00
    # the stage reads only per-event meters, each account in its own month
    from usagebox_pipelines.pricing import load_accounts as accounts_of
    from usagebox_pipelines.stages.per_event import month_events

    read = month_events(store, OCT, load_pricebooks(books), accounts_of(books)).collect()
    assert sorted(read["event_id"]) == ["p1", "p2", "p3", "p4", "p6", "p7", "r3", "s1", "s2"]
    search = by_line["Search calls — each event's own price"]
    assert (
        search["rule"]["amount_key"] == "cost" and search["per_event"]["total_charge"] == "0.5132"
    )
    assert (search["rollup"]["sum"], search["rollup"]["events"]) == ("2", 2)
    for number in numbers.values():
        assert verify_invoice(store, settings, number).reproduced


def test_reprice_shows_a_per_event_price_change(tmp_path: Path) -> None:
    """Proposed from 16 Oct: the fixed fee 0.30 → 0.50. [10.00 on 2 Oct, 10.00 on 20 Oct] at
    2.9 % + fee: now 0.59 + 0.59 = 1.18, proposed 0.59 + 0.79 = 1.38; without events the
    usage would be unrated (never priced from hours)."""
    from usagebox_pipelines.pricing import reprice_impact

    path = folder(tmp_path / "books", pct(rate="2.9", fixed_amount="0.30"))
    proposed = {"pricebook": "p", "version": "2", "effective_from": "2026-10-16T00:00:00Z",
                "currency": "USD", "rates": pct(rate="2.9", fixed_amount="0.50")}  # fmt: skip
    (tmp_path / "proposed.yaml").write_text(yaml.safe_dump(proposed))
    frame = events_frame(
        [
            {"event_id": "a", "quantity": "10.00", "timestamp": datetime(2026, 10, 2, tzinfo=UTC)},
            {"event_id": "b", "quantity": "10.00", "timestamp": datetime(2026, 10, 20, tzinfo=UTC)},
        ]
    )
    hourly = rollup_hourly(
        frame.lazy(), datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    )
    books, accounts = load_pricebooks(path), load_accounts(path)
    out = reprice_impact(
        hourly, "2026-10", books, tmp_path / "proposed.yaml", accounts, events=frame.lazy()
    )
    row = out.filter(pl.col("account_id") == "x").row(0, named=True)
    assert (row["current"], row["proposed"], row["delta"]) == (D("1.18"), D("1.38"), D("0.20"))
    assert (row["unrated_current"], row["unrated_proposed"]) == (0, 0)


def _line(no: int, detail: str, quantity: str, price: str | None, amount: str, version: str):
    return {
        "line_no": no, "kind": "usage", "meter_id": "payments", "model_id": "card",
        "description": f"card · Payments — {detail}", "quantity": D(quantity), "unit": "units",
        "unit_price": None if price is None else D(price), "per": D(1), "amount": D(amount),
        "price_version": version, "tier": None,
    }  # fmt: skip


def test_the_invoice_shows_each_per_event_part_as_transactions_with_its_rule() -> None:
    """A fee and a minimum at one price are two rules, never one line; one part in two price
    versions at one price is one line whose transactions add up; each reads per transaction,
    so quantity × price = amount on the page (a fee's stored quantity is 0: the amounts'
    quantity is on the percentage part)."""
    rows = [
        _line(1, "prices from 2026-10-01, 2 transaction(s) at the minimum of 0.50 per transaction",
              "1.5", "0.50", "1.00", "2026-10-01"),
        _line(2, "prices from 2026-10-01, 2 transaction(s) × fixed fee 0.50", "0", "0.50",
              "1.00", "2026-10-01"),
        _line(3, "prices from 2026-10-16, 1,000 transaction(s) × fixed fee 0.50", "0", "0.50",
              "500.00", "2026-10-16"),
        _line(4, "prices from 2026-10-16, 2.9% of the amount", "20", "0.029", "0.58",
              "2026-10-16"),
    ]  # fmt: skip
    (section,) = merged_sections(rows)
    (item,) = section["items"]
    shown = {tuple(r["line_nos"]): r for r in item["rows"]}
    assert set(shown) == {(1,), (2, 3), (4,)}
    fee, minimum, share = shown[(2, 3)], shown[(1,)], shown[(4,)]
    assert (fee["shown_quantity"], fee["shown_unit"], fee["price_label"]) == (
        D(1002), "transactions", "per transaction",
    )  # fmt: skip
    assert fee["amount"] == D("501.00") == fee["shown_quantity"] * fee["unit_price"]
    assert "1,002 transaction(s) × fixed fee 0.50" in fee["detail"]
    assert minimum["shown_quantity"] == 2 and "at the minimum of 0.50" in minimum["detail"]
    assert share["shown_quantity"] == D(20) and share["shown_unit"] == "units"


def test_a_dynamic_line_says_each_event_carries_its_price() -> None:
    (section,) = merged_sections([_line(1, "each event's own price", "2", None, "0.26", "v")])
    (row,) = section["items"][0]["rows"]
    assert row["detail"] == "each event's own price" and row["shown_quantity"] == 2


def test_invoice_v5_names_free_allowances_and_percentages_and_v4_prints_them_as_issued() -> None:
    rows = [
        _line(1, "prices from 2026-10-01, included usage", "10", "0", "0.00", "2026-10-01"),
        _line(2, "prices from 2026-10-16, 2.9% of the amount", "20", "0.029", "0.58", "2026-10-16"),
    ]
    named = merged_sections(rows, named=True)[0]["items"][0]["rows"]
    assert [r["detail"] for r in named] == [
        "prices from 2026-10-01, included usage",
        "prices from 2026-10-16, 2.9% of the amount",
    ]
    issued = merged_sections(rows)[0]["items"][0]["rows"]
    assert [r["detail"] for r in issued] == ["prices from 2026-10-01", "prices from 2026-10-16"]
