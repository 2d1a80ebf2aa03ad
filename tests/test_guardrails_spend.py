"""spend_state scenarios with hand-computed answers (prices: 1.00 per input token, see fixtures).

Each scenario states its numbers in the test name or body, so a failure reads as arithmetic.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D
from pathlib import Path

import polars as pl
import pytest

from tests.test_guardrails_fixtures import (
    PERIOD,
    START,
    at,
    evaluate,
    event_rows,
    hourly_rows,
    row,
    steady,
    write_books,
)
from usagebox_pipelines.guardrails.budgets import build_budget_tree
from usagebox_pipelines.guardrails.spend import month_usage
from usagebox_pipelines.guardrails.state import evaluate_spend
from usagebox_pipelines.pricing import load_accounts, load_pricebooks
from usagebox_pipelines.schemas import HOUR_BUILDS


@pytest.fixture
def books(tmp_path: Path) -> Path:
    return write_books(tmp_path / "pricebooks")


def test_crossing_80_and_100_percent_at_known_hours(books: Path) -> None:
    """10 a hour against 100: 80 is reached at the end of hour 7, 100 at the end of hour 9."""
    result = evaluate(books, hourly_rows(steady("solo", 10, 12)), at(12))
    solo = row(result.state, "solo")
    assert solo["spend"] == D(120) and solo["pct_of_budget"] == D(120)
    assert solo["soft_crossed_at"] == at(7) and solo["spend_at_soft"] == D(80)
    assert solo["hard_crossed_at"] == at(9) and solo["spend_at_hard"] == D(100)
    assert solo["status"] == "hard_stop" and solo["rule"] == "budget_hard"
    assert solo["remaining"] == D(-20) and solo["status_since"] == at(9)
    steps = result.steps.filter(pl.col("account_id") == "solo")
    assert steps.select("status", "at", "window_to").rows() == [
        ("soft_alert", at(7), at(8)),
        ("hard_stop", at(9), at(10)),
    ]


def test_just_below_the_soft_threshold_stays_ok(books: Path) -> None:
    """79 of 100 after 7.9 hours of 10/h is below the 80 % soft threshold."""
    rows = [*steady("solo", 10, 7), ("solo", "input_tokens", 7, 9)]
    solo = row(evaluate(books, hourly_rows(rows), at(8)).state, "solo")
    assert solo["spend"] == D(79) and solo["status"] == "ok"
    assert solo["soft_crossed_at"] is None and solo["hard_crossed_at"] is None


def test_child_team_exhausts_its_allocation_while_org_has_room(books: Path) -> None:
    """team 10/h against its 100 HARD allocation; sibling 5/h; org 1000 over the subtree."""
    rows = steady("team", 10, 12) + steady("sibling", 5, 12)
    state = evaluate(books, hourly_rows(rows), at(12)).state
    team, org, sibling = row(state, "team"), row(state, "org"), row(state, "sibling")
    assert team["status"] == "hard_stop" and team["hard_crossed_at"] == at(9)
    assert team["spend"] == D(120) and team["effective_remaining"] == D(-20)
    assert team["limited_by"] == "team" and team["parent_remaining"] == D(820)
    assert org["spend"] == D(180) and org["own_spend"] == D(0) and org["status"] == "ok"
    assert org["pct_of_budget"] == D(18) and org["effective_remaining"] == D(820)
    assert org["members"] == "org,sibling,team" and org["level"] == 0 and team["level"] == 1
    assert sibling["status"] == "ok" and sibling["budget"] is None
    assert sibling["effective_remaining"] == D(820) and sibling["limited_by"] == "org"


def test_exhausted_parent_stops_every_child(books: Path) -> None:
    """org2 (100, HARD) reaches 100 at the end of hour 9 through sib2 alone: team2 and sib2
    inherit the hard stop from the parent's remainder, though team2 spent nothing."""
    state = evaluate(books, hourly_rows(steady("sib2", 10, 12)), at(12)).state
    org2, team2, sib2 = row(state, "org2"), row(state, "team2"), row(state, "sib2")
    assert org2["status"] == "hard_stop" and org2["hard_crossed_at"] == at(9)
    for child in (team2, sib2):
        assert child["status"] == "hard_stop" and child["rule"] == "parent_remainder"
        assert child["status_since"] == at(9) and child["limited_by"] == "org2"
        assert child["effective_remaining"] == D(-20)
    assert team2["spend"] == D(0) and team2["remaining"] == D(80)


def test_burn_rate_projection(books: Path) -> None:
    """5/h for 8 hours: 40 spent, burn 5/h both windows, 60 left → hard cap at 20:00."""
    proj = row(evaluate(books, hourly_rows(steady("proj", 5, 8)), at(8)).state, "proj")
    assert proj["spend"] == D(40)
    assert proj["burn_1h"] == D(5) and proj["burn_24h"] == D(5)
    assert proj["burn_window_from"] == START
    assert proj["projected_hard_at"] == at(20) and proj["projected_in_period"] is True


def test_a_trickle_of_spend_projects_no_hard_cap_time(books: Path) -> None:
    """10^-6 an hour against 100 left would reach it in ~11,000 years: beyond any datetime,
    so never (no projection) rather than an overflow that fails the whole evaluation."""
    proj = row(
        evaluate(books, hourly_rows([("proj", "input_tokens", 0, D("0.000001"))]), at(1)).state,
        "proj",
    )
    assert proj["burn_24h"] == D("0.000001") and proj["spend"] < proj["hard_threshold"]
    assert proj["projected_hard_at"] is None and proj["projected_in_period"] is None


def test_open_hour_comes_from_events_with_exact_windows(books: Path) -> None:
    """Rollup hours 0–6 at 5/h (35); hour 7 from events (2 at 07:10, 3 at 07:40); the open hour
    08:00–08:30 has 4 at 08:15 (08:45 is after now). MTD 44; last hour [07:30, 08:30) = 7;
    last 24 h clipped to [00:00, 08:30) = 44 / 8.5 h; projection (100 − 44) / (44 / 8.5) h."""
    hourly = hourly_rows(steady("proj", 5, 7))
    events = event_rows(
        [
            ("e1", "proj", "input_tokens", at(7 + 10 / 60), 2),
            ("e2", "proj", "input_tokens", at(7 + 40 / 60), 3),
            ("e3", "proj", "input_tokens", at(8.25), 4),
            ("e4", "proj", "input_tokens", at(8.75), 100),
        ]
    )
    builds = pl.DataFrame(
        {"hour": [at(h) for h in range(8)], "built_at": [at(h + 1) for h in range(8)]},
        schema={"hour": HOUR_BUILDS["hour"], "built_at": HOUR_BUILDS["built_at"]},
    )
    now = at(8.5)
    usage = month_usage(
        hourly.lazy(), events.lazy(), builds, PERIOD, now, [now - timedelta(hours=1)]
    )
    assert usage.get_column("sum").sum() == D(44)
    accounts = load_accounts(books)
    tree = build_budget_tree(accounts, ["proj"])
    state = evaluate_spend(usage, tree, PERIOD, now, load_pricebooks(books), accounts).state
    proj = row(state, "proj")
    assert proj["spend"] == D(44) and proj["burn_1h"] == D(7)
    assert proj["burn_24h"] == (D(44) / D("8.5")).quantize(D("1e-12"))
    hours_left = D(56) * D("8.5") / D(44)  # 10.818181... h
    micros = (hours_left * 3_600_000_000).to_integral_value(rounding="ROUND_CEILING")
    assert proj["projected_hard_at"] == now + timedelta(microseconds=int(micros))


def test_stale_rollup_hour_is_read_from_events(books: Path) -> None:
    """An event ingested after hour 3 was rolled up makes that hour come from events."""
    hourly = hourly_rows([("proj", "input_tokens", 3, 5)])
    late = event_rows(
        [("a", "proj", "input_tokens", at(3.5), 5), ("b", "proj", "input_tokens", at(3.6), 7)]
    )
    late = late.with_columns(ingested_at=pl.lit(at(10)).cast(late.schema["ingested_at"]))
    builds = pl.DataFrame(
        {"hour": [at(3)], "built_at": [at(4)]},
        schema={"hour": HOUR_BUILDS["hour"], "built_at": HOUR_BUILDS["built_at"]},
    )
    usage = month_usage(hourly.lazy(), late.lazy(), builds, PERIOD, at(12))
    assert usage.get_column("sum").sum() == D(12)


def test_caps_are_measured_at_list_price_and_budgets_after_discount(books: Path) -> None:
    """disc: 10 % discount; 12 output tokens (24.00 list, cap 20 → hard at 100 %) and 10 input
    tokens (10.00 list). Budget spend = 34.00 × 0.9 = 30.60 of 50 (61.2 %)."""
    rows = [("disc", "output_tokens", 0, 12), ("disc", "input_tokens", 1, 10)]
    state = evaluate(books, hourly_rows(rows), at(2)).state
    budget, cap = row(state, "disc"), row(state, "disc", "cap:output_tokens:*")
    assert budget["spend"] == D("30.6") and budget["billed"] == D("30.60")
    assert budget["pct_of_budget"] == D("61.2") and budget["status"] == "ok"
    assert cap["spend"] == D(24) and cap["status"] == "hard_alert" and cap["rule"] == "cap_hard"
    assert cap["soft_crossed_at"] == at(0) and cap["hard_crossed_at"] == at(0)


def test_nothing_used_nothing_spent(books: Path) -> None:
    result = evaluate(books, hourly_rows([("solo", "input_tokens", 0, 1)]), START)
    solo = row(result.state, "solo")
    assert solo["spend"] == D(0) and solo["status"] == "ok" and solo["burn_1h"] is None
