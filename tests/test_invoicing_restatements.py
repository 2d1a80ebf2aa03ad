"""Drafts re-rate a closed month only when an input of its rating changed, with the same result.

Built on the close scenario (October and November closed, see tests/test_close_scenario.py).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from tests.conftest import event
from tests.test_close_scenario import NOV, OCT, build_month, ingest, scenario
from usagebox_pipelines.catalog import GUARDRAIL_DECISIONS, RESTATED_TOTALS
from usagebox_pipelines.invoicing.adjustments import adjustments_for
from usagebox_pipelines.stages.books import closed_periods, issued_invoices, issued_lines
from usagebox_pipelines.stages.drafts import pending_adjustments, refresh_drafts
from usagebox_pipelines.stages.rating import rate_month
from usagebox_pipelines.stages.restatements import Restatements
from usagebox_pipelines.stages.verify import draft_lines_match_rated
from usagebox_pipelines.storage import DeltaStore

DEC = "2026-12"


def rerated(store: DeltaStore, books: Path) -> list[str]:
    """The closed months a December draft refresh re-rates now (and stores)."""
    r = Restatements(store, books, sorted(closed_periods(store)))
    for month in r.months:
        r.totals(month)
    r.remember()
    return r.rerated


def full_rerating(store: DeltaStore, books: Path) -> pl.DataFrame:
    """The adjustments of re-rating every closed month (what drafts did before)."""
    closed = closed_periods(store)
    issued = issued_lines(store, issued_invoices(store, closed))
    return adjustments_for(issued, {q: rate_month(store, books, q).rated for q in closed})


def test_a_closed_month_is_re_rated_only_when_its_inputs_change(tmp_path):
    store, settings = scenario().home_at("nov_closed", tmp_path / "h")
    books = settings.pricebooks
    # October's totals were stored by November's drafts; November's were never computed
    assert rerated(store, books) == [NOV]
    assert rerated(store, books) == []
    # a late October event, rolled up: October only
    ingest(store, tmp_path / "late.jsonl", [event("later-001", "acct-001", 3_000_000,
                                                 "2026-10-09T10:00:00Z")])  # fmt: skip
    build_month(store, books, OCT)
    assert rerated(store, books) == [OCT]
    # a guardrail decision of November (waivers read them): November only
    decision = store.read(GUARDRAIL_DECISIONS).filter(pl.col("period") == OCT).head(1)
    moved = decision.with_columns(period=pl.lit(NOV), decision_id=pl.lit("dec-nov"))
    store.append(GUARDRAIL_DECISIONS, moved)
    assert rerated(store, books) == [NOV]
    # any edit of the accounts file: every closed month
    accounts = books / "accounts.yaml"
    accounts.write_text(accounts.read_text() + "\n# edited\n")
    assert rerated(store, books) == [OCT, NOV]
    assert rerated(store, books) == []


def test_stored_restatements_give_the_adjustments_of_a_full_re_rating(tmp_path):
    store, settings = scenario().home_at("nov_closed", tmp_path / "h")
    books = settings.pricebooks
    ingest(store, tmp_path / "late.jsonl", [
        event("later-006", "acct-006", 7_000_000, "2026-10-02T10:00:00Z", "output_tokens",
              model_id="claude-sonnet-4-5"),
        event("later-n01", "acct-001", 5_000_000, "2026-11-20T10:00:00Z"),
    ])  # fmt: skip
    build_month(store, books, OCT)
    build_month(store, books, NOV)
    refresh_drafts(store, books, DEC)  # re-rates and stores October and November
    assert rerated(store, books) == []
    expected = full_rerating(store, books)
    assert expected.height > 0
    assert pending_adjustments(store, books, DEC).equals(expected)
    refresh_drafts(store, books, DEC)
    check = draft_lines_match_rated(store, books, DEC)
    assert check.passed, check.examples
    stored = store.read(RESTATED_TOTALS)
    assert stored.filter(pl.col("row_kind") == "basis")["period"].sort().to_list() == [OCT, NOV]
