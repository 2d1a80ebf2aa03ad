"""Shared fixtures: a temporary home and small event-file writers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`s3://billing/usagebox` on a moto S3 server in its own process (AWS_* variables set).

    Not a server thread in the test process: delta-rs calls such as `DeltaTable.history()`
    keep the GIL while they wait on the network, so a thread could never answer them."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket="billing"
        )
        yield "s3://billing/usagebox"
    finally:
        server.terminate()
        server.wait(timeout=10)


@dataclass(frozen=True)
class DemoHome:
    """A home `usagebox demo` built, and the report it printed."""

    home: Path
    report: dict


#: The installed `usagebox` script, as a user runs it.
USAGEBOX_SCRIPT = Path(sys.executable).parent / "usagebox"


def usagebox_cli(argv: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    """The installed `usagebox` script as a user runs it (no USAGEBOX_* from the test env)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("USAGEBOX_")}
    return subprocess.run(
        [str(USAGEBOX_SCRIPT), *argv], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> DemoHome:
    """One small demo month (1,500 events, seed 3) built through the CLI, shared by the tests
    that only read a demo home (the end-to-end checks, the README's examples): it is the
    slowest setup of the suite, made once per test process."""
    home = tmp_path_factory.mktemp("demo") / "demo"
    done = usagebox_cli(["demo", "--events", "1500", "--seed", "3", "--home", str(home)])
    assert done.returncode == 0, done.stderr[-2000:]
    return DemoHome(home, json.loads(done.stdout))
