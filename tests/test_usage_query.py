"""`usagebox usage`: raw and rollup answers agree for closed hours; bad requests are refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.conftest import event, write_jsonl
from usagebox_pipelines.cli import app
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.rollups.aggregate import rollup_hourly
from usagebox_pipelines.rollups.usage_query import parse_group_by, parse_time, usage_query
from usagebox_pipelines.schemas import EVENTS, HOUR_BUILDS, conform

T0 = datetime(2026, 10, 1, tzinfo=UTC)


def _events(rows: list[tuple[str, str, int, int, str]]) -> pl.LazyFrame:
    """(account, meter, minute offset, quantity, feature) → an `events` frame."""
    frame = pl.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(rows))],
            "account_id": [r[0] for r in rows],
            "meter_id": [r[1] for r in rows],
            "timestamp": [T0 + timedelta(minutes=r[2]) for r in rows],
            "quantity": [Decimal(r[3]) for r in rows],
            "dimensions": [json.dumps({"feature": r[4]}) for r in rows],
        },
        schema_overrides={"quantity": EVENTS["quantity"], "timestamp": EVENTS["timestamp"]},
    ).with_columns(
        hour=pl.col("timestamp").dt.truncate("1h"),
        event_date=pl.col("timestamp").dt.date(),
        status=pl.lit("ok"),
        billable=pl.lit(True),
        ingested_at=pl.lit(T0),
    )
    return conform(frame, EVENTS).lazy()


def _builds(hours: int) -> pl.DataFrame:
    span = pl.datetime_range(
        T0, T0 + timedelta(hours=hours), "1h", closed="left", time_zone="UTC", eager=True
    )
    return (
        pl.DataFrame({"hour": span})
        .with_columns(built_at=pl.lit(T0 + timedelta(days=30)), run_id=pl.lit("t"))
        .cast(dict(HOUR_BUILDS))
    )


rows = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.sampled_from(["m1", "m2"]),
        st.integers(0, 6 * 60 - 1),
        st.integers(0, 10**6),
        st.sampled_from(["chat", "search"]),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(
    rows=rows,
    start=st.integers(0, 5),
    length=st.integers(1, 6),
    group=st.sampled_from(["meter_id", "hour", "dimensions.feature,meter_id", "day"]),
)
def test_raw_and_rollup_agree_for_closed_hours(rows, start, length, group) -> None:
    events = _events(rows)
    hourly = rollup_hourly(events, T0, T0 + timedelta(hours=6)).lazy()
    window = (T0 + timedelta(hours=start), T0 + timedelta(hours=start + length))
    cols = parse_group_by(group, "rollup")
    now = T0 + timedelta(days=31)
    answers = [
        usage_query(events, hourly, _builds(6), "a", *window, cols, source, now)["groups"]
        for source in ("raw", "rollup", "auto")
    ]
    assert answers[0] == answers[1] == answers[2]


def test_open_hour_comes_from_events_in_auto() -> None:
    events = _events([("a", "m1", 10, 5, "chat"), ("a", "m1", 70, 7, "chat")])
    hourly = rollup_hourly(events, T0, T0 + timedelta(hours=1)).lazy()  # hour 1 not rolled up
    now = T0 + timedelta(hours=1, minutes=30)
    answer = usage_query(
        events, hourly, _builds(1), "a", T0, T0 + timedelta(hours=2), ["meter_id"], "auto", now
    )
    assert answer["groups"] == [{"meter_id": "m1", "sum": "12", "count": 2}]
    rollup_only = usage_query(
        events, hourly, _builds(1), "a", T0, T0 + timedelta(hours=1), ["meter_id"], "rollup", now
    )
    assert rollup_only["groups"][0]["sum"] == "5"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2026-10-02T00:00:00Z", "--to", "2026-10-01T00:00:00Z"], "must be before"),
        (["--from", "yesterday", "--to", "2026-10-01T00:00:00Z"], "not a UTC-parsable time"),
        (["--from", "2026-10-01T00:00:00", "--to", "2026-10-02T00:00:00Z"], "add an offset"),
        (["--from", "2026-10-01", "--to", "2026-10-02", "--group-by", "colour"], "unknown column"),
        (["--from", "2026-10-01", "--to", "2026-10-02", "--source", "cache"], "--source"),
    ],
)
def test_bad_usage_requests_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["usage", "acct-001", *args, "--home", str(tmp_path)])
    assert isinstance(result.exception, UsageboxError)
    assert message in str(result.exception)


def test_cli_ingest_usage_verify_and_sql(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    path = write_jsonl(
        tmp_path / "a.jsonl", [event("e1", qty=3), event("e2", qty=4), event("e1", qty=3)]
    )
    runner = CliRunner()
    out = runner.invoke(app, ["ingest", str(path), "--home", home])
    summary = json.loads(out.stdout)
    assert {
        k: summary[k] for k in ("files", "accepted", "duplicates", "conflicts", "rejected", "late")
    } == {"files": 1, "accepted": 2, "duplicates": 1, "conflicts": 0, "rejected": 0, "late": 0}
    usage = runner.invoke(
        app,
        [
            "usage",
            "acct-001",
            "--from",
            "2026-10-01T00:00:00Z",
            "--to",
            "2026-10-02T00:00:00Z",
            "--source",
            "raw",
            "--home",
            home,
        ],
    )
    assert json.loads(usage.stdout)["groups"] == [
        {"meter_id": "input_tokens", "sum": "7", "count": 2}
    ]
    sql = runner.invoke(
        app, ["sql", "SELECT count(*) AS n FROM events", "--format", "json", "--home", home]
    )
    assert json.loads(sql.stdout) == [{"n": 2}]
    refused = runner.invoke(app, ["sql", "DROP TABLE events", "--home", home])
    assert isinstance(refused.exception, UsageboxError)


def test_parse_time_accepts_offsets_and_dates() -> None:
    assert parse_time("2026-10-01T02:00:00+02:00", "--from") == T0
    assert parse_time("2026-10-01", "--from") == T0
    with pytest.raises(UsageboxError):
        parse_time("2026-13-01T00:00:00Z", "--from")


def test_a_sum_never_adds_different_meters() -> None:
    events = _events([("a", "m1", 10, 5, "chat"), ("a", "m2", 20, 7, "chat")])
    hourly = rollup_hourly(events, T0, T0 + timedelta(hours=1)).lazy()
    cols = parse_group_by("hour", "rollup")
    assert cols == ["hour", "meter_id"]
    answer = usage_query(
        events, hourly, _builds(1), "a", T0, T0 + timedelta(hours=1), cols, "rollup"
    )
    assert [(g["meter_id"], g["sum"]) for g in answer["groups"]] == [("m1", "5"), ("m2", "7")]
