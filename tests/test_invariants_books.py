"""The pure checks of invariants 4 and 5 (invariants.py), frames and rows in, problems out."""

from __future__ import annotations

from decimal import Decimal as D

import polars as pl

from usagebox_pipelines import invariants as inv


def test_group_sums_differ_names_each_differing_group_and_treats_missing_as_zero() -> None:
    expected = pl.DataFrame({"account_id": ["a", "a", "b"], "amount": [D(1), D(2), D(5)]})
    actual = pl.DataFrame({"account_id": ["a", "c"], "amount": [D(3), D(1)]})
    diff = inv.group_sums_differ(expected, actual, ["account_id"], "amount", "usage amount")
    rows = {r["account_id"]: r for r in diff.to_dicts()}
    assert set(rows) == {"b", "c"}
    assert rows["b"]["expected"] == D(5) and rows["b"]["actual"] == D(0)
    assert rows["c"]["check"] == "usage amount"


def test_numbering_problems_name_duplicates_and_gaps() -> None:
    assert inv.numbering_problems(["UBX-2026-000001", "UBX-2026-000002"]) == []
    problems = inv.numbering_problems(["UBX-2026-000001", "UBX-2026-000001", "UBX-2026-000004"])
    assert [p["problem"] for p in problems] == [
        "invoice numbers issued twice: UBX-2026-000001",
        "UBX numbers have gaps: sequence [2, 3] missing",
    ]


def test_committed_row_and_file_problems() -> None:
    row = {"invoice_number": "N", "total": D("10.00"), "notes": None}
    assert inv.committed_row_problems("N", row, dict(row), list(row)) == []
    (missing,) = inv.committed_row_problems("N", row, None, list(row))
    assert missing["problem"] == "not issued by its period's close"
    (changed,) = inv.committed_row_problems("N", row, row | {"total": D("9.00")}, list(row))
    assert changed["stored"] == {"total": "10.00"} and changed["committed"] == {"total": "9.00"}
    assert inv.file_problems("N", "h", "h", "h") == []
    (forged,) = inv.file_problems("N", "x", "x", "h")  # file and stored hash replaced together
    assert forged["problem"] == "stored PDF file differs from the hash its close committed"
    (gone,) = inv.file_problems("N", None, "h", "h")
    assert gone["problem"] == "stored PDF file is missing"


def test_verdicts_sample_their_problems() -> None:
    result = inv.issued_unchanged(3, False, 0, [{"problem": str(i)} for i in range(9)])
    assert not result.passed and len(result.examples) == inv.SAMPLE
    assert result.detail == (
        "3 issued documents rebuilt and checked against their close (0 PDFs rendered); 9 problems"
    )
    assert inv.month_closed("2026-10").passed
