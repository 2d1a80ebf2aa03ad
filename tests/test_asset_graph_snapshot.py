"""The code location's shape, as a snapshot: every asset (group, partitioning, parents,
checks), every job (selection, partitioning, lease tag), every schedule and sensor (job).

A change of the graph shows up here as one readable diff of `tests/snapshots/asset_graph.json`
for review (a new dependency, an asset moved to another job, a lost check). After an
intended change, regenerate it:
`UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/test_asset_graph_snapshot.py`. The shape is that of
the default `USAGEBOX_MONTH_SHARDS=1` (with more shards the month × shard jobs are shared).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from usagebox_pipelines.definitions import defs
from usagebox_pipelines.defs.jobs import LEASE_TAG

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def _partitions(definition: dg.PartitionsDefinition | None) -> str | None:
    if definition is None:
        return None
    if isinstance(definition, dg.MultiPartitionsDefinition):
        return " × ".join(d.name for d in definition.partitions_defs)
    if isinstance(definition, dg.TimeWindowPartitionsDefinition):
        return {"0 0 * * *": "daily", "0 0 1 * *": "monthly"}.get(definition.cron_schedule, "time")
    return type(definition).__name__


def graph_shape() -> dict:
    graph = defs.resolve_asset_graph()
    checks: dict[str, list[str]] = {}
    for key in graph.asset_check_keys:
        checks.setdefault(key.asset_key.to_user_string(), []).append(key.name)
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node, name = graph.get(key), key.to_user_string()
        assets[name] = {
            "group": node.group_name,
            "partitions": _partitions(node.partitions_def),
            "parents": sorted(p.to_user_string() for p in node.parent_keys),
            "checks": sorted(checks.get(name, [])),
        }
    jobs = {}
    for job in sorted(defs.jobs or [], key=lambda j: j.name):
        resolved = defs.resolve_job_def(job.name)
        selected = resolved.asset_layer.selected_asset_keys
        jobs[job.name] = {
            "assets": sorted(k.to_user_string() for k in selected),
            "partitions": _partitions(resolved.partitions_def),
            "lease": resolved.tags.get(LEASE_TAG),
        }
    schedules = {s.name: s.job_name for s in defs.schedules or []}
    sensors = {
        s.name: sorted(t.job_name for t in s.targets) if s.targets else []
        for s in defs.sensors or []
    }
    return {"assets": assets, "jobs": jobs, "schedules": schedules, "sensors": sensors}


def test_the_asset_graph_matches_its_snapshot() -> None:
    shape = graph_shape()
    text = json.dumps(shape, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(text)
    assert json.loads(SNAPSHOT.read_text()) == shape, (
        "the asset graph changed: review the diff, then UPDATE_SNAPSHOTS=1 to accept it"
    )
