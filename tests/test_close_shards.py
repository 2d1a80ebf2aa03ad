"""Invariant: a close run in three steps, its documents rendered per month shard (ADR 0019 §5),
issues exactly the documents a close in one process issues: the same numbers, rows, lines,
PDF bytes and `period_closes` row, gapless after the closed months' numbers; and the marker is
never written while a numbered document lacks its PDF.

The month is November of `test_close_scenario` (October closed before it, with late October
usage restated as adjustments), so numbering continues from an earlier close and the
documents include adjustments and a credit note.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from tests.test_close_scenario import (
    HARD_STOP,
    LATE_OCTOBER,
    NOV,
    NOV_ISSUED,
    NOVEMBER,
    OCT,
    OCT_ISSUED,
    OCTOBER,
    build_month,
    ingest,
    scenario,
)
from usagebox_pipelines.catalog import GUARDRAIL_DECISIONS, INVOICE_LINES, INVOICES, PERIOD_CLOSES
from usagebox_pipelines.config import DEFAULT_PRICEBOOKS, Settings
from usagebox_pipelines.errors import InvariantError, UsageboxError
from usagebox_pipelines.pricing.accounts import load_accounts
from usagebox_pipelines.shards import MONTH_SHARDS_ENV, MonthShard
from usagebox_pipelines.stages.books import books_problems, closed_periods
from usagebox_pipelines.stages.close import close_month, finish_month
from usagebox_pipelines.stages.close_documents import render_documents
from usagebox_pipelines.stages.drafts import refresh_drafts
from usagebox_pipelines.stages.verify import issued_intact
from usagebox_pipelines.storage import DeltaStore, DocumentStore

pytestmark = pytest.mark.slow  # real PDFs, real Dagster runs

SHARDS = 3
#: Columns that differ between two closes of the same month by design: when and by which run.
VOLATILE = ("closed_at", "run_id")


def _number(store: DeltaStore, settings: Settings) -> None:
    result = close_month(
        store, settings, NOV, approve=True, now=NOV_ISSUED, approved_by="test", number_only=True
    )
    assert result.status == "numbered" and result.documents > 0


def _shards(store: DeltaStore, settings: Settings) -> list[MonthShard]:
    """The month shards of `SHARDS` that own at least one numbered document."""
    root = load_accounts(settings.pricebooks).root
    ids = store.read(INVOICES).filter(pl.col("period") == NOV)["account_id"].unique()
    return sorted({MonthShard.of_root(root(a), SHARDS) for a in ids}, key=lambda s: s.index)


def _issued_state(store: DeltaStore) -> dict[str, pl.DataFrame]:
    """The month's issued rows, lines and marker, in a total order, volatile columns out."""
    frames = {
        "invoices": store.read(INVOICES).filter(pl.col("period") == NOV),
        "lines": store.read(INVOICE_LINES).filter(pl.col("period") == NOV),
        "marker": store.read(PERIOD_CLOSES).filter(pl.col("period") == NOV),
    }
    out = {}
    for name, frame in frames.items():
        frame = frame.drop([c for c in VOLATILE if c in frame.columns])
        out[name] = frame.sort(frame.columns, nulls_last=True)
    return out


def _pdfs(settings: Settings) -> dict[str, bytes]:
    documents = DocumentStore(settings.home)
    return {rel: documents.get(rel) for rel in documents.listdir(f"invoices/{NOV}", ".pdf")}


def test_a_close_rendered_shard_by_shard_issues_what_one_close_issues(tmp_path, monkeypatch):
    """Invariant: number → documents of each month shard → marker gives the rows, lines, PDF
    bytes and marker of `close --approve` in one process, and invariant 5 holds."""
    monkeypatch.setenv(MONTH_SHARDS_ENV, str(SHARDS))
    whole_store, whole = scenario().open("nov_closed")
    store, settings = scenario().home_at("nov_built", tmp_path / "h")
    _number(store, settings)
    shards = _shards(store, settings)
    assert len(shards) >= 2  # the month really is split
    for shard in reversed(shards):  # any order
        done = render_documents(store, settings, NOV, "shard-run", shard=shard)
        assert done.rendered > 0 and done.kept == 0
    result = finish_month(store, settings, NOV, run_id="finish-run")
    assert result.status == "closed" and result.issued_at == NOV_ISSUED.isoformat()
    assert result.reports  # the month's reconciliation reports go with the marker, as in one close
    sharded, one = _issued_state(store), _issued_state(whole_store)
    for name in one:
        assert sharded[name].equals(one[name]), name
    assert _pdfs(settings) == _pdfs(whole)
    assert books_problems(store) == []
    assert issued_intact(store, settings, NOV).passed
    assert closed_periods(store)[NOV]["approved_by"] == "test"


def test_the_marker_waits_for_every_shard_and_names_the_missing_ones(tmp_path, monkeypatch):
    """Invariant: no marker while a numbered document has no PDF; the refusal names the month
    shards to rerun, and once they rendered the close finishes. A shard rendered twice keeps
    its documents instead of rendering them again."""
    monkeypatch.setenv(MONTH_SHARDS_ENV, str(SHARDS))
    store, settings = scenario().home_at("nov_built", tmp_path / "h")
    _number(store, settings)
    first, *rest = _shards(store, settings)
    render_documents(store, settings, NOV, "r1", shard=first)
    again = render_documents(store, settings, NOV, "r2", shard=first)
    assert again.rendered == 0 and again.kept > 0
    with pytest.raises(InvariantError) as refused:
        finish_month(store, settings, NOV, run_id="early")
    message = str(refused.value)
    assert "not rendered" in message
    assert f"month shard(s) {[s.index for s in rest]} of {SHARDS}" in message
    assert NOV not in closed_periods(store)
    for shard in rest:
        render_documents(store, settings, NOV, "r3", shard=shard)
    assert finish_month(store, settings, NOV, run_id="done").status == "closed"
    assert books_problems(store) == []


def test_finish_refuses_a_month_never_numbered_or_whose_rows_went_away(tmp_path):
    """Invariant: the marker lists exactly the documents the close numbered. A month no close
    numbered cannot be finished; nor can one whose numbered rows were removed since (another
    close cleared them as leftovers): the marker would otherwise close it empty."""
    store, settings = scenario().home_at("nov_built", tmp_path / "h")
    with pytest.raises(UsageboxError, match="not numbered"):
        finish_month(store, settings, NOV, run_id="x")
    _number(store, settings)
    render_documents(store, settings, NOV, "r")
    store.delete_where(INVOICES, period=NOV, status="issued")
    with pytest.raises(
        InvariantError, match=r"0 numbered document\(s\) stored, the close numbered"
    ):
        finish_month(store, settings, NOV, run_id="x")
    assert NOV not in closed_periods(store)
    close_month(store, settings, NOV, approve=True, now=NOV_ISSUED, approved_by="test")
    assert NOV in closed_periods(store) and books_problems(store) == []


def test_drafts_refreshed_between_the_steps_are_gone_once_the_month_closes(tmp_path):
    """Invariant: a closed month holds issued documents only. A monthly run between numbering
    and the marker drafts the month again; the marker step removes those drafts."""
    store, settings = scenario().home_at("nov_built", tmp_path / "h")
    _number(store, settings)
    refresh_drafts(store, settings.pricebooks, NOV)
    drafts = store.read(INVOICES).filter((pl.col("period") == NOV) & (pl.col("status") == "draft"))
    assert drafts.height > 0
    render_documents(store, settings, NOV, "r")
    finish_month(store, settings, NOV, run_id="f")
    month = store.read(INVOICES).filter(pl.col("period") == NOV)
    assert set(month["status"]) == {"issued"}
    lines = store.read(INVOICE_LINES).filter(pl.col("period") == NOV)
    assert lines["invoice_number"].null_count() == 0
    assert issued_intact(store, settings, NOV).passed


# --------------------------------------------------------------------------- Dagster, S3


def _s3_scenario(home: str, work: Path) -> None:
    """`test_close_scenario` up to `nov_built`, on the S3 home."""
    store, settings = DeltaStore(home), Settings(home, DEFAULT_PRICEBOOKS)
    ingest(store, work / "october.jsonl", OCTOBER)
    build_month(store, DEFAULT_PRICEBOOKS, OCT)
    store.append(GUARDRAIL_DECISIONS, HARD_STOP)
    refresh_drafts(store, DEFAULT_PRICEBOOKS, OCT)
    close_month(store, settings, OCT, approve=True, now=OCT_ISSUED, approved_by="test")
    ingest(store, work / "late.jsonl", LATE_OCTOBER)
    ingest(store, work / "november.jsonl", NOVEMBER)
    build_month(store, DEFAULT_PRICEBOOKS, OCT)
    build_month(store, DEFAULT_PRICEBOOKS, NOV)
    refresh_drafts(store, DEFAULT_PRICEBOOKS, NOV)


def _job(job: str, partition: str, home: str, dagster_home: Path) -> subprocess.Popen:
    """`dagster job execute` of one partition of `job`, as a deployment's launcher starts it."""
    return subprocess.Popen(
        [sys.executable, "-m", "dagster", "job", "execute", "-m", "usagebox_pipelines.definitions"]
        + ["-j", job, "--tags", json.dumps({"dagster/partition": partition})],
        env=os.environ
        | {
            "USAGEBOX_HOME": home,
            "USAGEBOX_PRICEBOOKS": str(DEFAULT_PRICEBOOKS),
            "DAGSTER_HOME": str(dagster_home),
            MONTH_SHARDS_ENV: str(SHARDS),
            "USAGEBOX_PARTITION_START": OCT,
            "USAGEBOX_AUTO_APPROVE_CLOSE": "1",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(*runs: subprocess.Popen) -> None:
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err[-3000:]


def test_close_jobs_render_the_shards_at_once_on_s3(tmp_path, s3_home, monkeypatch):
    """Invariant: `close_job`, then three `invoice_documents_job` runs at once (one month shard
    each, shared lease, commits of disjoint accounts retried on conflict), then
    `finish_close_job` against a moto S3 home issue the documents of the one-process close:
    the same numbers, totals and lines; every stored PDF is the one its row and its close's
    commit name (invariant 5)."""
    _s3_scenario(s3_home, tmp_path)
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dg.DagsterInstance.from_config(str(dagster_home)).dispose()  # its SQLite schema, made once

    _wait(_job("close_job", f"{NOV}-01", s3_home, dagster_home))
    store, settings = DeltaStore(s3_home), Settings(s3_home, DEFAULT_PRICEBOOKS)
    assert NOV not in closed_periods(store)
    keys = [f"{NOV}-01|{k}" for k in range(SHARDS)]
    _wait(*[_job("invoice_documents_job", key, s3_home, dagster_home) for key in keys])
    _wait(_job("finish_close_job", f"{NOV}-01", s3_home, dagster_home))

    monkeypatch.setenv(MONTH_SHARDS_ENV, str(SHARDS))
    one, _ = scenario().open("nov_closed")
    columns = ["invoice_number", "account_id", "document_type", "total", "currency"]
    sharded = _issued_state(store)
    expected = _issued_state(one)
    assert sharded["invoices"].select(columns).equals(expected["invoices"].select(columns))
    assert sharded["lines"].equals(expected["lines"])
    assert sharded["marker"]["first_number"].equals(expected["marker"]["first_number"])
    assert sharded["marker"]["totals"].equals(expected["marker"]["totals"])
    assert issued_intact(store, settings, NOV).passed
    assert books_problems(store) == []
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        records = instance.get_run_records()
        assert len(records) == SHARDS + 2 and all(r.dagster_run.is_success for r in records)
        documents = sorted(
            (r.start_time, r.end_time)
            for r in records
            if r.dagster_run.job_name == "invoice_documents_job"
        )
        assert documents[1][0] < documents[0][1], documents  # they overlapped: no queue
