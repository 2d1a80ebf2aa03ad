"""Vendor reconciliation and cost attribution (pure Polars; the Dagster assets and CLI wire it).

* `mapping`   — `pricebooks/vendors.yaml`: vendor names -> model_id × meter_id, routing, rates.
* `loaders`   — OpenAI / Anthropic Admin API pages and FOCUS CSV/Parquet -> `vendor_costs`,
                review list, restatement merge with a change log.
* `reconcile` — metered vs vendor per vendor × UTC day × model × meter, with a status.
* `attribution` — vendor cost allocated to accounts (exact largest remainder), margins.
* `reports`   — formula-safe CSVs and PDFs.

Demo vendor exports (generated from the demo's usage) live in `usagebox_demo.vendor_exports`.
"""
