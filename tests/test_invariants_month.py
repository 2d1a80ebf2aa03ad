"""invariants.month_events_unique: invariant 2 for one month, at the cost of the month."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from usagebox_pipelines import invariants as inv

OCT = (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC))


def _events(rows: list[tuple[str, str, datetime]]) -> pl.LazyFrame:
    return pl.LazyFrame(
        rows,
        schema={"account_id": pl.String, "event_id": pl.String, "hour": pl.Datetime("us", "UTC")},
        orient="row",
    )


SEP_1 = datetime(2026, 9, 30, 23, tzinfo=UTC)
OCT_1 = datetime(2026, 10, 1, 0, tzinfo=UTC)
OCT_2 = datetime(2026, 10, 15, 3, tzinfo=UTC)
NOV_1 = datetime(2026, 11, 1, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("rows", "duplicated"),
    [
        ([("a", "e1", OCT_1), ("a", "e2", OCT_2), ("b", "e1", OCT_2)], []),
        ([("a", "e1", OCT_1), ("a", "e1", OCT_2)], [("a", "e1", 2)]),  # inside the month
        ([("a", "e1", SEP_1), ("a", "e1", OCT_2)], [("a", "e1", 2)]),  # with an earlier month
        ([("a", "e1", OCT_1), ("a", "e1", NOV_1), ("a", "e1", SEP_1)], [("a", "e1", 3)]),
        ([("a", "e1", SEP_1), ("a", "e1", NOV_1), ("a", "e2", OCT_1)], []),  # not the month's
    ],
)
def test_a_key_of_the_month_stored_twice_anywhere_fails(rows, duplicated):
    result = inv.month_events_unique(_events(rows), *OCT)
    assert result.name == "2_events_unique"
    assert result.passed is (not duplicated)
    assert [(e["account_id"], e["event_id"], e["n"]) for e in result.examples] == duplicated
    full = inv.events_unique(_events(rows))
    if duplicated:  # whatever the month version finds, the full check finds too
        assert not full.passed
