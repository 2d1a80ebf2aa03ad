"""The deployment files parse and use configuration keys the pinned Dagster knows (no network,
no image build): `deploy/dagster.yaml` against Dagster's instance schema, the queued run
coordinator's own config schema, and the Helm values' structure."""

from __future__ import annotations

from pathlib import Path

import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.run_coordinator import QueuedRunCoordinator

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_instance_config_is_valid_for_the_pinned_dagster() -> None:
    config, _ = dagster_instance_config(str(DEPLOY), "dagster.yaml")
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    limits = {
        (x["key"], str(x.get("value")))
        for x in config["concurrency"]["runs"]["tag_concurrency_limits"]
    }
    assert ("usagebox/lease", "exclusive") in limits
    assert any(key == "dagster/partition" for key, _ in limits)


def test_queued_coordinator_accepts_the_helm_limits() -> None:
    values = yaml.safe_load((DEPLOY / "helm-values.yaml").read_text())
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    as_instance = {
        "max_concurrent_runs": queued["maxConcurrentRuns"],
        "tag_concurrency_limits": queued["tagConcurrencyLimits"],
    }
    assert validate_config(QueuedRunCoordinator.config_type(), as_instance).success
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "usagebox_pipelines.definitions"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["USAGEBOX_HOME"].startswith("s3://") and env["USAGEBOX_EXECUTOR"] == "k8s"
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
