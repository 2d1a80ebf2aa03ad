"""Commits on object storage are conditional puts: a store that ignores `If-None-Match` is
refused before the first write, unless the user opts into single-writer mode (ADR 0012).

The store that ignores the header is real: moto behind `tests/s3_shim.py`, a proxy that drops
`If-None-Match`/`If-Match` from every request, as stores without conditional puts do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import boto3
import polars as pl
import pytest

from tests.conftest import event, free_port, write_jsonl
from usagebox_pipelines.catalog import HOUR_BUILDS, RAW_EVENTS
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.object_store import PROBE_FOLDER, UNSAFE_RENAME
from usagebox_pipelines.storage import DeltaStore

pytestmark = pytest.mark.slow  # a local moto S3 server (and a proxy) in their own processes


@pytest.fixture
def ignoring_endpoint(s3_home: str) -> Iterator[str]:
    """An endpoint in front of the moto server that ignores conditional writes."""
    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "tests.s3_shim", "--port", str(port)]
        + ["--upstream", os.environ["AWS_ENDPOINT_URL"]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # answered (moto's 404 for "/"): the proxy is up
            except OSError:
                time.sleep(0.1)
        yield endpoint
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)


def _builds() -> pl.DataFrame:
    hour = datetime(2026, 10, 1, tzinfo=UTC)
    return pl.DataFrame({"hour": [hour], "built_at": [hour], "run_id": ["probe-test"]})


def _probe_objects(endpoint: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    listing = s3.list_objects_v2(Bucket="billing", Prefix=f"usagebox/{PROBE_FOLDER}/")
    return [o["Key"] for o in listing.get("Contents", [])]


def _ingest(home: str, path: Path, endpoint: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "usagebox_pipelines.cli", "ingest", str(path), "--home", home],
        env=os.environ | {"AWS_ENDPOINT_URL": endpoint} | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_store_with_conditional_puts_passes_the_probe_and_keeps_no_probe_object(
    s3_home: str,
) -> None:
    store = DeltaStore(s3_home)
    assert UNSAFE_RENAME not in (store.storage_options or {})
    store.append(HOUR_BUILDS, _builds())
    assert store.read(HOUR_BUILDS).height == 1
    assert _probe_objects(os.environ["AWS_ENDPOINT_URL"]) == []


def test_conditional_put_mode_is_passed_through_to_the_store(
    s3_home: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_CONDITIONAL_PUT reaches the client: `etag` works on moto, `disabled` is refused."""
    monkeypatch.setenv("AWS_CONDITIONAL_PUT", "etag")
    DeltaStore(s3_home).append(HOUR_BUILDS, _builds())
    monkeypatch.setenv("AWS_CONDITIONAL_PUT", "disabled")
    with pytest.raises(UsageboxError, match="ignores If-None-Match"):
        DeltaStore(s3_home).append(HOUR_BUILDS, _builds())
    assert DeltaStore(s3_home).read(HOUR_BUILDS).height == 1


def test_a_store_that_ignores_if_none_match_is_refused_with_one_line_and_exit_2(
    tmp_path: Path, s3_home: str, ignoring_endpoint: str
) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [event("e1"), event("e2")])
    refused = _ingest(s3_home, path, ignoring_endpoint)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert ignoring_endpoint in lines[0] and "ignores If-None-Match" in lines[0]
    assert "AWS_CONDITIONAL_PUT=etag" in lines[0] and "USAGEBOX_SINGLE_WRITER=1" in lines[0]
    assert not DeltaStore(s3_home).exists(RAW_EVENTS)  # refused before the first write


def test_single_writer_mode_is_the_explicit_way_to_use_such_a_store(
    tmp_path: Path, s3_home: str, ignoring_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [event("e1"), event("e2")])
    loaded = _ingest(s3_home, path, ignoring_endpoint, USAGEBOX_SINGLE_WRITER="1")
    assert loaded.returncode == 0, loaded.stderr
    monkeypatch.setenv("USAGEBOX_SINGLE_WRITER", "1")
    store = DeltaStore(s3_home)
    assert (store.storage_options or {})[UNSAFE_RENAME] == "true"
    assert store.read(RAW_EVENTS).height == 2


def test_single_writer_setting_must_be_on_or_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USAGEBOX_SINGLE_WRITER", "maybe")
    with pytest.raises(UsageboxError, match="USAGEBOX_SINGLE_WRITER='maybe'"):
        DeltaStore("s3://billing/usagebox")
