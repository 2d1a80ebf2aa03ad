"""The worked examples of docs/pricing.md are rated and must give the numbers the doc states."""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from usagebox_pipelines import schemas
from usagebox_pipelines.pricing import load_accounts, load_pricebooks, rate_usage

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "pricing.md"
_BLOCK = re.compile(r"```yaml\n(# example: ([\w-]+)\n.*?)```", re.S)
EXAMPLES = {name: yaml.safe_load(body) for body, name in _BLOCK.findall(DOC.read_text())}
#: Every price model the engine prices has an example (`bills` price models, contract terms).
MODELS = {
    "per_unit", "markup", "percentage", "included", "graduated", "volume", "package", "flat",
    "price_minimum", "price_cap", "maximum_spend", "tier_flat",
    "coupon:launch", "credit_grant:promo",
    "dynamic", "transaction_fee", "transaction_min", "transaction_max",
}  # fmt: skip


def _rate(example: dict[str, Any], tmp_path: Path) -> pl.DataFrame:
    """Rate the example's usage under its rates, next to the shipped vendors.yaml."""
    book = {
        "pricebook": "doc",
        "version": "1",
        "effective_from": "2026-10-01T00:00:00Z",
        "currency": "USD",
        "rates": example["rates"],
    }
    (tmp_path / "doc.yaml").write_text(yaml.safe_dump(book))
    shutil.copy(ROOT / "pricebooks" / "vendors.yaml", tmp_path / "vendors.yaml")
    terms = example.get("account", {})
    (tmp_path / "accounts.yaml").write_text(
        yaml.safe_dump({"defaults": {"pricebook": "doc"}, "accounts": {"x": terms}})
    )
    records = [
        {
            "account_id": "x",
            "meter_id": meter,
            "model_id": model,
            "billable": True,
            "dimensions": json.dumps(
                dims[0] if dims else {}, sort_keys=True, separators=(",", ":")
            ),
            "hour": datetime.fromisoformat(str(at).replace("Z", "+00:00")),
            "sum": D(quantity),
            "count": 1,
        }
        for at, meter, model, quantity, *dims in example["usage"]
    ]
    frame = pl.DataFrame(records, infer_schema_length=None)
    usage = schemas.conform(frame, schemas.USAGE_HOURLY)
    # each usage row is also one event, for the rates priced per event (ADR 0018)
    events = frame.with_row_index("n").with_columns(
        event_id=pl.format("e{}", pl.col("n")),
        quantity=pl.col("sum"),
        timestamp=pl.col("hour"),
        status=pl.lit("ok"),
        event_date=pl.col("hour").dt.date(),
    )
    books, accounts = load_pricebooks(tmp_path), load_accounts(tmp_path)
    return rate_usage(
        usage, "2026-10", books, accounts, events=schemas.conform(events, schemas.EVENTS)
    ).rated


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_doc_example_prices_as_stated(name: str, tmp_path: Path) -> None:
    example = EXAMPLES[name]
    rated = _rate(example, tmp_path)
    usage = rated.filter(pl.col("line_kind") == "usage")
    got = sorted(
        (r["price_model"], r["tier"], r["quantity"], r["amount"])
        for r in usage.iter_rows(named=True)
    )
    stated = sorted((m, t, D(q), D(a)) for m, t, q, a, *_ in example["bills"])
    assert got == stated
    contract = rated.filter(pl.col("line_kind") != "usage").select("line_kind", "rate_id", "amount")
    assert sorted(contract.rows()) == sorted(
        (k, r, D(a)) for k, r, a in example.get("contract", [])
    )


def test_every_price_model_has_a_worked_example() -> None:
    shown = {bill[0] for e in EXAMPLES.values() for bill in e["bills"]}
    shown |= {term[1] for e in EXAMPLES.values() for term in e.get("contract", [])}
    assert shown >= MODELS
