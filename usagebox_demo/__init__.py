"""Seeded demo and benchmark data: a realistic month of usage events with real-feed dirt.

Not part of the product: `usagebox_demo` imports `usagebox_pipelines`, never the reverse. The
one edge the other way is the `usagebox demo` command, which imports `usagebox_demo.run`
lazily inside the command function (`usagebox_pipelines/cli.py`).

- `generate_usage` / `iter_usage`: clean canonical events (vectorised; 10 M in seconds).
- `write_shape` / `write_jsonl_chunks`: write events in one of the four input shapes of
  CONTRACT.md §2 (canonical JSONL, Stigg JSONL, snake-case CSV, Parquet), chunked, `.gz` aware.
- `write_demo_inputs`: the demo month on disk (all shapes, retries, conflicts, corrections, late
  and malformed rows) plus a `DemoManifest` with planted counts and reference hourly sums.
- `guardrail_scenarios`: one extra JSONL file that trips a team allocation and a token surge.
- `vendor_exports`: vendor exports in the real formats, derived from the demo's metered usage,
  with planted discrepancies for the reconciliation to find.
- `run`: `usagebox demo`, every stage on the generated month.
"""

from usagebox_demo.generate import (
    MAIN_FILES,
    DemoManifest,
    DirtCounts,
    FileSpec,
    expected_usage,
    write_demo_inputs,
)
from usagebox_demo.shapes import (
    SHAPES,
    Shape,
    shape_frame,
    write_frames,
    write_jsonl_chunks,
    write_shape,
)
from usagebox_demo.usage import (
    USAGE_COLUMNS,
    generate_usage,
    iter_usage,
    month_bounds,
    shift_month,
)

__all__ = [
    "MAIN_FILES",
    "SHAPES",
    "USAGE_COLUMNS",
    "DemoManifest",
    "DirtCounts",
    "FileSpec",
    "Shape",
    "expected_usage",
    "generate_usage",
    "iter_usage",
    "month_bounds",
    "shape_frame",
    "shift_month",
    "write_demo_inputs",
    "write_frames",
    "write_jsonl_chunks",
    "write_shape",
]
