"""The one place that reads and writes Delta tables (local folders or S3-compatible stores).

Every write is a single Delta commit, so readers see a whole write or none of it. Partition
replacement uses predicate overwrite built from partition keys, never from data values.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

import polars as pl
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from usagebox_pipelines.config import is_object_store
from usagebox_pipelines.lease import writer_lease
from usagebox_pipelines.schemas import conform

_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN": "AWS_SESSION_TOKEN",
    "AWS_REGION": "AWS_REGION",
    "AWS_DEFAULT_REGION": "AWS_REGION",
    "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3": "AWS_ENDPOINT_URL",
    "AWS_ALLOW_HTTP": "AWS_ALLOW_HTTP",
}


def _storage_options(home: str) -> dict[str, str] | None:
    """Credentials and endpoint from the standard AWS_* variables for s3:// homes."""
    if not is_object_store(home):
        return None
    opts = {dst: os.environ[src] for src, dst in _AWS_ENV.items() if os.environ.get(src)}
    endpoint = opts.get("AWS_ENDPOINT_URL", "")
    if endpoint.startswith("http://"):
        opts["AWS_ALLOW_HTTP"] = "true"
    opts.setdefault("AWS_REGION", "us-east-1")
    # Commits use S3 conditional puts (delta-rs 1.x default): a concurrent commit fails and is
    # retried instead of silently replacing another writer's (no unsafe-rename default).
    return opts


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_literal(value: object) -> str:
    """A SQL literal for a Delta predicate built from partition keys we generate."""
    from datetime import datetime

    if isinstance(value, datetime):
        return f"'{value.strftime('%Y-%m-%dT%H:%M:%S.%f')}Z'"
    return _quote(str(value))


class DeltaStore:
    """Tables under `<home>/tables/<name>`."""

    def __init__(self, home: str) -> None:
        self.home = home.rstrip("/")
        self.storage_options = _storage_options(self.home)

    def writer(self, purpose: str) -> contextlib.AbstractContextManager[None]:
        """The home's writer lease (see `lease`): hold it around any unit of work that writes."""
        return writer_lease(self.home, purpose, self.storage_options)

    def uri(self, name: str) -> str:
        return f"{self.home}/tables/{name}"

    def table(self, name: str, version: int | None = None) -> DeltaTable | None:
        try:
            return DeltaTable(self.uri(name), version=version, storage_options=self.storage_options)
        except TableNotFoundError:
            return None

    def exists(self, name: str) -> bool:
        return self.table(name) is not None

    def version(self, name: str) -> int | None:
        dt = self.table(name)
        return None if dt is None else dt.version()

    def scan(
        self, name: str, schema: pl.Schema | None = None, version: int | None = None
    ) -> pl.LazyFrame:
        """Lazy scan of a table; an empty frame of `schema` if the table does not exist yet."""
        if not self.exists(name):
            if schema is None:
                raise FileNotFoundError(f"table {name!r} does not exist under {self.home}")
            return pl.LazyFrame(schema=schema)
        return pl.scan_delta(self.uri(name), version=version, storage_options=self.storage_options)

    def read(self, name: str, schema: pl.Schema | None = None, **kw: object) -> pl.DataFrame:
        return self.scan(name, schema, **kw).collect()

    def _write(
        self,
        name: str,
        df: pl.DataFrame,
        schema: pl.Schema | None,
        mode: str,
        predicate: str | None = None,
        metadata: Mapping[str, str] | None = None,
        partition_by: list[str] | None = None,
    ) -> int:
        if schema is not None:
            df = conform(df, schema)
        props = CommitProperties(custom_metadata=dict(metadata or {}))
        if predicate is not None and not self.exists(name):
            # delta-rs#3959: predicate overwrite on a missing table panics; create it first.
            predicate = None
            mode = "append" if mode == "overwrite" else mode
        write_deltalake(
            self.uri(name),
            df.to_arrow(),
            mode=mode,
            predicate=predicate,
            partition_by=partition_by if not self.exists(name) else None,
            storage_options=self.storage_options,
            commit_properties=props,
        )
        return self.version(name) or 0

    def append(self, name: str, df: pl.DataFrame, schema: pl.Schema | None = None, **kw) -> int:
        """Append rows in one commit (creates the table on first write)."""
        return self._write(name, df, schema, "append", **kw)

    def replace_where(
        self, name: str, df: pl.DataFrame, predicate: str, schema: pl.Schema | None = None, **kw
    ) -> int:
        """Atomically replace exactly the rows matching `predicate` with `df`."""
        return self._write(name, df, schema, "overwrite", predicate=predicate, **kw)

    def overwrite(self, name: str, df: pl.DataFrame, schema: pl.Schema | None = None, **kw) -> int:
        """Replace the whole table in one commit (small derived tables only)."""
        return self._write(name, df, schema, "overwrite", **kw)

    def delete_where(self, name: str, predicate: str) -> None:
        dt = self.table(name)
        if dt is not None:
            dt.delete(predicate)

    def drop(self, name: str) -> None:
        """Remove a table entirely (used by rebuild tests and `reset`); local homes only."""
        import shutil

        if is_object_store(self.home):
            raise NotImplementedError("drop is only supported on local homes")
        shutil.rmtree(self.uri(name), ignore_errors=True)
