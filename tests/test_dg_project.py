"""The project is a `dg` project (`[tool.dg]` in pyproject.toml, ADR 0015): the modules it names
exist, and `dg check defs` / `dg list defs --json` load the same code location as
`usagebox_pipelines.definitions:defs` (skipped where `dg`, dagster-dg-cli, is not installed)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the venv running the tests first (make test calls .venv/bin/pytest without activating it)
DG = shutil.which("dg", path=str(Path(sys.executable).parent)) or shutil.which("dg")
needs_dg = pytest.mark.skipif(DG is None, reason="dg (dagster-dg-cli) is not installed")


def _dg_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["dg"]


def test_tool_dg_names_the_package_its_defs_and_the_definitions_module():
    cfg = _dg_config()
    project = cfg["project"]
    assert cfg["directory_type"] == "project"
    assert project["root_module"] == "usagebox_pipelines"
    assert project["defs_module"] == "usagebox_pipelines.defs"
    target = importlib.import_module(project["code_location_target_module"])
    assert target.defs.resolve_asset_graph().get_all_asset_keys()  # the CLI's defs, unchanged
    importlib.import_module(project["defs_module"])


def _dg(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    home = tmp_path / "home"
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = os.environ | {"USAGEBOX_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    return subprocess.run(
        [str(DG), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@needs_dg
def test_dg_check_defs_loads_the_code_location(tmp_path):
    done = _dg("check", "defs", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "All definitions loaded successfully" in done.stdout + done.stderr


@needs_dg
def test_dg_list_defs_shows_assets_checks_jobs_schedules_and_sensors(tmp_path):
    done = _dg("list", "defs", "--json", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    listed = json.loads(done.stdout)
    assets = {a["asset_key"] for a in listed["assets"]}
    assert {
        "raw_events",
        "events",
        "usage_hourly",
        "usage_monthly",
        "rated_usage",
        "reconciliation",
        "cost_attribution",
        "spend_state",
    } <= assets
    assert {c["asset_key"] for c in listed["asset_checks"]} <= assets
    assert "events:2_events_unique" in {c["key"] for c in listed["asset_checks"]}
    assert {"ingest_job", "daily_job", "hourly_job", "monthly_job", "close_job"} <= {
        j["name"] for j in listed["jobs"]
    }
    assert "month_close" in {s["name"] for s in listed["schedules"]}
    assert {"guardrail_alerts", "inbox_sensor"} <= {s["name"] for s in listed["sensors"]}
    assert [r["name"] for r in listed["resources"]] == ["usagebox"]
