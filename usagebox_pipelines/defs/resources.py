"""The one configured resource: where the tables and pricebooks live."""

from __future__ import annotations

import dagster as dg

from usagebox_pipelines.config import Settings
from usagebox_pipelines.storage import DeltaStore


class UsageboxResource(dg.ConfigurableResource):
    """`home` (local path or s3:// URI; `EnvVar("USAGEBOX_HOME")` in the code location) and
    `pricebooks` folder; empty means env/defaults."""

    home: str = ""
    pricebooks: str = ""

    @property
    def settings(self) -> Settings:
        return Settings.resolve(self.home or None, self.pricebooks or None)

    @property
    def store(self) -> DeltaStore:
        return DeltaStore(self.settings.home)
