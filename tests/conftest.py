"""Shared fixtures: a temporary home and small event-file writers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from usagebox_pipelines.storage import DeltaStore


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def store(home: Path) -> DeltaStore:
    return DeltaStore(str(home))


def event(
    event_id: str,
    account: str = "acct-001",
    qty: object = 10,
    ts: str = "2026-10-01T10:15:00Z",
    meter: str = "input_tokens",
    **extra: object,
) -> dict:
    """A canonical event dict (CONTRACT §2) with sensible defaults."""
    return {
        "event_id": event_id,
        "account_id": account,
        "meter_id": meter,
        "quantity": qty,
        "timestamp": ts,
        "model_id": "gpt-4o",
        **extra,
    }


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path
