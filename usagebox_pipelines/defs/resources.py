"""The one configured resource: where the tables and pricebooks live."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dagster as dg

from usagebox_pipelines.config import Settings
from usagebox_pipelines.storage import DeltaStore


class UsageboxResource(dg.ConfigurableResource):
    """`home` (local path or s3:// URI) and `pricebooks` folder; empty means env/defaults."""

    home: str = ""
    pricebooks: str = ""

    @contextlib.contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[UsageboxResource]:
        """Each step holds the home's writer lease (re-entrant: free under `usagebox run`), so
        runs launched by schedules, sensors or the UI never interleave with another writer."""
        run = context.run_id or "dagster"
        with self.store.writer(f"dagster run {run}"):
            yield self

    @property
    def settings(self) -> Settings:
        return Settings.resolve(self.home or None, self.pricebooks or None)

    @property
    def store(self) -> DeltaStore:
        return DeltaStore(self.settings.home)
