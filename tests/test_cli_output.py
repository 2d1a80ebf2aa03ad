"""What `usagebox` prints: stdout is the summary (one JSON document with --json), Dagster's
own log lines never reach it; a person gets a human summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import event, write_jsonl

pytestmark = pytest.mark.slow  # subprocesses with real Dagster runs

DAGSTER_LINE = " - dagster - "


def usagebox(*argv: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "usagebox"
    env = {k: v for k, v in os.environ.items() if k != "USAGEBOX_HOME"}
    return subprocess.run(
        [str(script), *argv], capture_output=True, text=True, timeout=600, env=env
    )


def test_run_json_is_one_document_and_dagster_logs_stay_off_stdout(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    # an account over its budget makes the guardrails step log Dagster warnings
    rows = [event(f"e{i}", qty=10**9, ts=f"2026-10-02T{i:02d}:00:00Z") for i in range(20)]
    assert (
        usagebox("ingest", str(write_jsonl(tmp_path / "a.jsonl", rows)), "--home", home).returncode
        == 0
    )
    scripted = usagebox("run", "--month", "2026-10", "--home", home, "--json")
    assert scripted.returncode == 0, scripted.stderr
    document = json.loads(scripted.stdout)  # the whole of stdout is one JSON document
    assert [r["job"] for r in document["runs"]] == ["daily_job", "monthly_job"]
    assert DAGSTER_LINE not in scripted.stdout and DAGSTER_LINE not in scripted.stderr

    human = usagebox("run", "--month", "2026-10", "--home", home, "--verbose")
    assert human.returncode == 0, human.stderr
    assert human.stdout.splitlines()[0].startswith("daily_job 2026-10-01..2026-10-31: ok")
    assert DAGSTER_LINE not in human.stdout
    assert DAGSTER_LINE in human.stderr  # --verbose: Dagster's log, on stderr
