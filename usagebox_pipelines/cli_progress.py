"""Progress of the long commands (`ingest`, `run`, `close --approve`) on stderr, where it never
mixes with the summary a script reads from stdout.

A person at a terminal gets a rich progress bar with a total and an ETA; anything else (a pipe,
a CI log, a test) gets nothing, or one plain line per update with `--verbose`, so
machine-read stderr keeps its one line per failure.
"""

from __future__ import annotations

import gzip
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: The two passes of `stages.ingest.ingest_file` announce rows as they go (`a.jsonl: 250,000
#: rows read`, then `a.jsonl: 250,000 rows in, ...`): each pass moves the bar by its rows.
_ROWS = re.compile(r"^(?P<file>.+?): (?P<rows>[\d,]+) rows (?P<phase>read|in)\b")


class Reporter:
    """One progress bar: `advance` by units done, `say` a status line."""

    def __init__(self, bar: Progress | None, task: TaskID | None, verbose: bool) -> None:
        self._bar, self._task, self._verbose = bar, task, verbose

    def set_total(self, total: float) -> None:
        """The total, once known (a close knows its documents after planning)."""
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, total=total)

    def advance(self, units: float, status: str) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=units, description=status[:48])
        elif self._verbose:
            print(status, file=sys.stderr, flush=True)


@contextmanager
def progress(
    label: str, total: float | None, unit: str, verbose: bool, shown: bool = True
) -> Iterator[Reporter]:
    """A bar on a terminal's stderr (total and ETA when `total` is known), else plain lines
    with `verbose`, else (or when not `shown`) silence."""
    if not shown or not sys.stderr.isatty():
        yield Reporter(None, None, verbose)
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True)) as bar:
        yield Reporter(bar, bar.add_task(label, total=total), verbose)


class IngestProgress:
    """The `progress` callback of `ingest_files`: moves a bar over both passes of every file
    (total = 2 × the estimated rows)."""

    def __init__(self, reporter: Reporter) -> None:
        self._reporter = reporter
        self._seen: dict[tuple[str, str], int] = {}

    def __call__(self, message: str) -> None:
        match = _ROWS.match(message)
        if match is None:
            self._reporter.advance(0, message)
            return
        key = (match["file"], match["phase"])
        rows = int(match["rows"].replace(",", ""))
        done, self._seen[key] = self._seen.get(key, 0), rows
        phase = "reading" if match["phase"] == "read" else "writing"
        self._reporter.advance(rows - done, f"{phase} {match['file'][-32:]}")


def estimated_rows(paths: list[Path]) -> int | None:
    """Rows the files hold, cheaply: Parquet from its footer, text from its newlines (gzip
    decompressed on the way). None when a folder or unknown format makes it a guess."""
    total = 0
    for path in paths:
        if not path.is_file():
            return None
        name = path.name.lower()
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            total += pq.ParquetFile(path).metadata.num_rows
            continue
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            lines = sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))
        total += lines - (1 if ".csv" in name else 0)  # the CSV header row
    return total
