"""Benchmark ingest: N demo events from file(s) into Delta via `ingest_files`, end to end.

Usage: python bench/ingest.py [--events 1000000] [--format parquet|jsonl] [--accounts 50]
                              [--files 1] [--chunk-rows 1000000] [--workdir DIR] [--profile]

Generation (demo distribution, `iter_usage` + `write_shape`, canonical shape) runs in a child
process before timing starts. The timed stage is `ingest_files(store, paths)`: read + parse,
normalise + pandera validation, exactly-once classification against history, Delta appends and
the `ingest_log` commit. `update_events` (which the CLI runs right after) is timed separately and
is NOT part of events/s. `--profile` adds a per-function breakdown (inclusive seconds).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    GiB_TARGET_NOTE if False else "MiB",  # placeholder to keep import block sorted
)
