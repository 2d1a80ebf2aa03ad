"""Invariant 4 (c) re-rates only the closed months whose inputs changed (issue 13, item 6).

On real Delta tables from the close scenario (tests/test_close_scenario.py): October and
November 2026 are closed, December is open. Every closed month the check does not re-rate
must have no draft adjustment line; `rerate_every_closed_month` re-rates them all and agrees.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import event
from tests.test_close_scenario import NOV, OCT, build_month, ingest, scenario
from usagebox_pipelines.catalog import INVOICE_LINES
from usagebox_pipelines.config import Settings
from usagebox_pipelines.invariants import INVARIANT_4, InvariantResult
from usagebox_pipelines.stages import verify as verify_stage
from usagebox_pipelines.stages.books import all_lines
from usagebox_pipelines.stages.drafts import refresh_drafts
from usagebox_pipelines.storage import DeltaStore

DEC = "2026-12"
DECEMBER = [event("d-001-in", "acct-001", 3_000_000, "2026-12-04T10:00:00Z")]


def _december(tmp_path: Path, late: list[dict] | None = None) -> tuple[DeltaStore, Settings]:
    """A copy of the home with October and November closed and December drafted; `late`
    events (of closed November) are ingested and rolled up first."""
    store, settings = scenario().home_at("nov_closed", tmp_path / "h")
    if late:
        ingest(store, tmp_path / "late.jsonl", late)
        build_month(store, settings.pricebooks, NOV)
    ingest(store, tmp_path / "dec.jsonl", DECEMBER)
    build_month(store, settings.pricebooks, DEC)
    refresh_drafts(store, settings.pricebooks, DEC)
    return store, settings


def _check(
    store: DeltaStore, settings: Settings, monkeypatch: pytest.MonkeyPatch, *, full: bool
) -> tuple[InvariantResult, list[str]]:
    """December's invariant 4 and the closed months its part (c) re-rated (rate_month)."""
    months: list[str] = []
    rate_month = verify_stage.rate_month

    def recording(store, pricebooks_dir, month, *args, **kwargs):
        months.append(month)
        return rate_month(store, pricebooks_dir, month, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(verify_stage, "rate_month", recording)
        check = verify_stage.draft_lines_match_rated(
            store, settings.pricebooks, DEC, rerate_every_closed_month=full
        )
    return check, months


def _adjusted(store: DeltaStore) -> list[str]:
    drafts = all_lines(store).filter((pl.col("period") == DEC) & pl.col("invoice_number").is_null())
    adjustments = drafts.filter(pl.col("kind") == "adjustment")
    return sorted(adjustments.get_column("adjusts_period").unique().to_list())


def test_closed_months_with_unchanged_inputs_are_not_re_rated(tmp_path, monkeypatch):
    """Invariant 4: nothing reached October or November since November's close restated
    them, so December's check re-rates neither (they owe nothing, the drafts carry no
    adjustment) and passes; the full mode re-rates both and passes too."""
    store, settings = _december(tmp_path)
    assert _adjusted(store) == []
    check, rerated = _check(store, settings, monkeypatch, full=False)
    assert check.passed, (check.detail, check.examples)
    assert rerated == []
    full, rerated = _check(store, settings, monkeypatch, full=True)
    assert full.passed, (full.detail, full.examples)
    assert rerated == [OCT, NOV]


def test_late_usage_into_a_closed_month_re_rates_that_month(tmp_path, monkeypatch):
    """Invariant 4: late usage into closed November makes November (only) re-rated, and
    December's draft adjustments for it equal November re-rated minus what was billed; the
    full mode re-rates October too and agrees."""
    late = [event("late-nov-007", "acct-007", 500_000, "2026-11-20T10:00:00Z")]
    store, settings = _december(tmp_path, late)
    assert _adjusted(store) == [NOV]
    check, rerated = _check(store, settings, monkeypatch, full=False)
    assert check.passed, (check.detail, check.examples)
    assert rerated == [NOV]
    full, rerated = _check(store, settings, monkeypatch, full=True)
    assert full.passed, (full.detail, full.examples)
    assert rerated == [OCT, NOV]


def test_a_draft_adjustment_for_an_unchanged_closed_month_fails(tmp_path, monkeypatch):
    """Invariant 4: October's inputs did not change since it was last restated, so it owes
    nothing; a forged December draft adjustment for October fails the check (without
    re-rating October), the detail and example naming October; the full mode fails too."""
    store, settings = _december(tmp_path)
    drafts = all_lines(store).filter((pl.col("period") == DEC) & pl.col("invoice_number").is_null())
    own = drafts.filter(pl.col("account_id") == "acct-001")
    forged = own.head(1).with_columns(
        line_no=pl.lit(own.get_column("line_no").max() + 1, dtype=own.schema["line_no"]),
        kind=pl.lit("adjustment"),
        adjusts_period=pl.lit(OCT),
        amount=pl.lit(Decimal("5.00"), dtype=own.schema["amount"]),
    )
    store.append(INVOICE_LINES, forged)

    check, rerated = _check(store, settings, monkeypatch, full=False)
    assert check.name == INVARIANT_4 and not check.passed
    assert rerated == []
    assert OCT in check.detail, check.detail
    [example] = check.examples
    assert example["account_id"] == "acct-001"
    assert OCT in example["check"] and example["lines"] == "1"
    full, rerated = _check(store, settings, monkeypatch, full=True)
    assert not full.passed and f"restatement of {OCT}" in full.detail
    assert rerated == [OCT, NOV]
