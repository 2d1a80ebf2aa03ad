"""Billing months in a customer's IANA time zone (issue 17): the Period building blocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usagebox_pipelines.months import Period, fractional_offset, shift_month, zone_period

NY = "America/New_York"


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def test_event_after_utc_midnight_of_november_is_october_in_new_york() -> None:
    event = _utc("2026-11-01T03:00:00Z")
    assert event in zone_period("2026-10", NY)
    assert event not in zone_period("2026-11", NY)
    assert event in zone_period("2026-11")  # UTC


def test_new_york_october_is_edt_on_both_ends() -> None:
    # EDT (UTC-4) until 2026-11-01T06:00Z, so both midnights are at 04:00Z.
    assert zone_period("2026-10", NY) == Period(
        _utc("2026-10-01T04:00:00Z"), _utc("2026-11-01T04:00:00Z")
    )


def test_dst_change_inside_a_month() -> None:
    # November 2026: starts at EDT midnight (04:00Z), ends at EST midnight (05:00Z).
    period = zone_period("2026-11", NY)
    assert period == Period(_utc("2026-11-01T04:00:00Z"), _utc("2026-12-01T05:00:00Z"))
    assert period.end - period.start == timedelta(days=30, hours=1)


def test_local_boundary_is_half_open() -> None:
    boundary = _utc("2026-11-01T04:00:00Z")
    assert boundary not in zone_period("2026-10", NY)
    assert boundary in zone_period("2026-11", NY)
    assert boundary - timedelta(microseconds=1) in zone_period("2026-10", NY)


def test_utc_default_is_the_utc_month() -> None:
    assert zone_period("2026-10") == zone_period("2026-10", "UTC")
    assert zone_period("2026-10").start == _utc("2026-10-01T00:00:00Z")
    assert zone_period("2026-12").end == _utc("2027-01-01T00:00:00Z")


def test_half_hour_zone_is_detected() -> None:
    assert fractional_offset("Asia/Kolkata", "2026-10") == timedelta(hours=5, minutes=30)
    assert fractional_offset("Australia/Adelaide", "2026-10") is not None
    assert fractional_offset(NY, "2026-11") is None
    assert fractional_offset("Europe/Berlin", "2026-10") is None


def test_period_refuses_empty_and_non_utc() -> None:
    start = _utc("2026-10-01T00:00:00Z")
    with pytest.raises(ValueError):
        Period(start, start)
    with pytest.raises(ValueError):
        Period(start.replace(tzinfo=None), start + timedelta(hours=1))


_WHOLE_HOUR_ZONES = [
    "UTC",
    NY,
    "Europe/Berlin",
    "Asia/Tokyo",
    "Pacific/Auckland",
    "America/Los_Angeles",
]


@settings(max_examples=60, deadline=None)
@given(
    zone=st.sampled_from(_WHOLE_HOUR_ZONES),
    hours=st.lists(st.integers(min_value=0, max_value=24 * 92), max_size=40),
    first=st.sampled_from(["2026-01", "2026-03", "2026-10", "2026-12"]),
)
def test_consecutive_local_months_cover_the_span_once(
    zone: str, hours: list[int], first: str
) -> None:
    months = [shift_month(first, i) for i in range(4)]
    periods = [zone_period(m, zone) for m in months]
    for a, b in zip(periods, periods[1:], strict=False):
        assert a.end == b.start
    base = periods[0].start
    rows = [base + timedelta(hours=h) for h in hours]  # whole UTC hours
    rows = [r for r in rows if r < periods[-1].end]
    counted = sum(sum(1 for r in rows if r in p) for p in periods)
    assert counted == len(rows)
    for p in periods:  # whole-hour zones: boundaries are on UTC hours
        assert p.start.minute == 0 and p.end.minute == 0


def test_local_month_labels_each_row_in_its_accounts_zone() -> None:
    """The vectorised label (one `when` per zone) agrees with zone_period at both edges."""
    import polars as pl

    from usagebox_pipelines.pricing.accounts import Account, AccountDefaults, Accounts
    from usagebox_pipelines.pricing.zones import local_month

    ny = Account("ny", "ny", "USD", "standard", 30, time_zone=NY)
    accounts = Accounts(defaults=AccountDefaults(time_zone="Asia/Tokyo"), listed={"ny": ny})
    hours = [_utc(t) for t in ("2026-11-01T03:00:00Z", "2026-11-01T04:00:00Z")]
    hours += [_utc(t) for t in ("2026-10-31T14:00:00Z", "2026-10-31T15:00:00Z")]
    frame = pl.DataFrame(
        {"account_id": ["ny", "ny", "tokyo", "tokyo"], "hour": hours},
        schema={"account_id": pl.String, "hour": pl.Datetime("us", "UTC")},
    )
    labels = frame.select(local_month(pl.col("hour"), accounts))["hour"].to_list()
    assert labels == ["2026-10", "2026-11", "2026-10", "2026-11"]
    assert accounts.period("tokyo", "2026-10") == zone_period("2026-10", "Asia/Tokyo")
    assert accounts.span("2026-10") == Period(
        _utc("2026-09-30T15:00:00Z"), _utc("2026-11-01T04:00:00Z")
    )
