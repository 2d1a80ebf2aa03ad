"""The Dagster code location: merges the asset, job, schedule and sensor modules."""

import dagster as dg

from usagebox_pipelines.defs.executors import step_executor
from usagebox_pipelines.defs.guardrails import guardrail_assets, guardrail_sensors
from usagebox_pipelines.defs.invoicing import invoicing_assets, invoicing_schedules
from usagebox_pipelines.defs.jobs import (
    close_job,
    daily_job,
    finish_close_job,
    hourly_job,
    ingest_job,
    invoice_documents_job,
    monthly_job,
    reconcile_job,
)
from usagebox_pipelines.defs.maintenance import maintenance_job, weekly_maintenance
from usagebox_pipelines.defs.metering import metering_assets
from usagebox_pipelines.defs.pricing import pricing_assets
from usagebox_pipelines.defs.reconciliation import reconciliation_assets
from usagebox_pipelines.defs.resources import UsageboxResource
from usagebox_pipelines.defs.schedules import schedules
from usagebox_pipelines.defs.sensors import sensors

defs = dg.Definitions(
    assets=[
        *metering_assets,
        *pricing_assets,
        *guardrail_assets,
        reconciliation_assets,
        *invoicing_assets,
    ],
    jobs=[
        ingest_job,
        daily_job,
        hourly_job,
        monthly_job,
        reconcile_job,
        close_job,
        invoice_documents_job,
        finish_close_job,
        maintenance_job,
    ],
    schedules=[*schedules, *invoicing_schedules, weekly_maintenance],
    sensors=[*sensors, *guardrail_sensors],
    # The home comes from $USAGEBOX_HOME when a run launches (the UI, schedules, sensors): a
    # missing variable fails the run naming it instead of writing to `./data`. `usagebox run`
    # passes its --home in the run config.
    resources={"usagebox": UsageboxResource(home=dg.EnvVar("USAGEBOX_HOME"))},
    executor=step_executor(),
)
