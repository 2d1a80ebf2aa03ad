"""What `usagebox` prints: stdout is the summary (one JSON document with --json), Dagster's
own log lines never reach it; a person gets a human summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import USAGEBOX_SCRIPT, event, write_jsonl

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
    assert [r["job"] for r in document["runs"]] == ["daily_job", "monthly_job", "reconcile_job"]
    assert DAGSTER_LINE not in scripted.stdout and DAGSTER_LINE not in scripted.stderr

    human = usagebox("run", "--month", "2026-10", "--home", home, "--verbose")
    assert human.returncode == 0, human.stderr
    assert human.stdout.splitlines()[0].startswith("daily_job 2026-10-01..2026-10-31: ok")
    assert DAGSTER_LINE not in human.stdout
    assert DAGSTER_LINE in human.stderr  # --verbose: Dagster's log, on stderr


@pytest.mark.slow  # a close through the CLI
def test_close_approve_shows_a_bar_over_the_pdfs_on_a_terminal_and_json_on_stdout(
    tmp_path: Path,
) -> None:
    """A person closing at a terminal sees the PDFs counted (stderr is a pty); the JSON a
    script reads from stdout is unchanged, and a review (no --approve) draws no bar."""
    import pty
    import threading

    from tests.test_close_scenario import OCT, scenario

    _, settings = scenario().home_at("oct_built", tmp_path / "h")
    args = ["close", OCT, "--home", settings.home, "--pricebooks", str(settings.pricebooks)]

    def run(argv: list[str]) -> tuple[subprocess.CompletedProcess, str]:
        """`usagebox argv` with stderr on a pty, drained while it runs (a full pty blocks)."""
        master, slave = pty.openpty()
        chunks: list[bytes] = []

        def drain() -> None:
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer has closed the pty
                    return
                if not chunk:
                    return
                chunks.append(chunk)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        env = {**os.environ, "COLUMNS": "120"}
        done = subprocess.run(
            [str(USAGEBOX_SCRIPT), *argv],
            stdout=subprocess.PIPE,
            stderr=slave,
            env=env,
            timeout=600,
        )
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
        return done, b"".join(chunks).decode("utf-8", "replace")

    review, review_err = run([*args, "--json"])
    assert review.returncode == 0 and "PDFs" not in review_err
    done, err = run([*args, "--approve"])
    assert done.returncode == 0, err
    issued = json.loads(done.stdout)
    assert issued["status"] == "closed" and issued["invoices"]
    count = len(issued["invoices"])
    assert f"{count}/{count}" in err and "PDFs" in err
