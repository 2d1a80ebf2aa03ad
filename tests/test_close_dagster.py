"""Dagster wiring of the close: asset graph, the month_close schedule, and close_job end to end."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

import usagebox_pipelines.definitions as definitions
from tests.test_close_scenario import NOV, issued, scenario
from usagebox_pipelines.defs.invoicing import (
    AUTO_APPROVE_ENV,
    GRACE_ENV,
    draft_invoices,
    invoicing_assets,
    invoicing_schedules,
    month_close,
    month_to_close,
)
from usagebox_pipelines.defs.jobs import close_job
from usagebox_pipelines.defs.resources import UsageboxResource
from usagebox_pipelines.runner import execute_job
from usagebox_pipelines.stages.books import closed_periods

pytestmark = pytest.mark.slow  # real Dagster runs


def with_invoicing(defs: dg.Definitions) -> dg.Definitions:
    """The code location with the invoicing module, whether or not it is wired in yet."""
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    if "issued_invoices" in keys:
        return defs
    extra = dg.Definitions(assets=invoicing_assets, schedules=invoicing_schedules, jobs=[close_job])
    return dg.Definitions.merge(defs, extra)


@pytest.fixture
def defs(monkeypatch) -> dg.Definitions:
    merged = with_invoicing(definitions.defs)
    monkeypatch.setattr(definitions, "defs", merged)  # runner.execute_job reads it at call time
    return merged


def selected(defs: dg.Definitions, job: str) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_job_def(job).asset_layer.selected_asset_keys}


def test_asset_graph_jobs_and_schedule(defs):
    assert "draft_invoices" in selected(defs, "monthly_job")
    assert selected(defs, "close_job") == {"issued_invoices"}
    assert selected(defs, "invoice_documents_job") == {"invoice_documents"}
    assert selected(defs, "finish_close_job") == {"period_closes"}
    graph = defs.resolve_asset_graph()
    drafts = graph.get(dg.AssetKey("draft_invoices"))
    assert drafts.partitions_def is not None and drafts.group_name == "invoicing"
    assert {p.to_user_string() for p in drafts.parent_keys} >= {"rated_usage"}
    checks = {c.name for c in draft_invoices.check_specs}
    assert checks == {"4_invoice_lines_equal_rated_usage"}
    assert graph.get(dg.AssetKey("issued_invoices")).group_name == "close"
    documents = graph.get(dg.AssetKey("invoice_documents"))
    assert {p.to_user_string() for p in documents.parent_keys} == {"issued_invoices"}
    marker = graph.get(dg.AssetKey("period_closes"))
    assert {p.to_user_string() for p in marker.parent_keys} == {"invoice_documents"}
    schedule = defs.resolve_schedule_def("month_close")
    assert schedule.job_name == "close_job"


@pytest.mark.parametrize(
    ("now", "grace", "month"),
    [
        (datetime(2026, 11, 4, 6, tzinfo=UTC), 3, "2026-10"),
        (datetime(2026, 11, 3, 23, tzinfo=UTC), 3, None),
        (datetime(2026, 11, 1, 6, tzinfo=UTC), 0, "2026-10"),
        (datetime(2027, 1, 20, 6, tzinfo=UTC), 3, "2026-12"),
    ],
)
def test_month_to_close_waits_for_the_grace_days(now, grace, month):
    assert month_to_close(now, grace) == month


def test_schedule_requests_the_previous_month_once(monkeypatch):
    monkeypatch.setenv(GRACE_ENV, "2")
    early = month_close(
        dg.build_schedule_context(scheduled_execution_time=datetime(2026, 12, 2, 6, tzinfo=UTC))
    )
    assert isinstance(early, dg.SkipReason)
    ctx = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 12, 3, 6, tzinfo=UTC))
    request = month_close(ctx)
    assert request.run_key == "close-2026-11" and request.partition_key == "2026-11-01"


def test_draft_invoices_asset_refreshes_drafts_and_passes_invariant_4(tmp_path):
    store, settings = scenario().home_at("nov_built", tmp_path / "h")
    resource = UsageboxResource(home=settings.home, pricebooks=str(settings.pricebooks))
    result = dg.materialize(
        [draft_invoices], partition_key=f"{NOV}-01|0", resources={"usagebox": resource}
    )
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.passed, check.metadata


def test_close_jobs_issue_the_month_only_when_approved(defs, tmp_path, monkeypatch):
    """The close's three jobs, as the sensors chain them: nothing is issued until
    `finish_close_job` has checked every numbered document and appended the marker."""
    monkeypatch.delenv(AUTO_APPROVE_ENV, raising=False)
    store, settings = scenario().home_at("nov_built", tmp_path / "h")
    refused = execute_job(settings, "close_job", partition_key=f"{NOV}-01")
    assert not refused.success and "needs approval" in " ".join(refused.failures)
    assert issued(store, NOV).is_empty()
    early = execute_job(settings, "finish_close_job", partition_key=f"{NOV}-01")
    assert not early.success and "not numbered" in " ".join(early.failures)
    numbered = execute_job(
        settings,
        "close_job",
        partition_key=f"{NOV}-01",
        ops_config={"issued_invoices": {"config": {"approve": True}}},
    )
    assert numbered.success, numbered.failures
    assert NOV not in closed_periods(store) and issued(store, NOV).is_empty()  # no marker yet
    unrendered = execute_job(settings, "finish_close_job", partition_key=f"{NOV}-01")
    assert not unrendered.success and "not rendered" in " ".join(unrendered.failures)
    documents = execute_job(settings, "invoice_documents_job", partition_key=f"{NOV}-01|0")
    assert documents.success, documents.failures
    outcome = execute_job(settings, "finish_close_job", partition_key=f"{NOV}-01")
    assert outcome.success, outcome.failures
    docs = issued(store, NOV)
    expected = issued(scenario().open("nov_closed")[0], NOV)
    assert sorted(docs["invoice_number"]) == sorted(expected["invoice_number"])
    assert docs["pdf_sha256"].null_count() == 0
    assert closed_periods(store)[NOV]["approved_by"] == f"dagster:{numbered.run_id}"
    again = execute_job(settings, "close_job", partition_key=f"{NOV}-01")
    assert again.success  # already closed: a no-op, even without approval
    assert execute_job(settings, "finish_close_job", partition_key=f"{NOV}-01").success


def test_the_sensors_chain_the_close_jobs(defs, tmp_path, monkeypatch):
    """`documents_after_numbering` turns a succeeded `close_job` run into one
    `invoice_documents_job` run per month shard; `finish_close_after_documents` turns the last
    succeeded documents run into the month's `finish_close_job`, which closes it."""
    from tests.test_definitions import _success_context
    from usagebox_pipelines.defs.sensors import (
        documents_after_numbering,
        finish_close_after_documents,
    )

    monkeypatch.setenv(AUTO_APPROVE_ENV, "1")
    store, settings = scenario().home_at("nov_built", tmp_path / "h")
    instance = dg.DagsterInstance.ephemeral()
    numbered = execute_job(settings, "close_job", partition_key=f"{NOV}-01", instance=instance)
    assert numbered.success, numbered.failures
    run = instance.get_run_by_id(numbered.run_id)
    requests = documents_after_numbering(_success_context(instance, run, "documents"))
    assert [(r.job_name, r.partition_key) for r in requests] == [
        ("invoice_documents_job", f"{NOV}-01|0")  # the one month shard by default
    ]
    documents = execute_job(
        settings, "invoice_documents_job", partition_key=requests[0].partition_key,
        instance=instance,
    )  # fmt: skip
    assert documents.success, documents.failures
    run = instance.get_run_by_id(documents.run_id)
    finish = finish_close_after_documents(_success_context(instance, run, "finish"))
    assert isinstance(finish, dg.RunRequest)
    assert (finish.job_name, finish.partition_key) == ("finish_close_job", f"{NOV}-01")
    closed = execute_job(settings, "finish_close_job", partition_key=f"{NOV}-01", instance=instance)
    assert closed.success, closed.failures
    assert NOV in closed_periods(store)
    assert issued(store, NOV)["pdf_sha256"].null_count() == 0
