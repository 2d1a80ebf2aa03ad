"""Dry run of a price change: per account and total, proposed vs current, nothing written."""

from __future__ import annotations

from decimal import Decimal as D
from pathlib import Path

import polars as pl
import pytest

from tests.test_pricing_rating import ACCOUNTS, BOOKS, FIXTURES, IN, hour, usage
from usagebox_pipelines.pricing import PricebookError, reprice_impact

V2 = (FIXTURES / "simple-v2.yaml").read_text()


def _proposal(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proposed.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _frame() -> pl.DataFrame:
    return pl.concat(
        [
            usage((IN, "m1", None, hour(25), "1000000")),  # a-plain: 3.00 under v2
            usage((IN, "m1", None, hour(2), "1000000"), account="a-disc"),  # v1: 2.00 - 10 %
            usage((IN, "m1", None, hour(25), "1000000"), account="a-min"),  # 3.00 → minimum 100
            usage((IN, "m1", None, hour(25), "1000000"), account="a-eur"),  # EUR 0.90
        ]
    )


def test_proposed_later_version_reprices_only_hours_after_it(tmp_path: Path) -> None:
    text = V2.replace("version: v2", "version: v3").replace("2026-10-16T", "2026-10-20T")
    text = text.replace('model_id: m1, per: 1000000, unit_price: "3.00"', (
        'model_id: m1, per: 1000000, unit_price: "4.00"'))  # fmt: skip
    before = sorted(p.name for p in FIXTURES.iterdir())
    out = reprice_impact(_frame(), "2026-10", BOOKS, _proposal(tmp_path, text), ACCOUNTS)
    assert sorted(p.name for p in FIXTURES.iterdir()) == before
    rows = {(r["account_id"], r["currency"]): r for r in out.iter_rows(named=True)}
    plain = rows[("a-plain", "USD")]
    assert (plain["current"], plain["proposed"], plain["delta"]) == (D("3.00"), D("4.00"), D(1))
    assert plain["delta_pct"] == D("33.33")
    assert rows[("a-disc", "USD")]["delta"] == 0 and rows[("a-disc", "USD")]["current"] == D("1.80")
    assert rows[("a-min", "USD")]["proposed"] == D("100.00")  # still under its minimum
    total = rows[("TOTAL", "USD")]
    assert (total["current"], total["proposed"], total["delta"]) == (
        D("204.80"),
        D("205.80"),
        D("1.00"),
    )  # 3.00 + 1.80 + 100 + a-all 100
    assert rows[("TOTAL", "EUR")]["current"] == D("0.90")
    assert rows[("a-all", "USD")]["current"] == D(100)  # no usage: its minimum, before credit
    assert ("a-credit", "USD") not in rows  # nothing to pay either way
    assert out.columns[:6] == [
        "account_id",
        "currency",
        "current",
        "proposed",
        "delta",
        "delta_pct",
    ]
    assert all(out.schema[c] == pl.Decimal(38, 2) for c in ("current", "proposed", "delta"))


def test_proposal_with_the_same_start_replaces_that_version(tmp_path: Path) -> None:
    text = V2.replace("version: v2", "version: v2b").replace(
        'model_id: m1, per: 1000000, unit_price: "3.00"',
        'model_id: m1, per: 1000000, unit_price: "1.50"',
    )
    out = reprice_impact(_frame(), "2026-10", BOOKS, _proposal(tmp_path, text), ACCOUNTS)
    plain = out.filter(pl.col("account_id") == "a-plain").row(0, named=True)
    assert (plain["current"], plain["proposed"], plain["delta_pct"]) == (D(3), D("1.5"), D(-50))


def test_a_proposal_that_drops_a_rate_shows_unrated_usage(tmp_path: Path) -> None:
    text = V2.replace("version: v2", "version: v3").replace("2026-10-16T", "2026-10-20T")
    text = text.replace(
        '  - {meter_id: input_tokens, model_id: "*", per: 1000000, unit_price: "1.00"}\n', ""
    )
    text = text.replace(
        '  - {meter_id: input_tokens, model_id: m1, per: 1000000, unit_price: "3.00"}\n', ""
    )
    out = reprice_impact(_frame(), "2026-10", BOOKS, _proposal(tmp_path, text), ACCOUNTS)
    plain = out.filter(pl.col("account_id") == "a-plain").row(0, named=True)
    assert (plain["unrated_current"], plain["unrated_proposed"]) == (0, 1)
    assert plain["proposed"] == 0


def test_an_invalid_proposal_is_rejected_like_any_pricebook(tmp_path: Path) -> None:
    bad = _proposal(tmp_path, V2.replace('unit_price: "3.00"', "unit_price: 3.00"))
    with pytest.raises(PricebookError, match=r"proposed\.yaml: rates\[0\]\.unit_price"):
        reprice_impact(_frame(), "2026-10", BOOKS, bad, ACCOUNTS)
