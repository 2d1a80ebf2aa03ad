"""The store-facing stage: tables written, decisions append-only and idempotent, alerts once,
invoice notes for hard stops, the policy export and the CLI."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal as D
from pathlib import Path

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from tests.test_guardrails_fixtures import PERIOD, at, hourly_rows, steady, write_books
from usagebox_pipelines.catalog import (
    EVENTS_BUILDS,
    GUARDRAIL_ALERTS,
    GUARDRAIL_DECISIONS,
    SPEND_STATE,
    USAGE_HOURLY,
)
from usagebox_pipelines.cli_guardrails import guardrails_app
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.guardrails import hard_stop_notes
from usagebox_pipelines.stages.guardrails import (
    current_policy,
    raise_alerts,
    refresh_guardrails,
)
from usagebox_pipelines.storage import DeltaStore

NOW = at(24 * 10)  # 2026-10-11 00:00
SURGE = 24 * 9 + 10  # 2026-10-10 10:00


def scenario_rows() -> list[tuple]:
    """solo and team cross 80/100 % on day 1; `surger` (unlisted) runs 100 tokens an hour
    for 10 days with 600,000 at 2026-10-10 10:00."""
    surger = [("surger", "output_tokens", h, 600_000 if h == SURGE else 100) for h in range(240)]
    return steady("solo", 10, 12) + steady("team", 10, 12) + steady("sibling", 5, 12) + surger


@pytest.fixture
def world(tmp_path: Path, store: DeltaStore) -> tuple[DeltaStore, Path]:
    books = write_books(tmp_path / "pricebooks")
    store.append(USAGE_HOURLY, hourly_rows(scenario_rows()))
    return store, books


def decisions(store: DeltaStore) -> pl.DataFrame:
    return store.read(GUARDRAIL_DECISIONS).sort("effective_at", "seq")


def test_refresh_records_each_state_change_once(world: tuple[DeltaStore, Path]) -> None:
    store, books = world
    summary = refresh_guardrails(store, books, PERIOD, NOW, run_id="r1")
    assert summary["hard_stop"] == ["solo:budget", "team:budget"] and summary["anomalies"] == 2
    trace = decisions(store)
    budget = trace.filter(pl.col("scope") == "budget")
    assert budget.select("account_id", "from_status", "to_status", "effective_at").rows() == [
        ("solo", "ok", "soft_alert", at(7)),
        ("team", "ok", "soft_alert", at(7)),
        ("solo", "soft_alert", "hard_stop", at(9)),
        ("team", "soft_alert", "hard_stop", at(9)),
    ]
    solo_hard = budget.filter((pl.col("account_id") == "solo") & (pl.col("rule") == "budget_hard"))
    inputs = json.loads(solo_hard["inputs"].item())
    assert D(inputs["spend"]) == 100 and D(inputs["budget"]) == 100
    assert inputs["window"] == ["2026-10-01T00:00:00+00:00", "2026-10-01T10:00:00+00:00"]
    surge = trace.filter(pl.col("scope") == "anomaly")
    assert sorted(surge.select("rule", "to_status").rows()) == [
        ("spend_spike", "cleared"),
        ("spend_spike", "raised"),
        ("token_surge", "cleared"),
        ("token_surge", "raised"),
    ]
    assert set(surge["effective_at"].to_list()) == {at(SURGE), at(SURGE + 1)}
    # rerun (same or later time): nothing new, state replaced not duplicated
    assert refresh_guardrails(store, books, PERIOD, NOW, run_id="r2")["new_decisions"] == 0
    assert refresh_guardrails(store, books, PERIOD, NOW + timedelta(hours=5))["new_decisions"] == 0
    assert decisions(store).height == trace.height
    state = store.read(SPEND_STATE)
    assert state.height == state.select("account_id", "limit_id").n_unique()
    solo = state.filter((pl.col("account_id") == "solo") & (pl.col("limit_id") == "budget"))
    assert solo["decision_id"].item() == solo_hard["decision_id"].item()
    assert state.filter(pl.col("account_id") == "surger")["anomaly_hours"].item() == 1


def test_recovery_and_re_escalation_are_new_decisions(world: tuple[DeltaStore, Path]) -> None:
    """solo drops to 12 (a correction), then comes back: the same crossing hours recur, but
    they follow a recovery, so they are new decisions with new ids."""
    store, books = world
    refresh_guardrails(store, books, PERIOD, NOW)
    rows = [r for r in scenario_rows() if r[0] != "solo"] + steady("solo", 1, 12)
    store.overwrite(USAGE_HOURLY, hourly_rows(rows))
    assert refresh_guardrails(store, books, PERIOD, NOW)["new_decisions"] == 1
    last = decisions(store).filter(pl.col("account_id") == "solo").tail(1).row(0, named=True)
    change = (last["from_status"], last["to_status"], last["rule"])
    assert change == ("hard_stop", "ok", "recovered")
    store.overwrite(USAGE_HOURLY, hourly_rows(scenario_rows()))
    assert refresh_guardrails(store, books, PERIOD, NOW)["new_decisions"] == 2
    solo = decisions(store).filter(pl.col("account_id") == "solo")
    assert solo["decision_id"].n_unique() == 5
    after = {r["follows"]: r for r in solo.iter_rows(named=True)}
    chain, current = [], None
    while current in after:  # walk the `follows` chain from the first decision
        chain.append(after[current]["to_status"])
        current = after[current]["decision_id"]
    assert chain == ["soft_alert", "hard_stop", "ok", "soft_alert", "hard_stop"]


def test_alerts_fire_once_per_escalation(world: tuple[DeltaStore, Path]) -> None:
    store, books = world
    refresh_guardrails(store, books, PERIOD, NOW)
    first = raise_alerts(store, NOW)
    # 4 budget escalations + 2 anomalies raised (clears do not alert)
    assert first.height == 6 and first["decision_id"].n_unique() == 6
    assert set(first["severity"]) == {"warning", "critical"}
    assert raise_alerts(store, NOW).is_empty()
    assert store.read(GUARDRAIL_ALERTS).height == 6


def test_invoice_notes_cite_hard_stops(world: tuple[DeltaStore, Path]) -> None:
    store, books = world
    refresh_guardrails(store, books, PERIOD, NOW)
    trace = decisions(store)
    notes = hard_stop_notes(trace, "solo", PERIOD)
    stop_id = trace.filter((pl.col("account_id") == "solo") & (pl.col("to_status") == "hard_stop"))[
        "decision_id"
    ].item()
    assert len(notes) == 1 and stop_id in notes[0]
    assert "from 2026-10-01 09:00 UTC" in notes[0] and "100.00 USD" in notes[0]
    assert hard_stop_notes(trace, "sibling", PERIOD) == []
    assert hard_stop_notes(trace, "solo", "2026-09") == []


def test_policy_export_for_an_enforcer(world: tuple[DeltaStore, Path]) -> None:
    store, books = world
    refresh_guardrails(store, books, PERIOD, NOW)
    policy = current_policy(store, generated_at=NOW)
    assert policy["period"] == PERIOD and policy["as_of"] == "2026-10-11T00:00:00Z"
    solo, team, org = (policy["accounts"][a] for a in ("solo", "team", "org"))
    assert solo["hard_stop"] and solo["headroom"] == {"*": "-20", "input_tokens": "-20"}
    assert team["hard_stop"] and team["limited_by"] == "team"
    assert not org["hard_stop"] and org["status"] == "ok" and org["effective_remaining"] == "820"
    assert policy["accounts"]["sibling"]["headroom"]["*"] == "820"
    surges = policy["accounts"]["surger"]["anomalies"]
    assert {s["kind"] for s in surges} == {"token_surge", "spend_spike"}
    assert all(not s["open"] and s["cleared_at"] == "2026-10-10T11:00:00Z" for s in surges)
    json.dumps(policy)  # plain JSON types only


def cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(guardrails_app, name="guardrails")

    @app.callback()
    def _root() -> None:
        """usagebox"""

    return app


def test_cli_export_and_status(world: tuple[DeltaStore, Path], tmp_path: Path) -> None:
    store, books = world
    refresh_guardrails(store, books, PERIOD, NOW)
    common = ["--home", store.home, "--pricebooks", str(books)]
    out = tmp_path / "policy" / "guardrails.json"
    result = CliRunner().invoke(cli(), ["guardrails", "export", "--out", str(out), *common])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["hard_stop"] == ["solo", "team"] and summary["period"] == PERIOD
    assert json.loads(out.read_text())["accounts"]["solo"]["status"] == "hard_stop"
    result = CliRunner().invoke(cli(), ["guardrails", "status", "team", *common])
    assert result.exit_code == 0, result.output
    assert "HARD STOP" in result.output and "parent:    org" in result.output
    assert "soft_alert -> hard_stop" in result.output
    result = CliRunner().invoke(cli(), ["guardrails", "status", "nobody", *common])
    assert isinstance(result.exception, UsageboxError)


def test_cli_without_state_is_a_user_error(store: DeltaStore, tmp_path: Path) -> None:
    args = ["guardrails", "export", "--out", str(tmp_path / "p.json"), "--home", store.home]
    result = CliRunner().invoke(cli(), args)
    assert "no usagebox home" in str(result.exception)  # nothing there at all
    store.append(EVENTS_BUILDS, pl.DataFrame({"x": [1]}))  # a home, without guardrails
    result = CliRunner().invoke(cli(), args)
    assert isinstance(result.exception, UsageboxError)
    assert "no spend_state yet" in str(result.exception)
