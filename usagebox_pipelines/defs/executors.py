"""Where a run's steps execute: `$USAGEBOX_EXECUTOR`, read when the code location loads.

* `multiprocess` (default): each step in its own process on the run's machine, at most
  `max_concurrent` at once (run config `execution.config.max_concurrent`; default: CPU count).
* `k8s`: each step in its own Kubernetes Job (`dagster_k8s.k8s_job_executor`; the `deploy`
  extra), configured per run under `execution.config` (image, resources, env from secrets)
  or by the Helm values in `deploy/helm-values.yaml`.

`usagebox run` and the tests' `execute_in_process` ignore this: they run steps in-process.
"""

from __future__ import annotations

import os

import dagster as dg

EXECUTORS = ("multiprocess", "k8s")


def step_executor() -> dg.ExecutorDefinition:
    """The executor named by $USAGEBOX_EXECUTOR (`multiprocess` unless set)."""
    name = os.environ.get("USAGEBOX_EXECUTOR", "multiprocess").strip() or "multiprocess"
    if name == "multiprocess":
        return dg.multiprocess_executor
    if name == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as exc:
            raise RuntimeError(
                "USAGEBOX_EXECUTOR=k8s needs dagster-k8s: pip install 'usagebox-pipelines[deploy]'"
            ) from exc
        return k8s_job_executor
    raise RuntimeError(f"USAGEBOX_EXECUTOR={name!r}: choose one of {', '.join(EXECUTORS)}")
