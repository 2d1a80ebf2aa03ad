"""A generated hostile corpus: every row of every file ends in exactly one place, no traceback.

Invariant proved per file: input rows = accepted + duplicates + conflicts + rejected (from
`ingest_log`), `quarantine` rows from the file = rejected, `raw_events` arrivals from the file =
accepted + duplicates + conflicts, and the file's good rows are accepted (a bad row never refuses
its neighbours). Unreadable files are one error line naming the file, with nothing stored.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.hostile_corpus import HostileFile, generate
from usagebox_pipelines.catalog import EVENTS, INGEST_LOG, QUARANTINE, RAW_EVENTS
from usagebox_pipelines.stages.events import update_events
from usagebox_pipelines.stages.ingest import ingest_files
from usagebox_pipelines.stages.verify import verify_ingest
from usagebox_pipelines.storage import DeltaStore


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[list[HostileFile], DeltaStore, object]:
    folder = tmp_path_factory.mktemp("hostile")
    files = generate(folder / "files")
    store = DeltaStore(str(folder / "home"))
    summary = ingest_files(store, [f.path for f in files])
    return files, store, summary


def test_corpus_has_a_few_hundred_files_of_every_class(corpus) -> None:
    files, _store, _summary = corpus
    assert len(files) >= 250
    names = {f.path.name.split("-")[0] for f in files}
    assert names == {"j", "c", "p"}


def test_every_row_of_every_hostile_file_lands_in_exactly_one_place(corpus) -> None:
    files, store, summary = corpus
    log = store.read(INGEST_LOG)
    per_file = {r["source_file"]: r for r in log.iter_rows(named=True)}
    quarantined = dict(store.read(QUARANTINE).group_by("source_file").len().iter_rows())
    raw = store.read(RAW_EVENTS)
    arrivals = dict(raw.group_by("source_file").len().iter_rows())
    accepted_ids = set(raw.filter(pl.col("disposition") == "accepted")["event_id"].to_list())
    problems = []
    for f in files:
        name = str(f.path)
        if f.file_error:
            if name in per_file or not any(e.startswith(name + ":") for e in summary.errors):
                problems.append(f"{f.path.name}: expected one file-level error, nothing stored")
            continue
        row = per_file.get(name)
        if row is None:
            problems.append(
                f"{f.path.name}: not ingested: {[e for e in summary.errors if name in e]}"
            )
            continue
        parts = row["accepted"] + row["duplicates"] + row["conflicts"] + row["rejected"]
        if row["rows"] != f.rows or parts != f.rows:
            problems.append(f"{f.path.name}: {f.rows} rows in, log {row}")
        if quarantined.get(name, 0) != row["rejected"]:
            problems.append(f"{f.path.name}: quarantine {quarantined.get(name, 0)} != {row}")
        if arrivals.get(name, 0) != row["accepted"] + row["duplicates"] + row["conflicts"]:
            problems.append(f"{f.path.name}: raw arrivals {arrivals.get(name, 0)} != {row}")
        missing = [g for g in f.good_ids if g not in accepted_ids]
        if missing:
            problems.append(f"{f.path.name}: good rows not accepted: {missing}")
    assert not problems, "\n".join(problems)
    assert all("\n" not in e and "Traceback" not in e for e in summary.errors)
    assert len(summary.errors) == sum(f.file_error for f in files)


def test_hostile_corpus_keeps_invariant_one_and_builds_events(corpus) -> None:
    _files, store, _summary = corpus
    assert verify_ingest(store).passed, verify_ingest(store).examples
    update = update_events(store)  # 9999 / year -1 never reach `events` (no overflow)
    assert update.rows > 0
    events = store.read(EVENTS)
    assert events["hour"].min().year >= 2024 and events["hour"].max().year <= 2026


def test_quarantine_reasons_name_what_to_fix(corpus) -> None:
    _files, store, _summary = corpus
    q = store.read(QUARANTINE)
    reason = dict(
        zip([Path(p).name for p in q["source_file"].to_list()], q["reason"].to_list(), strict=True)
    )
    assert "NaN or Infinity" in reason["j-qty_nan.jsonl"]
    assert "more than 12 decimal places" in reason["j-qty_1e-20.jsonl"]
    assert "more than 12 decimal places" in reason["j-qty_str_exp_13_places.jsonl"]
    assert "quantity missing" in reason["j-qty_null.jsonl"]
    assert "quantity missing" in reason["c-qty_empty.csv"]
    assert "USAGEBOX_MIN_EVENT_TIME" in reason["j-ts_2023.jsonl"]
    assert "USAGEBOX_MAX_FUTURE_DAYS" in reason["j-ts_9999.jsonl"]
    assert "duplicate JSON key 'event_id'" in reason["j-dup_key_id.jsonl"]
    assert "not valid UTF-8" in reason["j-invalid_utf8.jsonl"]
    assert "not valid UTF-8" in reason["c-latin1-file.csv"]
    assert reason["c-short_row.csv"] == "CSV row 2 has 3 fields; the header has 6"
    assert "must be a single value, not a list" in reason["j-qty_list.jsonl"]
    assert "nested too deeply" in reason["j-deep_top.jsonl"]


CLI_FILES = [
    ("j-qty_nan.jsonl", 0),
    ("c-short_row.csv", 0),
    ("p-qty_decimal256.parquet", 0),
    ("j-invalid_utf8-gz.jsonl.gz", 0),
    ("p-garbage.parquet", 2),
    ("c-dup-header.csv", 2),
]


@pytest.mark.parametrize(("name", "code"), CLI_FILES)
def test_cli_ingest_of_hostile_file_exits_cleanly(tmp_path: Path, name: str, code: int) -> None:
    files = {f.path.name: f for f in generate(tmp_path / "files")}
    target = files[name]
    exe = Path(sys.executable).with_name("usagebox")
    env = {**os.environ, "USAGEBOX_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [str(exe), "ingest", str(target.path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == code, (done.stdout, done.stderr)
    if code == 2:
        assert name in done.stderr
