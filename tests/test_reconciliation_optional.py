"""Pricing without reconciliation: no `vendors.yaml` in the pricebooks folder skips it cleanly."""

from __future__ import annotations

import dagster as dg

from tests.test_close_scenario import OCT, scenario
from usagebox_pipelines.catalog import RATED_USAGE, RECONCILIATION
from usagebox_pipelines.definitions import defs
from usagebox_pipelines.runner import execute_job
from usagebox_pipelines.stages.reconciliation import SKIPPED, reconcile_month


def test_monthly_job_runs_without_vendors_yaml(tmp_path):
    store, settings = scenario().home_at("oct_built", tmp_path / "h")
    (settings.pricebooks / "vendors.yaml").unlink()
    outcome = execute_job(settings, "monthly_job", partition_key=f"{OCT}-01|0")
    assert outcome.success, outcome.failures
    outcome = execute_job(settings, "reconcile_job", partition_key=f"{OCT}-01")
    assert outcome.success, outcome.failures
    assert store.exists(RATED_USAGE)
    assert not store.exists(RECONCILIATION)
    result = reconcile_month(store, settings, OCT)
    assert result["skipped"] == SKIPPED == "no vendors.yaml: reconciliation skipped"


def test_reconciliation_runs_after_rated_usage():
    """Cost attribution reads the month's rated_usage for revenue: never the previous run's."""
    graph = defs.resolve_asset_graph()
    for key in ("reconciliation", "cost_attribution"):
        assert dg.AssetKey("rated_usage") in graph.get(dg.AssetKey(key)).parent_keys
