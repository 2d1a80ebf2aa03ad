"""`--home s3://...`: the same tables on S3-compatible storage (a local moto server, conftest)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import event, write_jsonl
from usagebox_pipelines.catalog import USAGE_HOURLY
from usagebox_pipelines.sql import run_sql
from usagebox_pipelines.stages.events import update_events
from usagebox_pipelines.stages.ingest import ingest_files
from usagebox_pipelines.stages.rollups import build_usage_hourly
from usagebox_pipelines.stages.verify import verify
from usagebox_pipelines.storage import DeltaStore

pytestmark = pytest.mark.slow  # a local moto S3 server


def test_ingest_rollup_and_query_on_s3(tmp_path: Path, s3_home: str) -> None:
    store = DeltaStore(s3_home)
    path = write_jsonl(tmp_path / "a.jsonl", [event("e1", qty=5), event("e2", qty=7), "{bad"])
    summary = ingest_files(store, [path])
    assert (summary.accepted, summary.rejected) == (2, 1)
    assert ingest_files(store, [path]).duplicates == 3
    update_events(store)
    start = datetime(2026, 10, 1, tzinfo=UTC)
    build_usage_hourly(store, start, start + timedelta(days=1))
    assert store.read(USAGE_HOURLY)["sum"].sum() == Decimal(12)
    assert run_sql(store, "SELECT count(*) AS n FROM quarantine")["n"].item() == 1
    results = {r.name: r.passed for r in verify(store)}
    assert results["2_events_unique"] and results["3_hourly_equals_events"]


def test_object_store_lease_excludes_a_second_writer_and_expires_when_its_holder_dies(
    s3_home: str,
) -> None:
    """Invariant: at most one live holder per home; a dead holder's lease lapses after its ttl."""
    from usagebox_pipelines.errors import UsageboxError
    from usagebox_pipelines.lease import Holder, _DeltaLease

    options = DeltaStore(s3_home).storage_options
    first = _DeltaLease(s3_home, options, ttl=2.0)
    first.acquire(Holder.me("first"), wait=5)
    second = _DeltaLease(s3_home, options, ttl=2.0)
    with pytest.raises(UsageboxError, match="busy: pid"):
        second.acquire(Holder.me("second"), wait=0.5)
    first.release()
    second.acquire(Holder.me("second"), wait=5)  # released: taken at once

    first._stop.set()  # noqa: SLF001 - the holder "dies": no more renewals, no release
    second._stop.set()
    second._heartbeat.join()
    third = _DeltaLease(s3_home, options, ttl=2.0)
    third.acquire(Holder.me("third"), wait=10)  # after second's ttl lapsed
    third.release()
