"""The demo month on disk: determinism, planted counts, and an independent re-read of every file.

`_reference_ingest` is a deliberately naive, stdlib-only reader of the four shapes (CONTRACT §2
aliases) with the exactly-once rules; it shares no code with the generator, so agreeing with
`manifest.expected_usage` shows the files say what the manifest claims.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from usagebox_demo import write_demo_inputs

N_EVENTS = 6_000
ALIASES = {
    "event_id": ("event_id", "idempotencyKey", "idempotency_key", "transaction_id"),
    "account_id": ("account_id", "customer_id", "customerId"),
    "meter_id": ("meter_id", "meter", "eventName", "event_name"),
    "quantity": ("quantity", "value"),
    "timestamp": ("timestamp", "ts", "time"),
    "model_id": ("model_id", "model"),
}
BILLING = ("account_id", "event_id", "meter_id", "quantity", "timestamp", "model_id")
BILLING += ("product_id", "unit", "project_id", "dimensions", "correlation_id", "billable")
BILLING += ("reason_code", "correction_of")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return write_demo_inputs(out, month="2026-10", seed=11, n_events=N_EVENTS)


@pytest.fixture(scope="module")
def ingested(demo):
    return _reference_ingest(demo.main_files)


# ------------------------------------------------------------------ reference reader


def _records(path: Path):
    """(row_number, raw record or None if unparseable) in file order."""
    name = path.name.removesuffix(".gz")
    opener = gzip.open if path.name.endswith(".gz") else open
    if name.endswith(".parquet"):
        yield from enumerate(pq.read_table(path).to_pylist(), start=1)
    elif name.endswith(".csv"):
        with opener(path, "rt", newline="") as fh:
            yield from enumerate(csv.DictReader(fh), start=1)
    else:
        with opener(path, "rt") as fh:
            for i, line in enumerate(fh, start=1):
                try:
                    yield i, json.loads(line, parse_float=Decimal)
                except json.JSONDecodeError:
                    yield i, None


def _pick(rec: dict, field: str):
    for key in ALIASES.get(field, (field,)):
        value = rec.get(key)
        if value not in (None, ""):
            return value
    return None


def _canonical(rec: dict) -> tuple[dict | None, str | None]:
    """A record -> (canonical event, None) or (None, rejection reason)."""
    out = {f: _pick(rec, f) for f in BILLING if f not in ("dimensions", "billable", "quantity")}
    dims = rec.get("dimensions", rec.get("metadata"))
    if isinstance(dims, str):
        dims = json.loads(dims)
    dims = {k: v for k, v in (dims or {}).items() if v is not None}
    if "metadata" in rec and out["model_id"] is None:
        out["model_id"] = dims.pop("model", None)
    if not out["account_id"]:
        return None, "missing_account"
    ts = out["timestamp"]
    if isinstance(ts, str):
        try:
            ts = datetime.fromisoformat(ts)
        except ValueError:
            return None, "bad_timestamp"
    out["timestamp"] = ts.astimezone(UTC)
    raw_q = _pick(rec, "quantity")
    try:
        out["quantity"] = Decimal(1) if raw_q is None else Decimal(str(raw_q))
    except InvalidOperation:
        return None, "non_numeric_quantity"
    if out["quantity"] < 0 and not out["correction_of"]:
        return None, "negative_quantity"
    if len(dims) > 16:
        return None, "too_many_dimensions"
    out["dimensions"] = json.dumps(dims, sort_keys=True, separators=(",", ":"))
    billable = rec.get("billable")
    out["billable"] = billable not in (False, "false")
    return out, None


def _payload(event: dict) -> tuple:
    return tuple(
        event[f].normalize() if f == "quantity" else event[f] for f in BILLING if f in event
    )


def _reference_ingest(files) -> dict:
    seen: dict[tuple[str, str], dict] = {}
    stats = Counter()
    rejected = Counter()
    where: dict[tuple[str, str], tuple[int, int]] = {}
    for file_no, path in enumerate(sorted(files)):
        for row, rec in _records(path):
            if rec is None:
                rejected["broken_json"] += 1
                continue
            event, reason = _canonical(rec)
            if reason:
                rejected[reason] += 1
                continue
            key = (event["account_id"], event["event_id"])
            if key not in seen:
                seen[key] = event
                where[key] = (file_no, row)
                stats["accepted"] += 1
            elif _payload(seen[key]) == _payload(event):
                stats["duplicates"] += 1
            else:
                stats["conflicts"] += 1
    return {"events": seen, "stats": stats, "rejected": rejected, "where": where}


def _hourly(events: dict) -> dict:
    sums: dict[tuple, list] = defaultdict(lambda: [Decimal(0), 0])
    for ev in events.values():
        anchor = ev
        if ev["correction_of"]:
            anchor = events[(ev["account_id"], ev["correction_of"])]
        hour = anchor["timestamp"].replace(minute=0, second=0, microsecond=0)
        key = (ev["account_id"], ev["meter_id"], ev["model_id"], ev["billable"], hour)
        sums[key][0] += ev["quantity"]
        sums[key][1] += 1
    return dict(sums)


# ------------------------------------------------------------------ tests


def test_files_are_byte_identical_for_a_seed(demo, tmp_path):
    again = write_demo_inputs(tmp_path, month="2026-10", seed=11, n_events=N_EVENTS)

    def digests(m):
        files = (*m.main_files, *m.late_files, m.out_dir / "demo-manifest.json")
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]

    assert digests(again) == digests(demo)
    assert again.expected_usage.equals(demo.expected_usage)


def test_every_shape_and_format_is_present(demo):
    names = [p.name for p in demo.main_files]
    assert names == sorted(names), "ingestion order is sorted file-name order"
    assert {n.split(".", 1)[1] for n in names} == {"jsonl", "jsonl.gz", "csv", "csv.gz", "parquet"}
    heads = set()
    for path in demo.main_files:
        _, rec = next(iter(_records(path)))
        heads.add(next(k for k in rec if k in ALIASES["event_id"]))
    assert heads == set(ALIASES["event_id"])  # canonical, Stigg, CSV and Parquet shapes
    assert all(p.stat().st_size > 0 for p in (*demo.main_files, *demo.late_files))


def test_counts_add_up(demo):
    m = demo
    assert m.main_rows == (
        m.clean_events
        + m.late_previous_month
        + m.corrections
        + m.exact_retries
        + m.conflicts
        + m.malformed_total
    )
    assert m.ledger.height == sum(m.rows_per_file.values())
    assert m.exact_retries == round(0.03 * N_EVENTS)
    assert min(m.conflicts, m.corrections, m.late_previous_month, m.billable_false) > 0
    assert set(m.malformed) == {
        "bad_timestamp",
        "missing_account",
        "non_numeric_quantity",
        "negative_quantity",
        "too_many_dimensions",
        "broken_json",
    }
    assert all(n > 0 for n in m.malformed.values())
    late = m.late_month_events + m.late_corrections + m.next_month_events
    assert m.rows_per_file[f"events/late/{m.late_files[0].name}"] == late


def test_reference_ingest_matches_the_manifest(demo, ingested):
    assert dict(ingested["rejected"]) == demo.malformed
    stats = ingested["stats"]
    expected = demo.expected_ingest()
    assert stats["accepted"] == expected["accepted"]
    assert stats["duplicates"] == expected["duplicates"]
    assert stats["conflicts"] == expected["conflicts"]


def test_expected_usage_matches_files(demo, ingested):
    ours = _hourly(ingested["events"])
    theirs = {
        (r["account_id"], r["meter_id"], r["model_id"], r["billable"], r["hour"]): [
            r["sum"],
            r["count"],
        ]
        for r in demo.expected_usage.iter_rows(named=True)
    }
    assert ours == theirs
    assert demo.expected_usage["sum"].dtype == pl.Decimal(38, 12)
    assert (demo.expected_usage["sum"] >= 0).all()


def test_late_previous_month_events_are_in_main_files(demo, ingested):
    start = datetime(2026, 10, 1, tzinfo=UTC)
    prev = [e for e in ingested["events"].values() if e["timestamp"] < start]
    assert len(prev) == demo.late_previous_month
    assert all(e["timestamp"] >= datetime(2026, 9, 28, tzinfo=UTC) for e in prev)


def test_corrections_reference_earlier_events_of_the_same_account(demo, ingested):
    events, where = ingested["events"], ingested["where"]
    fixes = [e for e in events.values() if e["correction_of"]]
    assert len(fixes) == demo.corrections
    net: dict[tuple, Decimal] = {}
    for fix in fixes:
        orig_key = (fix["account_id"], fix["correction_of"])
        assert orig_key in events, "correction of an unknown event or another account's"
        assert where[orig_key] < where[(fix["account_id"], fix["event_id"])]
        assert fix["timestamp"] >= events[orig_key]["timestamp"]
        assert fix["meter_id"] == events[orig_key]["meter_id"]
        net[orig_key] = net.get(orig_key, events[orig_key]["quantity"]) + fix["quantity"]
    assert any(e["quantity"] < 0 for e in fixes) and any(e["quantity"] > 0 for e in fixes)
    assert all(v >= 0 for v in net.values())


def test_conflicts_come_after_their_original(demo):
    ledger = demo.ledger.with_columns(file_no=pl.col("file").rank("dense"))
    conflicts = ledger.filter(pl.col("kind") == "conflict")
    originals = ledger.filter(pl.col("kind").is_in(["event", "billable_false"]))
    pairs = conflicts.join(originals, on=["account_id", "event_id"], suffix="_orig")
    assert pairs.height == conflicts.height == demo.conflicts
    assert (pairs["file_no"] > pairs["file_no_orig"]).all()


def test_retries_follow_their_original(demo):
    ledger = demo.ledger.with_columns(file_no=pl.col("file").rank("dense"))
    retries = ledger.filter(pl.col("kind") == "retry")
    originals = ledger.filter(pl.col("kind").is_in(["event", "billable_false"]))
    pairs = retries.join(originals, on=["account_id", "event_id"], suffix="_orig")
    assert pairs.height == retries.height
    later = (pairs["file_no"] > pairs["file_no_orig"]) | (
        (pairs["file_no"] == pairs["file_no_orig"])
        & (pairs["row_number"] > pairs["row_number_orig"])
    )
    assert later.all()
    assert (pairs["file"] != pairs["file_orig"]).sum() > 0, "some retries cross files/shapes"


def test_non_billable_events_carry_a_reason(ingested, demo):
    free = [e for e in ingested["events"].values() if not e["billable"]]
    assert len(free) == demo.billable_false
    assert all(e["reason_code"] for e in free)


def test_unknown_extra_column_is_present(demo):
    csv_file = next(p for p in demo.main_files if p.name.endswith(".csv"))
    header = csv_file.read_text().splitlines()[0].split(",")
    assert "sdk_version" in header


def test_late_file_contents(demo):
    late = _reference_ingest(demo.late_files)
    assert late["stats"]["accepted"] == demo.rows_per_file[f"events/late/{demo.late_files[0].name}"]
    events = late["events"].values()
    end = datetime(2026, 11, 1, tzinfo=UTC)
    fixes = [e for e in events if e["correction_of"]]
    nxt = [e for e in events if e["timestamp"] >= end and not e["correction_of"]]
    extra = [e for e in events if e["timestamp"] < end]
    assert len(fixes) == demo.late_corrections and len(nxt) == demo.next_month_events
    assert len(extra) == demo.late_month_events
    assert all(e["timestamp"] >= datetime(2026, 10, 30, tzinfo=UTC) for e in extra)
    assert all(e["timestamp"] < datetime(2026, 11, 2, tzinfo=UTC) for e in nxt)
    main = _reference_ingest(demo.main_files)["events"]
    assert all((e["account_id"], e["correction_of"]) in main for e in fixes)
    assert demo.expected_late_usage["sum"].sum() == sum(e["quantity"] for e in events)


def test_manifest_json_is_written(demo):
    data = json.loads((demo.out_dir / "demo-manifest.json").read_text())
    assert data["expected_ingest_main"] == demo.expected_ingest()
    assert data["rows_per_file"] == demo.rows_per_file


def test_rerun_replaces_stale_files(tmp_path):
    write_demo_inputs(tmp_path, month="2026-09", seed=3, n_events=500)
    m = write_demo_inputs(tmp_path, month="2026-10", seed=3, n_events=500)
    on_disk = sorted((tmp_path / "events" / "main").iterdir())
    assert on_disk == sorted(m.main_files)


def test_default_demo(tmp_path):
    m = write_demo_inputs(tmp_path)
    assert (m.month, m.clean_events, m.exact_retries) == ("2026-10", 20_000, 600)
    assert m.expected_ingest()["rejected"] == m.malformed_total == 16
    hours = m.expected_usage["hour"]
    assert hours.min() < datetime(2026, 10, 1, tzinfo=UTC) <= hours.max()
    assert hours.max() < datetime(2026, 11, 1, tzinfo=UTC)


def test_too_few_events_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="n_events"):
        write_demo_inputs(tmp_path, n_events=10)
