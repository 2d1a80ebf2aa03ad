"""The stage layer: each module reads catalog tables, calls pure domain code, commits per table.

Dagster assets (`defs/`) and CLI commands call stages; stages call the domain packages
(`events`, `rollups`, `pricing`, `invoicing`, `reconciliation`, `guardrails`) and `storage`;
the domain packages import neither stages, storage, `defs` nor the CLI. Every stage that writes
carries `@writes_tables` (storage), so it runs under the home's writer lease (ADR 0006).
"""
