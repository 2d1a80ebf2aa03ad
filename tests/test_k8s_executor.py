"""The Kubernetes path without a cluster: with `USAGEBOX_EXECUTOR=k8s` the code location loads,
every job carries `k8s_job_executor`, `dagster definitions validate` passes, and the run config
and run launcher config in `deploy/` validate against dagster-k8s's own config schemas.

Skipped when dagster-k8s (the `deploy` extra) is not installed: CI installs `.[dev]` only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

dagster_k8s = pytest.importorskip("dagster_k8s")

from dagster._config import process_config, validate_config  # noqa: E402
from dagster._core.instance.config import dagster_instance_config  # noqa: E402

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ROOT = DEPLOY.parent

pytestmark = pytest.mark.slow  # loads the code location in subprocesses

_EXECUTORS = """
import json
from usagebox_pipelines.definitions import defs
jobs = [j for j in defs.resolve_all_job_defs() if not j.name.startswith("__")]
print(json.dumps({j.name: j.executor_def.name for j in jobs}))
"""


def _env(tmp_path: Path) -> dict[str, str]:
    return os.environ | {
        "USAGEBOX_EXECUTOR": "k8s",
        "USAGEBOX_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(_dagster_home(tmp_path)),
        "PYTHONPATH": str(ROOT),
    }


def _dagster_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


def test_every_job_runs_its_steps_with_k8s_job_executor(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _EXECUTORS],
        env=_env(tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    executors = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"ingest_job", "daily_job", "hourly_job", "monthly_job", "close_job"} <= set(executors)
    assert set(executors.values()) == {dagster_k8s.k8s_job_executor.name}


def test_dagster_definitions_validate_passes_with_the_k8s_executor(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate"]
        + ["-m", "usagebox_pipelines.definitions"],
        env=_env(tmp_path),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-2000:]
    assert "Validation successful" in out.stdout + out.stderr


def test_the_run_config_in_deploy_validates_against_k8s_job_executor() -> None:
    config = yaml.safe_load((DEPLOY / "run-config.yaml").read_text())["execution"]["config"]
    schema = dagster_k8s.k8s_job_executor.config_schema.config_type
    result = process_config(schema, config)
    assert result.success, result.errors
    assert result.value["max_concurrent"] == 4
    assert result.value["env_secrets"] == ["usagebox-aws"]
    # the schema is really being checked: a misspelt key and a wrong type are refused
    assert not process_config(schema, config | {"env_secret": ["usagebox-aws"]}).success
    assert not process_config(schema, config | {"max_concurrent": "four"}).success


def test_the_instance_run_launcher_validates_against_k8s_run_launcher() -> None:
    config, _ = dagster_instance_config(str(DEPLOY), "dagster.yaml")
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    schema = dagster_k8s.K8sRunLauncher.config_type()
    result = validate_config(schema, launcher["config"])
    assert result.success, result.errors
    assert "USAGEBOX_EXECUTOR=k8s" in launcher["config"]["env_vars"]
