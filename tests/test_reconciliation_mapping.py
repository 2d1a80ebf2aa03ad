"""vendors.yaml: the shipped mapping loads, and mistakes are reported with file and field."""

from __future__ import annotations

import shutil
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
import yaml

from usagebox_pipelines.config import DEFAULT_PRICEBOOKS
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.reconciliation.mapping import load_vendor_mapping


@pytest.fixture(scope="module")
def mapping():
    return load_vendor_mapping(DEFAULT_PRICEBOOKS)


def _edited(tmp_path: Path, edit) -> Path:
    """A copy of the shipped vendors.yaml with `edit(doc)` applied."""
    doc = yaml.safe_load((DEFAULT_PRICEBOOKS / "vendors.yaml").read_text())
    edit(doc)
    (tmp_path / "vendors.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return tmp_path


def test_shipped_mapping_loads_with_rates_for_every_routed_model(mapping):
    assert mapping.version
    assert set(mapping.vendors) == {"openai", "anthropic", "focus"}
    priced = mapping.rates.select("vendor", "model_id").unique()
    for vendor, model in [("openai", "gpt-4o"), ("anthropic", "claude-opus-4-1")]:
        assert priced.filter((pl.col("vendor") == vendor) & (pl.col("model_id") == model)).height
    rate = mapping.rates.filter(
        (pl.col("vendor") == "openai")
        & (pl.col("model_id") == "gpt-4o-mini")
        & (pl.col("meter_id") == "cached_input_tokens")
    )["unit_price"][0]
    assert rate == Decimal("0.075")


def test_cache_writes_are_vendor_meters_allocated_by_input_tokens(mapping):
    spec = mapping.meters["cache_write_5m_tokens"]
    assert not spec.metered and spec.allocate_by == "input_tokens"
    assert "cache_write_5m_tokens" not in mapping.metered_meters


def test_most_specific_routing_rule_wins(mapping):
    usage = pl.DataFrame(
        {"model_id": ["gpt-4o", "claude-opus-4-1", "claude-3-5-haiku", None, "llama-4"]}
    )
    routed = usage.select(mapping.route_expr(set(usage.columns)).alias("v"))["v"].to_list()
    assert routed == ["openai", "anthropic", "focus", None, None]


def test_account_rule_outranks_model_glob(tmp_path):
    def edit(doc):
        doc["routing"].append({"vendor": "focus", "model_id": "claude-*", "account_id": "acct-04?"})

    mapping = load_vendor_mapping(_edited(tmp_path, edit))
    usage = pl.DataFrame(
        {"model_id": ["claude-opus-4-1"] * 2, "account_id": ["acct-041", "acct-1"]}
    )
    routed = usage.select(mapping.route_expr(set(usage.columns)).alias("v"))["v"].to_list()
    assert routed == ["focus", "anthropic"]


def test_rate_as_of_date_uses_the_latest_effective_block(tmp_path):
    def edit(doc):
        doc["rates"].append(
            {
                "vendor": "openai",
                "effective_from": "2026-10-16",
                "per": 1000000,
                "prices": {"gpt-4o": {"output_tokens": "12.00"}},
            }
        )

    mapping = load_vendor_mapping(_edited(tmp_path, edit))
    from datetime import date

    rows = pl.DataFrame(
        {
            "vendor": ["openai"] * 3,
            "model_id": ["gpt-4o"] * 3,
            "meter_id": ["output_tokens", "output_tokens", "input_tokens"],
            "date": [date(2026, 10, 15), date(2026, 10, 16), date(2026, 10, 20)],
        }
    )
    prices = mapping.with_rates(rows)["unit_price"].to_list()
    assert prices == [Decimal("10"), Decimal("12"), Decimal("2.5")]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["rates"][0]["prices"]["gpt-4o"].update(input_tokens=2.5), "input_tokens"),
        (lambda d: d["rates"][0]["prices"]["gpt-4o"].update(gpu_hours="1"), "gpu_hours"),
        (lambda d: d["routing"].append({"vendor": "azure", "model_id": "x"}), "routing[3].vendor"),
        (lambda d: d["vendors"]["openai"]["model_aliases"].update({"gpt-9": ["g"]}), "gpt-9"),
        (lambda d: d["meters"]["cache_write_5m_tokens"].update(allocate_by="nope"), "allocate_by"),
        (lambda d: d.pop("version"), "version"),
        (lambda d: d["rates"][0].update(effective_from="someday"), "effective_from"),
    ],
)
def test_invalid_mapping_names_file_and_field(tmp_path, edit, field):
    folder = _edited(tmp_path, edit)
    with pytest.raises(UsageboxError) as err:
        load_vendor_mapping(folder)
    assert "vendors.yaml" in str(err.value) and field in str(err.value)


def test_missing_or_broken_file_is_a_user_error(tmp_path):
    with pytest.raises(UsageboxError, match="not found"):
        load_vendor_mapping(tmp_path)
    (tmp_path / "vendors.yaml").write_text("version: [unclosed\n")
    with pytest.raises(UsageboxError, match="not valid YAML"):
        load_vendor_mapping(tmp_path)
    (tmp_path / "vendors.yaml").write_text("version: a\nversion: b\n")
    with pytest.raises(UsageboxError, match="duplicate key 'version'"):
        load_vendor_mapping(tmp_path)
    shutil.rmtree(tmp_path)
