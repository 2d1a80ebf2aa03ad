"""Billing months in the customer's time zone, end to end (issue 17, ADR 0017).

Hand-computed: America/New_York is UTC-4 (EDT) until 2026-11-01T06:00Z, then UTC-5 (EST). So
New York's October is [2026-10-01T04:00Z, 2026-11-01T04:00Z) and its November
[2026-11-01T04:00Z, 2026-12-01T05:00Z), 30 days and 1 hour. The pricebook `tz` prices
`input_tokens` of `m1` at 1.00 per unit (version v1) and 2.00 from v2, effective at New York's
midnight of 16 October (2026-10-16T04:00Z).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path

import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pypdf import PdfReader

from tests.conftest import event
from tests.test_close_scenario import ingest, issued
from usagebox_pipelines import schemas
from usagebox_pipelines.catalog import CREDIT_GRANT_LEDGER as LEDGER
from usagebox_pipelines.catalog import INVOICE_LINES, Table
from usagebox_pipelines.config import DEFAULT_PRICEBOOKS, Settings
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.invoicing.credit import grant_ledger_rows, grants
from usagebox_pipelines.invoicing.render import _period_label
from usagebox_pipelines.months import Period
from usagebox_pipelines.pricing import Accounts, AccountsError, load_accounts, load_pricebooks
from usagebox_pipelines.pricing.accounts import Account, AccountDefaults
from usagebox_pipelines.pricing.rating import rate_usage
from usagebox_pipelines.pricing.zones import in_own_period, local_month, own_period_rows
from usagebox_pipelines.stages.books import all_lines
from usagebox_pipelines.stages.close import close_month
from usagebox_pipelines.stages.drafts import refresh_drafts
from usagebox_pipelines.stages.explain import explain_invoice
from usagebox_pipelines.stages.rating import build_rated_usage
from usagebox_pipelines.stages.reproduce import verify_invoice
from usagebox_pipelines.stages.rollups import build_usage_hourly, build_usage_monthly
from usagebox_pipelines.stages.verify import draft_lines_match_rated
from usagebox_pipelines.storage import DeltaStore

NY = "America/New_York"
BOOK = {
    "pricebook": "tz",
    "currency": "USD",
    "rates": [{"meter_id": "input_tokens", "model_id": "m1", "unit_price": "1.00"}],
}


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _folder(tmp: Path, accounts: dict, *, v2: bool = False, rates: list | None = None) -> Path:
    """A pricebook folder: `tz` v1 (1.00, or `rates`) from 2026-09-01, optionally v2 (2.00)
    from New York's midnight of 16 October, and `accounts.yaml` with `accounts` (defaults:
    `tz`)."""
    tmp.mkdir(parents=True, exist_ok=True)
    v1 = {**BOOK, "version": "v1", "effective_from": "2026-09-01T00:00:00Z"}
    if rates is not None:
        v1["rates"] = rates
    (tmp / "tz-v1.yaml").write_text(yaml.safe_dump(v1))
    if v2:
        rates = [{**BOOK["rates"][0], "unit_price": "2.00"}]
        later = {**BOOK, "version": "v2", "effective_from": "2026-10-16T04:00:00Z", "rates": rates}
        (tmp / "tz-v2.yaml").write_text(yaml.safe_dump(later))
    doc = {"defaults": {"pricebook": "tz"}, "accounts": accounts}
    (tmp / "accounts.yaml").write_text(yaml.safe_dump(doc))
    return tmp


def _hourly(*rows: tuple[str, str, object]) -> pl.DataFrame:
    """usage_hourly rows of (account, UTC hour, quantity), meter input_tokens, model m1."""
    records = [
        {
            "account_id": account,
            "meter_id": "input_tokens",
            "model_id": "m1",
            "billable": True,
            "dimensions": "{}",
            "hour": _utc(at),
            "sum": D(str(quantity)),
            "count": 1,
        }
        for account, at, quantity in rows
    ]
    return schemas.conform(pl.DataFrame(records, infer_schema_length=None), schemas.USAGE_HOURLY)


def _usage(rated: pl.DataFrame) -> dict[str, D]:
    """Per account: the quantity of its usage lines."""
    usage = rated.filter(pl.col("line_kind") == "usage")
    sums = usage.group_by("account_id").agg(pl.col("quantity").sum())
    return {a: D(q).normalize() for a, q in sums.iter_rows()}


# --------------------------------------------------------------------------- rating


def test_event_at_3am_utc_on_1_november_is_october_in_new_york_november_in_utc(
    tmp_path: Path,
) -> None:
    folder = _folder(tmp_path, {"ny": {"time_zone": NY}, "utc": {}})
    books, accounts = load_pricebooks(folder), load_accounts(folder)
    hourly = _hourly(
        ("ny", "2026-10-01T02:00:00Z", 1),  # New York: 30 September, 22:00
        ("ny", "2026-10-15T12:00:00Z", 10),
        ("ny", "2026-11-01T03:00:00Z", 100),  # New York: 31 October, 23:00
        ("ny", "2026-11-01T04:00:00Z", 1000),  # New York: 1 November, 00:00
        ("utc", "2026-10-01T02:00:00Z", 1),
        ("utc", "2026-10-15T12:00:00Z", 10),
        ("utc", "2026-11-01T03:00:00Z", 100),
        ("utc", "2026-11-01T04:00:00Z", 1000),
    )
    october = rate_usage(hourly, "2026-10", books, accounts).rated  # one run, both accounts
    november = rate_usage(hourly, "2026-11", books, accounts).rated
    assert _usage(october) == {"ny": D(110), "utc": D(11)}
    assert _usage(november) == {"ny": D(1000), "utc": D(1100)}
    ny_october = october.filter((pl.col("account_id") == "ny") & (pl.col("line_kind") == "usage"))
    assert ny_october["last_hour"].max() == _utc("2026-11-01T03:00:00Z")
    assert ny_october["period"].unique().to_list() == ["2026-10"]


def test_utc_accounts_rate_exactly_as_without_zones(tmp_path: Path) -> None:
    """A zoned neighbour changes nothing for a UTC account: the same rows as a file with no
    zone at all (the union window is read, the UTC account keeps its UTC month)."""
    hourly = _hourly(
        ("utc", "2026-09-30T23:00:00Z", 3),
        ("utc", "2026-10-01T00:00:00Z", 5),
        ("utc", "2026-10-31T23:00:00Z", 7),
        ("utc", "2026-11-01T00:00:00Z", 11),
        ("ny", "2026-11-01T03:00:00Z", 13),
    )
    zoned = _folder(tmp_path / "zoned", {"ny": {"time_zone": NY}, "utc": {}})
    plain = _folder(tmp_path / "plain", {"ny": {}, "utc": {}})
    books = load_pricebooks(zoned)
    mine = pl.col("account_id") == "utc"
    with_zone = rate_usage(hourly, "2026-10", books, load_accounts(zoned)).rated.filter(mine)
    without = rate_usage(hourly, "2026-10", books, load_accounts(plain)).rated.filter(mine)
    assert with_zone.equals(without)
    assert _usage(with_zone) == {"utc": D(12)}


def test_new_york_november_has_721_hours(tmp_path: Path) -> None:
    """DST ends on 1 November: New York's November is 30 days and 1 hour of UTC hours."""
    folder = _folder(tmp_path, {"ny": {"time_zone": NY}, "utc": {}})
    books, accounts = load_pricebooks(folder), load_accounts(folder)
    start = _utc("2026-10-31T00:00:00Z")
    every_hour = [
        (account, (start + timedelta(hours=h)).isoformat(), 1)
        for account in ("ny", "utc")
        for h in range(24 * 33)
    ]
    november = rate_usage(_hourly(*every_hour), "2026-11", books, accounts).rated
    assert _usage(november) == {"ny": D(721), "utc": D(720)}
    assert accounts.period("ny", "2026-11") == Period(
        _utc("2026-11-01T04:00:00Z"), _utc("2026-12-01T05:00:00Z")
    )


def test_price_version_change_at_new_york_midnight(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"ny": {"time_zone": NY}}, v2=True)
    books, accounts = load_pricebooks(folder), load_accounts(folder)
    hourly = _hourly(
        ("ny", "2026-10-16T03:00:00Z", 10),  # 15 October 23:00 in New York: v1, 1.00
        ("ny", "2026-10-16T04:00:00Z", 10),  # 16 October 00:00 in New York: v2, 2.00
        ("ny", "2026-11-01T03:00:00Z", 1),  # still October in New York: v2
    )
    rated = rate_usage(hourly, "2026-10", books, accounts).rated
    lines = rated.filter(pl.col("line_kind") == "usage").sort("price_version")
    got = [
        (v, D(q).normalize(), D(a))
        for v, q, a in lines.select("price_version", "quantity", "amount").rows()
    ]
    assert got == [("v1", D(10), D("10.00")), ("v2", D(11), D("22.00"))]


def test_graduated_tiers_count_the_local_month(tmp_path: Path) -> None:
    """The first 10 units of the month at 1.00, the rest at 0.50: New York's October starts
    at 04:00Z, so the 8 units at 02:00Z on 1 October are September's and do not fill its tier."""
    tiers = {"mode": "graduated", "steps": [
        {"up_to": 10, "unit_price": "1.00"}, {"up_to": None, "unit_price": "0.50"},
    ]}  # fmt: skip
    rate = {"meter_id": "input_tokens", "model_id": "m1", "tiers": tiers}
    folder = _folder(tmp_path, {"ny": {"time_zone": NY}, "utc": {}}, rates=[rate])
    books, accounts = load_pricebooks(folder), load_accounts(folder)
    hourly = _hourly(
        *((a, "2026-10-01T02:00:00Z", 8) for a in ("ny", "utc")),
        *((a, "2026-10-02T12:00:00Z", 8) for a in ("ny", "utc")),
    )
    rated = rate_usage(hourly, "2026-10", books, accounts).rated
    usage = rated.filter(pl.col("line_kind") == "usage")
    amounts = usage.group_by("account_id").agg(pl.col("amount").sum())
    assert {a: D(x) for a, x in amounts.iter_rows()} == {
        "ny": D("8.00"),  # 8 in tier 1
        "utc": D("13.00"),  # 10 × 1.00 + 6 × 0.50
    }


def test_grant_expiring_at_new_york_midnight_pays_october_not_november(tmp_path: Path) -> None:
    """`expires: 2026-11-01T04:00:00Z` is New York's midnight of 1 November: the grant is
    usable in New York's October only. A UTC account's November starts at 00:00Z, before the
    expiry, so the same grant still pays its November (the grant dates are instants)."""
    grant = [{"id": "promo", "amount": "5.00", "expires": "2026-11-01T04:00:00Z"}]
    folder = _folder(
        tmp_path,
        {"ny": {"time_zone": NY, "credit_grants": grant}, "utc": {"credit_grants": grant}},
    )
    books, accounts = load_pricebooks(folder), load_accounts(folder)
    hourly = _hourly(
        ("ny", "2026-10-20T12:00:00Z", 2),
        ("ny", "2026-11-10T12:00:00Z", 3),
        ("utc", "2026-10-20T12:00:00Z", 2),
        ("utc", "2026-11-10T12:00:00Z", 3),
    )

    def credit(period: str, opening: dict | None = None) -> dict[str, D]:
        rated = rate_usage(hourly, period, books, accounts, opening).rated
        rows = rated.filter(pl.col("line_kind") == "credit")
        return {a: D(x) for a, x in rows.select("account_id", "amount").rows()}

    assert credit("2026-10") == {"ny": D("-2.00"), "utc": D("-2.00")}
    left = {"ny": {"promo": D("3.00")}, "utc": {"promo": D("3.00")}}
    assert credit("2026-11", left) == {"utc": D("-3.00")}  # expired for New York
    # the ledger records New York's expiry at the close of its November (its start = expiry)
    starts = {a: accounts.period(a, "2026-11").start for a in ("ny", "utc")}
    ledger = grant_ledger_rows(
        grants(accounts), ["2026-11"], _empty(INVOICE_LINES), _empty(LEDGER), "2026-11", starts
    )
    expired = ledger.filter(pl.col("kind") == "expiry")["account_id"].to_list()
    assert expired == ["ny"]


def _empty(table: Table) -> pl.DataFrame:
    return pl.DataFrame(schema=table.schema)


def test_grant_effective_at_new_york_midnight_starts_with_its_november(tmp_path: Path) -> None:
    grant = [{"id": "nov", "amount": "5.00", "effective": "2026-11-01T04:00:00Z"}]
    folder = _folder(tmp_path, {"ny": {"time_zone": NY, "credit_grants": grant}})
    books, accounts = load_pricebooks(folder), load_accounts(folder)
    hourly = _hourly(("ny", "2026-11-01T03:00:00Z", 2), ("ny", "2026-11-01T05:00:00Z", 3))
    october = rate_usage(hourly, "2026-10", books, accounts).rated
    november = rate_usage(hourly, "2026-11", books, accounts).rated
    assert october.filter(pl.col("line_kind") == "credit").is_empty()  # 2.00 due, not paid
    paid = november.filter(pl.col("line_kind") == "credit")["amount"].to_list()
    assert paid == [D("-3.00")]


# --------------------------------------------------------------------------- accounts.yaml


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"accounts": {"a": {"time_zone": "Mars/Olympus"}}}, "accounts.a.time_zone", "unknown"),
        ({"accounts": {"a": {"time_zone": "Asia/Kolkata"}}}, "accounts.a.time_zone", "UTC+05:30"),
        ({"defaults": {"time_zone": "Australia/Adelaide"}}, "defaults.time_zone", "whole number"),
        ({"accounts": {"a": {"time_zone": 5}}}, "accounts.a.time_zone", ""),
    ],
)  # fmt: skip
def test_bad_time_zones_are_refused_with_file_and_field(
    tmp_path: Path, body: dict, field: str, reason: str
) -> None:
    (tmp_path / "accounts.yaml").write_text(yaml.safe_dump(body))
    with pytest.raises(AccountsError) as err:
        load_accounts(tmp_path)
    message = str(err.value)
    assert f"accounts.yaml: {field}: " in message and reason in message
    if "Kolkata" in json.dumps(body):
        assert "usage_hourly is rolled up per UTC hour" in message


def test_time_zone_is_inherited_defaulted_and_utc_is_no_zone(tmp_path: Path) -> None:
    doc = {
        "defaults": {"time_zone": "Europe/Berlin"},
        "accounts": {
            "org": {"time_zone": NY},
            "team": {"parent": "org"},
            "utc-team": {"parent": "org", "time_zone": "UTC"},
            "plain": {},
        },
    }
    (tmp_path / "accounts.yaml").write_text(yaml.safe_dump(doc))
    accounts = load_accounts(tmp_path)
    zones = {a: accounts.get(a).time_zone for a in ("org", "team", "utc-team", "plain", "other")}
    assert zones == {
        "org": NY,
        "team": NY,
        "utc-team": None,
        "plain": "Europe/Berlin",
        "other": "Europe/Berlin",  # not listed: the defaults
    }
    assert accounts.period("utc-team", "2026-10") == Period(
        _utc("2026-10-01T00:00:00Z"), _utc("2026-11-01T00:00:00Z")
    )
    # Berlin's October starts 2026-09-30T22:00Z (CEST); New York's ends 2026-11-01T04:00Z
    assert accounts.span("2026-10") == Period(
        _utc("2026-09-30T22:00:00Z"), _utc("2026-11-01T04:00:00Z")
    )


def test_invoice_period_label_names_the_zone_only_when_set() -> None:
    assert _period_label("2026-10") == "1–31 Oct 2026"
    assert _period_label("2026-10", None) == "1–31 Oct 2026"
    assert _period_label("2026-10", NY) == "1 Oct 2026 – 31 Oct 2026 (America/New_York)"
    assert _period_label("2026-02", "Asia/Tokyo") == "1 Feb 2026 – 28 Feb 2026 (Asia/Tokyo)"


# --------------------------------------------------------------------------- close


NY_ACCOUNT = """
  acct-ny:
    name: "New York Co."
    time_zone: America/New_York
"""
#: gpt-4o input is 3.125 per 1 M in the shipped pricebook.
CLOSE_EVENTS = [
    event("ny-oct", "acct-ny", 1_000_000, "2026-10-10T12:00:00Z"),
    event("ny-edge", "acct-ny", 2_000_000, "2026-11-01T03:00:00Z"),  # New York: 31 Oct 23:00
    event("ny-nov", "acct-ny", 4_000_000, "2026-11-01T04:00:00Z"),  # New York: 1 Nov 00:00
    event("utc-oct", "acct-001", 1_000_000, "2026-10-10T12:00:00Z"),
    event("utc-edge", "acct-001", 2_000_000, "2026-11-01T03:00:00Z"),  # UTC: November
]


def _build(store: DeltaStore, books: Path, month: str) -> None:
    """The hourly and monthly jobs of `month` over every account's month (as `run --month`)."""
    span = load_accounts(books).span(month)
    build_usage_hourly(store, span.start, span.end)
    for utc_month in sorted({span.start.strftime("%Y-%m"), month}):
        build_usage_monthly(store, utc_month)
    build_rated_usage(store, books, month)


def _quantities(store: DeltaStore, month: str) -> dict[str, D]:
    lines = all_lines(store).filter(
        (pl.col("period") == month) & (pl.col("kind") == "usage")
        & pl.col("invoice_number").is_not_null()
    )  # fmt: skip
    sums = lines.group_by("account_id").agg(pl.col("quantity").sum())
    return {a: D(q).normalize() for a, q in sums.iter_rows()}


def test_close_waits_for_new_york_and_bills_its_local_month(tmp_path: Path) -> None:
    books = tmp_path / "pricebooks"
    shutil.copytree(DEFAULT_PRICEBOOKS, books)
    (books / "accounts.yaml").write_text((books / "accounts.yaml").read_text() + NY_ACCOUNT)
    store, config = DeltaStore(str(tmp_path / "home")), Settings(str(tmp_path / "home"), books)
    ingest(store, tmp_path / "in" / "events.jsonl", CLOSE_EVENTS)
    _build(store, books, "2026-10")
    refresh_drafts(store, books, "2026-10")
    assert draft_lines_match_rated(store, books, "2026-10").passed  # invariant 4, per zone
    # 1 November 03:59Z: still October in New York, so October cannot close yet
    with pytest.raises(UsageboxError, match="not over yet") as refused:
        close_month(store, config, "2026-10", approve=True, now=_utc("2026-11-01T03:59:00Z"))
    assert "America/New_York" in str(refused.value) and "2026-11-01T04:00:00Z" in str(refused.value)
    assert type(refused.value) is UsageboxError  # exit code 2, like every refused request
    result = close_month(store, config, "2026-10", approve=True, now=_utc("2026-11-01T04:00:00Z"))
    assert result.status == "closed"
    assert _quantities(store, "2026-10") == {"acct-ny": D(3_000_000), "acct-001": D(1_000_000)}
    ny = issued(store, "2026-10").filter(pl.col("account_id") == "acct-ny").row(0, named=True)
    assert verify_invoice(store, config, ny["invoice_number"]).reproduced
    pdf = " ".join(p.extract_text() for p in PdfReader(config.documents_dir / ny["pdf_path"]).pages)
    assert "1Oct2026–31Oct2026(America/New_York)" in "".join(pdf.split())  # wrapped lines
    explained = explain_invoice(store, config, ny["invoice_number"]).to_dict()
    assert explained["period_window"]["from"] == "2026-10-01T04:00:00Z"
    assert explained["period_window"]["to"] == "2026-11-01T04:00:00Z"
    utc = issued(store, "2026-10").filter(pl.col("account_id") == "acct-001").row(0, named=True)
    assert "period_window" not in explain_invoice(store, config, utc["invoice_number"]).to_dict()

    # a late event of New York's October (after UTC midnight) is restated on its November
    # invoice; the same instant for the UTC account is plain November usage
    late = [
        event("ny-late", "acct-ny", 1_000_000, "2026-11-01T02:00:00Z"),
        event("utc-late", "acct-001", 1_000_000, "2026-11-01T02:00:00Z"),
    ]
    ingest(store, tmp_path / "in" / "late.jsonl", late)
    _build(store, books, "2026-11")
    close_month(store, config, "2026-11", approve=True, now=_utc("2026-12-01T05:00:00Z"))
    assert _quantities(store, "2026-11") == {"acct-ny": D(4_000_000), "acct-001": D(3_000_000)}
    adjustments = all_lines(store).filter(
        (pl.col("period") == "2026-11") & (pl.col("kind") == "adjustment")
    )
    assert adjustments.select("account_id", "adjusts_period").rows() == [("acct-ny", "2026-10")]
    assert D(adjustments["amount"][0]) == D("3.13")  # 1 M at 3.125, rounded half-up
    number = adjustments["invoice_number"][0]
    line = next(
        x for x in explain_invoice(store, config, number).lines if x["kind"] == "adjustment"
    )  # the late event behind it: New York's October, after UTC midnight
    assert line["late_events"]["count"] == 1
    assert line["late_events"]["events"][0]["event_id"] == "ny-late"


def test_close_without_zones_is_not_held_back(tmp_path: Path) -> None:
    """Books without time zones close as before: the guard is only for zoned accounts."""
    from usagebox_pipelines.stages.close import refuse_unfinished_month

    refuse_unfinished_month(Accounts(), "2026-10", _utc("2026-10-15T00:00:00Z"))
    zoned = Accounts(defaults=AccountDefaults(time_zone="Asia/Tokyo"))
    refuse_unfinished_month(zoned, "2026-10", _utc("2026-10-31T15:00:00Z"))  # Tokyo is over
    with pytest.raises(UsageboxError, match="Asia/Tokyo"):
        refuse_unfinished_month(zoned, "2026-10", _utc("2026-10-31T14:00:00Z"))


# --------------------------------------------------------------------------- property


_WHOLE_HOUR_ZONES = [
    None, NY, "Europe/Berlin", "Asia/Tokyo", "Pacific/Auckland", "America/Los_Angeles",
    "Pacific/Kiritimati", "Etc/GMT+12",
]  # fmt: skip
_MONTHS = ["2026-09", "2026-10", "2026-11", "2026-12"]
_FIRST = _utc("2026-09-02T00:00:00Z")  # inside September of every zone above
_HOURS = 24 * 115  # up to 2026-12-26: inside December of every zone above


@pytest.fixture(scope="module")
def prop_books(tmp_path_factory: pytest.TempPathFactory):
    return load_pricebooks(_folder(tmp_path_factory.mktemp("prop"), {}))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    default=st.sampled_from(_WHOLE_HOUR_ZONES),
    zones=st.lists(st.sampled_from(_WHOLE_HOUR_ZONES), min_size=1, max_size=4),
    rows=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, _HOURS - 1), st.integers(1, 1000)),
        min_size=1,
        max_size=60,
    ),
)
def test_every_hourly_row_is_billed_in_exactly_one_month_per_account(
    prop_books, default: str | None, zones: list[str | None], rows: list[tuple[int, int, int]]
) -> None:
    """Over any rows and whole-hour zones (listed accounts' and the defaults'): rated across
    four consecutive months (one rating run per month over every account), each account's
    usage is its rows' quantity exactly (nothing lost, nothing billed in two adjacent months),
    and every row falls in exactly one of its account's periods."""
    listed = {
        f"a{i}": Account(f"a{i}", f"a{i}", "USD", "tz", 30, time_zone=zone)
        for i, zone in enumerate(zones)
    }
    accounts = Accounts(defaults=AccountDefaults(pricebook="tz", time_zone=default), listed=listed)
    ids = [*sorted(listed), "unlisted"]  # the last one bills in the defaults' zone
    hourly = _hourly(
        *((ids[a % len(ids)], (_FIRST + timedelta(hours=h)).isoformat(), q) for a, h, q in rows)
    )
    billed: dict[str, D] = {}
    for month in _MONTHS:
        for account, quantity in _usage(
            rate_usage(hourly, month, prop_books, accounts).rated
        ).items():
            billed[account] = billed.get(account, D(0)) + quantity
    sent = hourly.group_by("account_id").agg(pl.col("sum").sum())
    assert billed == {a: D(q).normalize() for a, q in sent.iter_rows()}
    counted = pl.concat(
        [own_period_rows(hourly, m, accounts).select("account_id", "hour") for m in _MONTHS]
    )
    assert counted.height == hourly.height
    assert counted.sort(pl.all()).equals(hourly.select("account_id", "hour").sort(pl.all()))
    # the vectorised month label agrees with the windows
    labels = hourly.with_columns(m=local_month(pl.col("hour"), accounts))
    for month in _MONTHS:
        mine = own_period_rows(hourly, month, accounts).sort(pl.all())
        assert labels.filter(pl.col("m") == month).height == mine.height
        lazy = in_own_period(hourly.lazy(), month, accounts).collect()  # control totals' form
        assert lazy.sort(pl.all()).equals(mine)


def test_days_at_a_month_edge_also_rebuild_the_zoned_neighbour_month() -> None:
    """After an ingest, a touched 1 November (UTC) holds New York's last October hours, and a
    touched 31 October Tokyo's first November hours; without zones only the UTC months."""
    from usagebox_pipelines.pricing.zones import months_of_days

    days = ["2026-10-15", "2026-11-01"]
    assert months_of_days(days, Accounts()) == ["2026-10", "2026-11"]
    ny = Accounts(defaults=AccountDefaults(time_zone=NY))
    assert months_of_days(["2026-11-01"], ny) == ["2026-10", "2026-11"]
    assert months_of_days(["2026-10-31"], ny) == ["2026-10"]
    tokyo = Accounts(defaults=AccountDefaults(time_zone="Asia/Tokyo"))
    assert months_of_days(["2026-10-31"], tokyo) == ["2026-10", "2026-11"]
    assert months_of_days(["2026-11-01"], tokyo) == ["2026-11"]


def test_cli_close_of_an_unfinished_zoned_month_exits_2(tmp_path: Path, capsys) -> None:
    """`usagebox close` (the clock as now) refuses a month no zone has finished: one line on
    stderr, exit 2, no traceback."""
    from tests.conftest import write_jsonl
    from usagebox_pipelines.cli import cli_main

    books = tmp_path / "pricebooks"
    shutil.copytree(DEFAULT_PRICEBOOKS, books)
    (books / "accounts.yaml").write_text((books / "accounts.yaml").read_text() + NY_ACCOUNT)
    home = tmp_path / "home"
    events = write_jsonl(tmp_path / "e.jsonl", [event("e1", "acct-ny")])
    assert cli_main(["ingest", str(events), "--home", str(home)]) == 0
    capsys.readouterr()
    code = cli_main(["close", "2099-01", "--home", str(home), "--pricebooks", str(books)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "close 2099-01 refused: the month is not over yet" in err


def test_an_event_is_late_for_its_accounts_closed_local_month() -> None:
    """With New York's October closed, 2026-11-01T02:00Z is late for a New York account (its
    October) and not for a UTC account (its open November), even in an hour never built."""
    from usagebox_pipelines.stages.ingest import _LateContext

    accounts = Accounts(listed={"ny": Account("ny", "ny", "USD", "standard", 30, time_zone=NY)})
    closed = pl.Series("period", ["2026-10"], dtype=pl.String)
    built = pl.Series("hour", [], dtype=schemas.TS)
    window = (_utc("2020-01-01T00:00:00Z"), _utc("2030-01-01T00:00:00Z"))
    rows = pl.DataFrame(
        {"account_id": ["ny", "utc"], "hour": [_utc("2026-11-01T02:00:00Z")] * 2},
        schema={"account_id": pl.String, "hour": schemas.TS},
    )
    zoned = _LateContext(built, closed, window, accounts).is_late(pl.col("hour"))
    assert rows.select(zoned)["hour"].to_list() == [True, False]
    utc_only = _LateContext(built, closed, window).is_late(pl.col("hour"))
    assert rows.select(utc_only)["hour"].to_list() == [False, False]  # as before zones


def test_guardrail_spend_matches_the_utc_month_for_zoned_accounts(tmp_path: Path) -> None:
    """`match_usage` without `own_periods` (guardrail spend) keeps the UTC month: budgets stay
    on UTC months (ADR 0017); invoices (`rate_usage`) take New York's own month."""
    from usagebox_pipelines.pricing.rating import match_usage

    folder = _folder(tmp_path, {"ny": {"time_zone": NY}})
    books, accounts = load_pricebooks(folder), load_accounts(folder)
    hourly = _hourly(("ny", "2026-10-01T02:00:00Z", 1), ("ny", "2026-11-01T03:00:00Z", 10))
    budget = match_usage(hourly, "2026-10", books, accounts)
    assert budget["hour"].to_list() == [_utc("2026-10-01T02:00:00Z")]
    invoice = match_usage(hourly, "2026-10", books, accounts, own_periods=True)
    assert invoice["hour"].to_list() == [_utc("2026-11-01T03:00:00Z")]
