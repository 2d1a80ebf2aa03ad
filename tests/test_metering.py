"""Exactly-once metering: corrections, late data, rollups, and the property that the rollups
equal a naive reference over the distinct first-accepted events, whatever the batching."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import event, write_jsonl
from usagebox_pipelines.catalog import EVENTS, QUARANTINE, USAGE_HOURLY, USAGE_MONTHLY
from usagebox_pipelines.stages.events import update_events
from usagebox_pipelines.stages.ingest import ingest_files
from usagebox_pipelines.stages.rollups import build_usage_hourly, build_usage_monthly
from usagebox_pipelines.stages.verify import verify
from usagebox_pipelines.storage import DeltaStore

DAY = datetime(2026, 10, 1, tzinfo=UTC)


def _run(store: DeltaStore, start: datetime = DAY, end: datetime = DAY + timedelta(days=2)) -> None:
    update_events(store)
    build_usage_hourly(store, start, end)
    build_usage_monthly(store, "2026-10")


def _hourly(store: DeltaStore) -> dict[tuple, Decimal]:
    rows = (
        store.read(USAGE_HOURLY).group_by("account_id", "meter_id", "hour").agg(pl.col("sum").sum())
    )
    return {
        (r["account_id"], r["meter_id"], r["hour"]): r["sum"]
        for r in rows.to_dicts()
        if r["sum"] != 0
    }


def test_correction_counts_in_the_hour_of_its_original(tmp_path: Path, store) -> None:
    ingest_files(
        store,
        [write_jsonl(tmp_path / "a.jsonl", [event("e1", qty=100, ts="2026-10-01T10:15:00Z")])],
    )
    late = event("c1", qty=-30, ts="2026-10-02T08:00:00Z", correction_of="e1")
    ingest_files(store, [write_jsonl(tmp_path / "b.jsonl", [late])])
    _run(store)
    assert _hourly(store) == {("acct-001", "input_tokens", DAY + timedelta(hours=10)): Decimal(70)}


def test_correction_before_its_original_waits_then_applies(tmp_path: Path, store) -> None:
    ingest_files(
        store, [write_jsonl(tmp_path / "a.jsonl", [event("c1", qty=-30, correction_of="e1")])]
    )
    _run(store)
    assert store.read(EVENTS)["status"].to_list() == ["pending"]
    assert _hourly(store) == {}
    ingest_files(
        store,
        [write_jsonl(tmp_path / "b.jsonl", [event("e1", qty=100, ts="2026-10-01T11:00:00Z")])],
    )
    _run(store)
    events = store.read(EVENTS).sort("event_id")
    assert events["status"].to_list() == ["ok", "ok"]
    assert _hourly(store) == {("acct-001", "input_tokens", DAY + timedelta(hours=11)): Decimal(70)}


def test_correction_driving_net_below_zero_is_quarantined(tmp_path: Path, store) -> None:
    rows = [
        event("e1", qty=100),
        event("c1", qty=-60, correction_of="e1"),
        event("c2", qty=-50, correction_of="e1"),
    ]
    summary = ingest_files(store, [write_jsonl(tmp_path / "a.jsonl", rows)])
    assert (summary.accepted, summary.rejected) == (2, 1)
    reason = store.read(QUARANTINE)["reason"].item()
    assert "net quantity of event e1 negative" in reason
    _run(store)
    assert sum(_hourly(store).values()) == Decimal(40)


def test_pending_correction_rejected_when_original_is_too_small(tmp_path: Path, store) -> None:
    ingest_files(
        store, [write_jsonl(tmp_path / "a.jsonl", [event("c1", qty=-500, correction_of="e1")])]
    )
    ingest_files(store, [write_jsonl(tmp_path / "b.jsonl", [event("e1", qty=100)])])
    _run(store)
    events = store.read(EVENTS).sort("event_id")
    assert events["status"].to_list() == ["rejected", "ok"]
    assert sum(_hourly(store).values()) == Decimal(100)


def test_late_events_are_flagged_and_their_hour_rebuilt(tmp_path: Path, store) -> None:
    ingest_files(store, [write_jsonl(tmp_path / "a.jsonl", [event("e1", qty=5)])])
    _run(store)
    summary = ingest_files(store, [write_jsonl(tmp_path / "b.jsonl", [event("e2", qty=7)])])
    assert summary.late == 1
    update = update_events(store)
    assert not next(r for r in verify(store) if r.name == "3_hourly_equals_events").passed
    assert update.hours == [DAY + timedelta(hours=10)]
    build_usage_hourly(store, update.hours[0], update.hours[0] + timedelta(hours=1))
    build_usage_monthly(store, "2026-10")
    assert all(r.passed for r in verify(store))
    assert sum(_hourly(store).values()) == Decimal(12)


def test_rebuilding_rollups_from_scratch_reproduces_them(tmp_path: Path, store) -> None:
    rows = [
        event(f"e{i}", qty=i, ts=f"2026-10-01T{i % 24:02d}:30:00Z", dimensions={"b": "2", "a": "1"})
        for i in range(60)
    ]
    ingest_files(store, [write_jsonl(tmp_path / "a.jsonl", rows)])
    _run(store)
    hourly, monthly = store.read(USAGE_HOURLY), store.read(USAGE_MONTHLY)
    store.drop(USAGE_HOURLY)
    store.drop(USAGE_MONTHLY)
    _run(store)
    assert store.read(USAGE_HOURLY).equals(hourly)
    assert store.read(USAGE_MONTHLY).equals(monthly)


def test_verify_names_a_tampered_table(tmp_path: Path, store) -> None:
    ingest_files(store, [write_jsonl(tmp_path / "a.jsonl", [event("e1", qty=5)])])
    _run(store)
    tampered = store.read(USAGE_HOURLY).with_columns(sum=pl.col("sum") + 1)
    store.overwrite(USAGE_HOURLY, tampered)
    failed = [r.name for r in verify(store) if not r.passed]
    assert failed == ["3_hourly_equals_events", "3_monthly_equals_hourly"]


# --- property: any batching of a dirty stream gives the naive reference --------------------------

base_events = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),  # account
        st.integers(0, 14),  # event id
        st.sampled_from(["m1", "m2"]),
        st.integers(0, 1000),  # quantity
        st.integers(0, 47),  # hour offset
    ),
    min_size=1,
    max_size=40,
)


def _dirty_stream(base, data) -> list[dict]:
    stream = []
    for acct, eid, meter, qty, hour in base:
        ts = (DAY + timedelta(hours=hour, minutes=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
        row = event(f"e{eid}", account=acct, qty=qty, ts=ts, meter=meter)
        stream.append(row)
        if data.draw(st.booleans()):
            stream.append(dict(row))  # exact retry
        if data.draw(st.integers(0, 4)) == 0:
            stream.append(dict(row, quantity=qty + 1))  # conflicting re-send
        if data.draw(st.integers(0, 3)) == 0:
            delta = -data.draw(st.integers(0, 600))
            stream.append(
                event(
                    f"c{eid}-{len(stream)}",
                    account=acct,
                    qty=delta,
                    ts=ts,
                    meter=meter,
                    correction_of=f"e{eid}",
                )
            )
    return data.draw(st.permutations(stream))


def _naive(stream: list[dict]) -> dict[tuple, Decimal]:
    first: dict[tuple, dict] = {}
    for row in stream:
        first.setdefault((row["account_id"], row["event_id"]), row)
    net: dict[tuple, Decimal] = {}
    totals: dict[tuple, Decimal] = defaultdict(Decimal)
    for (acct, _), row in first.items():
        if "correction_of" not in row:
            net[(acct, row["event_id"])] = Decimal(row["quantity"])
    for (acct, _), row in first.items():
        target = (acct, row.get("correction_of"))
        if "correction_of" in row and target in net and net[target] + Decimal(row["quantity"]) >= 0:
            net[target] += Decimal(row["quantity"])
    for (acct, eid), qty in net.items():
        row = first[(acct, eid)]
        hour = datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00")).replace(minute=0)
        totals[(acct, row["meter_id"], hour)] += qty
    return {k: v for k, v in totals.items() if v != 0}


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(base=base_events, data=st.data())
def test_rollups_equal_naive_reference_for_any_batching(tmp_path_factory, base, data) -> None:
    stream = _dirty_stream(base, data)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=3)))
    batches = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    folder = tmp_path_factory.mktemp("prop")
    store = DeltaStore(str(folder / "home"))
    for i, batch in enumerate(batches):
        if batch:
            ingest_files(store, [write_jsonl(folder / f"{i:03d}.jsonl", batch)])
            if data.draw(st.booleans()):
                _run(store)
    _run(store)
    assert _hourly(store) == _naive(stream)
    assert all(r.passed for r in verify(store))
