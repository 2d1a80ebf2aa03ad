"""Vendor export loaders on small hand-written fixtures in each real format."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from usagebox_pipelines.config import DEFAULT_PRICEBOOKS
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.reconciliation.loaders import LoadResult, load_vendor_exports, merge_lines
from usagebox_pipelines.reconciliation.mapping import load_vendor_mapping
from usagebox_pipelines.reconciliation.restatement import COSTS, LINES, REVIEW, tag_lines
from usagebox_pipelines.reconciliation.schemas import VENDOR_COSTS, VENDOR_REVIEW
from usagebox_pipelines.schemas import empty

FIXTURES = Path(__file__).parent / "fixtures" / "vendors"
T0 = datetime(2026, 11, 2, 7, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 6, 7, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def mapping():
    return load_vendor_mapping(DEFAULT_PRICEBOOKS)


def _one(df: pl.DataFrame, **eq) -> dict:
    rows = df.filter(pl.all_horizontal([pl.col(k) == v for k, v in eq.items()]))
    assert rows.height == 1, rows
    return rows.row(0, named=True)


def _page(results: list[dict], start: int = 1790812800, **extra) -> dict:
    bucket = {"object": "bucket", "start_time": start, "end_time": start + 86400}
    return {"object": "page", "data": [bucket | {"results": results}], "has_more": False} | extra


def _cost(value, item: str = "gpt-4o-2024-08-06, output") -> dict:
    return {
        "object": "organization.costs.result",
        "amount": {"value": value, "currency": "usd"},
        "line_item": item,
        "project_id": None,
    }


def _stored(state: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """The vendor tables as the stage reads them back (tagged lines)."""
    return pl.concat([tag_lines(frame, table) for table, frame in state.items()])


def _merge(state: dict[str, pl.DataFrame] | None, load: LoadResult, at: datetime | None = None):
    """Merge a load over stored tables (None: empty home) -> (tables, change log)."""
    existing = _stored(state) if state else empty(LINES).with_columns(_table=pl.lit(""))
    return merge_lines(existing, load.lines(), at=at)


# --------------------------------------------------------------------------- OpenAI


def test_openai_costs_pages_in_a_folder_load_exact_dollars(mapping):
    result = load_vendor_exports("openai", [FIXTURES / "openai" / "costs"], mapping, loaded_at=T0)
    costs = result.costs
    assert len(result.files) == 2  # both pages of the has_more / next_page chain
    assert set(costs["source_kind"]) == {"costs"}
    row = _one(costs, date=date(2026, 10, 1), model_id="gpt-4o", meter_id="input_tokens")
    assert row["amount"] == Decimal("0.13080438")  # dollars, from the literal digits
    assert row["currency"] == "USD" and row["quantity"] is None
    assert row["vendor_line_item"] == "gpt-4o-2024-08-06, input"
    assert _one(costs, date=date(2026, 10, 2), meter_id="output_tokens")["amount"] == 2
    # A string amount with 18 decimals is not rounded: it goes to review, value in the reason.
    tiny = _one(result.review, vendor_line_item="gpt-4o-mini-2024-07-18, input")
    assert tiny["amount"] is None and "0.000000123456789012" in tiny["reason"]
    assert "more than 12 decimal places" in tiny["reason"]
    assert costs.schema == VENDOR_COSTS
    assert result.costs["exported_at"].unique().to_list() == [datetime(2026, 11, 2, 6, tzinfo=UTC)]


def test_openai_unknown_line_item_goes_to_review_not_dropped(mapping):
    result = load_vendor_exports("openai", [FIXTURES / "openai" / "costs"], mapping, loaded_at=T0)
    review = _one(result.review, vendor_line_item="gpt-realtime-2.1, audio input")
    assert review["amount"] == Decimal("0.37")
    assert "gpt-realtime-2.1" in review["reason"] and "model_aliases" in review["reason"]
    assert json.loads(review["payload"])["line_item"] == "gpt-realtime-2.1, audio input"
    assert result.review.schema == VENDOR_REVIEW


def test_openai_amount_beyond_float_precision_stays_exact(tmp_path, mapping):
    raw = json.dumps(_page([_cost(0)])).replace('"value": 0', '"value": 1234567.123456789012')
    (tmp_path / "costs.json").write_text(raw)
    costs = load_vendor_exports("openai", [tmp_path / "costs.json"], mapping).costs
    assert costs["amount"][0] == Decimal("1234567.123456789012")


def test_openai_usage_cached_tokens_are_a_subset_of_input(mapping):
    path = FIXTURES / "openai" / "usage_completions_20261102T060000Z.json"  # a list of pages
    usage = load_vendor_exports("openai", [path], mapping, loaded_at=T0).costs
    day1 = usage.filter((pl.col("date") == date(2026, 10, 1)) & (pl.col("model_id") == "gpt-4o"))
    got = dict(zip(day1["meter_id"], day1["quantity"], strict=True))
    assert got == {
        "input_tokens": Decimal(62321 - 10000),  # uncached = input - cached
        "cached_input_tokens": Decimal(10000),
        "output_tokens": Decimal(110000),
    }
    assert set(usage["source_kind"]) == {"usage"} and usage["amount"].null_count() == usage.height
    # input_cached_tokens null counts as 0 cached
    assert _one(usage, date=date(2026, 10, 2), meter_id="input_tokens")["quantity"] == 1000


def test_openai_usage_audio_and_unknown_models_are_reviewed(mapping):
    path = FIXTURES / "openai" / "usage_completions_20261102T060000Z.json"
    review = load_vendor_exports("openai", [path], mapping).review
    assert _one(review, vendor_line_item="input_audio_tokens")["quantity"] == 300
    assert set(review.filter(pl.col("vendor_model") == "o9-preview")["vendor_line_item"]) == {
        "uncached_input_tokens",
        "output_tokens",
    }  # the zero cached/audio fields of an unknown model carry nothing and are not listed


def test_openai_cached_more_than_input_is_reviewed(tmp_path, mapping):
    result = {
        "object": "organization.usage.completions.result",
        "input_tokens": 10,
        "input_cached_tokens": 50,
        "output_tokens": 1,
        "model": "gpt-4o",
    }
    (tmp_path / "u.json").write_text(json.dumps(_page([result])))
    loaded = load_vendor_exports("openai", [tmp_path / "u.json"], mapping)
    assert loaded.costs.is_empty()
    assert loaded.review["reason"].str.contains("subset").all()


def test_openai_default_costs_export_lands_as_a_day_total(tmp_path, mapping):
    (tmp_path / "c.json").write_text(json.dumps(_page([_cost(0.06, item=None)])))
    loaded = load_vendor_exports("openai", [tmp_path / "c.json"], mapping)
    assert loaded.review.is_empty()
    day = loaded.costs.row(0, named=True)  # no group_by: the day's total, no model or meter
    assert day["amount"] == Decimal("0.06") and day["model_id"] is None and day["meter_id"] is None


def test_openai_line_item_naming_only_a_kind_lands_as_a_day_line_of_that_meter(tmp_path, mapping):
    page = _page([_cost(0.5, item="input"), _cost(0.25, item="web search")])
    (tmp_path / "c.json").write_text(json.dumps(page))
    loaded = load_vendor_exports("openai", [tmp_path / "c.json"], mapping)
    day = loaded.costs.row(0, named=True)
    assert loaded.costs.height == 1 and day["model_id"] is None
    assert day["meter_id"] == "input_tokens" and day["amount"] == Decimal("0.5")
    review = loaded.review.row(0, named=True)
    assert review["amount"] == Decimal("0.25") and "neither" in review["reason"]


# --------------------------------------------------------------------------- Anthropic


def test_anthropic_cost_report_amounts_are_fractional_cents(mapping):
    path = FIXTURES / "anthropic" / "cost_report_20261102T060000Z.json"
    result = load_vendor_exports("anthropic", [path], mapping)
    costs = result.costs
    assert _one(costs, meter_id="input_tokens")["amount"] == Decimal("1.2378912")  # "123.78912"¢
    assert _one(costs, meter_id="output_tokens")["amount"] == Decimal("7.5")
    assert _one(costs, meter_id="cache_write_5m_tokens")["amount"] == Decimal("0.0375")
    assert set(costs["model_id"]) == {"claude-sonnet-4-5"}
    web = _one(result.review, vendor_line_item="Web Search")
    assert web["amount"] == Decimal("10") and "web_search" in web["reason"]


def test_anthropic_usage_report_token_fields(mapping):
    path = FIXTURES / "anthropic" / "usage_report_20261102T060000Z.json"
    result = load_vendor_exports("anthropic", [path], mapping)
    got = dict(zip(result.costs["meter_id"], result.costs["quantity"], strict=True))
    assert got == {
        "input_tokens": 412630,  # uncached_input_tokens already excludes cache reads/writes
        "cached_input_tokens": 15000,
        "output_tokens": 500000,
        "cache_write_5m_tokens": 10000,
        "cache_write_1h_tokens": 0,
    }
    assert _one(result.review, vendor_line_item="server_tool_use.web_search_requests")[
        "quantity"
    ] == Decimal(10)


def test_anthropic_watermark_sets_exported_at(tmp_path, mapping):
    doc = json.loads((FIXTURES / "anthropic" / "cost_report_20261102T060000Z.json").read_text())
    doc["data_refreshed_at"] = "2026-11-03T04:00:00Z"
    (tmp_path / "report.json").write_text(json.dumps(doc))
    costs = load_vendor_exports("anthropic", [tmp_path / "report.json"], mapping).costs
    assert costs["exported_at"][0] == datetime(2026, 11, 3, 4, tzinfo=UTC)


# --------------------------------------------------------------------------- FOCUS


def test_focus_csv_usage_credit_tax_and_correction_rows(mapping):
    result = load_vendor_exports("focus", [FIXTURES / "focus"], mapping)
    costs = result.costs
    assert set(costs["provider"]) == {"AWS"}
    assert sorted(costs["charge_class"].unique()) == ["correction", "credit", "tax", "usage"]
    credit = _one(costs, charge_class="credit")
    assert credit["amount"] == Decimal("-25") and credit["date"] == date(2026, 10, 15)
    assert _one(costs, charge_class="tax")["amount"] == Decimal("1.234567")
    correction = _one(costs, charge_class="correction")
    assert correction["date"] == date(2026, 9, 30) and correction["billing_period"] == "2026-10"
    assert correction["quantity"] == -10000 and correction["meter_id"] == "output_tokens"
    out = _one(costs, charge_class="usage", meter_id="output_tokens")
    assert out["quantity"] == 50000  # no ConsumedQuantity: PricingQuantity 50 × "1K tokens"
    cached = _one(costs, meter_id="cached_input_tokens")
    assert cached["model_id"] == "claude-3-5-haiku" and cached["amount"] == Decimal("0.0016")
    assert _one(costs, service_tier="batch")["quantity"] == 10000
    llama = _one(result.review, vendor_line_item="USE1-Llama4-Maverick-17B-input-tokens")
    assert llama["amount"] == Decimal("0.31") and "no model token" in llama["reason"]


def test_focus_parquet_with_double_billed_cost(tmp_path, mapping):
    frame = pl.DataFrame(
        {
            "BillingCurrency": ["USD", "USD"],
            "BillingPeriodStart": [datetime(2026, 10, 1, tzinfo=UTC)] * 2,
            "ChargePeriodStart": [datetime(2026, 10, 3, tzinfo=UTC)] * 2,
            "ChargeCategory": ["Usage", "Usage"],
            "ChargeClass": [None, None],
            "BilledCost": [0.1, 7.5e-07],  # AWS stores BilledCost as double
            "ConsumedQuantity": [1000.0, 1.0],
            "ConsumedUnit": ["Tokens", "Tokens"],
            "ProviderName": ["Microsoft", "Microsoft"],
            "x_SkuMeterName": ["gpt 4o 1120 Inp glbl Tokens", "gpt 4o 1120 cached Inp glbl Tokens"],
        }
    )
    frame.write_parquet(tmp_path / "azure_focus.parquet")
    costs = load_vendor_exports("focus", [tmp_path], mapping).costs
    assert _one(costs, meter_id="input_tokens")["amount"] == Decimal("0.1")  # shortest repr
    assert _one(costs, meter_id="cached_input_tokens")["amount"] == Decimal("0.00000075")
    assert set(costs["model_id"]) == {"gpt-4o"} and set(costs["provider"]) == {"Microsoft"}


# --------------------------------------------------------------------------- errors


def test_bad_inputs_name_file_row_and_field(tmp_path, mapping):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UsageboxError, match="broken.json.*not valid JSON"):
        load_vendor_exports("openai", [tmp_path / "broken.json"], mapping)
    (tmp_path / "bad.json").write_text(json.dumps(_page([_cost("12,50")])))
    with pytest.raises(UsageboxError, match=r"bad.json: result 1: amount.value: not a number"):
        load_vendor_exports("openai", [tmp_path / "bad.json"], mapping)
    (tmp_path / "f.csv").write_text("BilledCost,BillingCurrency\n1,USD\n")
    with pytest.raises(UsageboxError, match="f.csv: missing FOCUS column.*ChargePeriodStart"):
        load_vendor_exports("focus", [tmp_path / "f.csv"], mapping)
    with pytest.raises(UsageboxError, match="unknown vendor"):
        load_vendor_exports("azure", [tmp_path], mapping)
    with pytest.raises(UsageboxError, match="no such file"):
        load_vendor_exports("openai", [tmp_path / "missing.json"], mapping)


# --------------------------------------------------------------------------- reload, restatement


def _write_costs(folder: Path, name: str, output_value: str) -> Path:
    """One day of OpenAI costs: output at `output_value` dollars (a JSON number), input $1."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(_page([_cost("OUT"), _cost("IN", "gpt-4o-2024-08-06, input")]))
    path = folder / name
    path.write_text(raw.replace('"OUT"', output_value).replace('"IN"', "1"))
    return path


def test_reloading_the_same_export_is_idempotent(mapping):
    folder = FIXTURES / "openai" / "costs"
    first = load_vendor_exports("openai", [folder], mapping, loaded_at=T0)
    state, changes = _merge(None, first)
    again = load_vendor_exports("openai", [folder], mapping, loaded_at=T1)
    state2, changes2 = _merge(state, again)
    assert changes.is_empty() and changes2.is_empty()
    for table in state:
        assert state2[table].equals(state[table])  # loaded_at of the first load kept
    assert state2[REVIEW].height == first.review.height


def test_newer_export_of_a_day_supersedes_and_is_logged(tmp_path, mapping):
    old = _write_costs(tmp_path / "a", "costs_20261102T060000Z.json", "5.00")
    new = _write_costs(tmp_path / "b", "costs_20261109T060000Z.json", "5.25")
    tables, _ = _merge(None, load_vendor_exports("openai", [old], mapping, loaded_at=T0))
    tables, changes = _merge(
        tables, load_vendor_exports("openai", [new], mapping, loaded_at=T1), at=T1
    )
    state = tables[COSTS]
    assert _one(state, meter_id="output_tokens")["amount"] == Decimal("5.25")
    assert state.height == 2 and set(state["source_file"]) == {str(new)}
    assert changes.height == 2  # the whole day's old rows, with what replaced them
    assert _one(changes, meter_id="output_tokens")["amount"] == Decimal("5")
    assert set(changes["superseded_by_file"]) == {str(new)}
    assert set(changes["superseded_at"]) == {T1}
    # The older export loaded again later changes nothing.
    again, changes = _merge(tables, load_vendor_exports("openai", [old], mapping))
    assert again[COSTS].equals(state) and changes.is_empty()


def test_newer_export_with_identical_content_changes_nothing(tmp_path, mapping):
    old = _write_costs(tmp_path / "a", "costs_20261102T060000Z.json", "5.00")
    same = _write_costs(tmp_path / "b", "costs_20261109T060000Z.json", "5.00")
    state, _ = _merge(None, load_vendor_exports("openai", [old], mapping))
    after, changes = _merge(state, load_vendor_exports("openai", [same], mapping))
    assert after[COSTS].equals(state[COSTS]) and changes.is_empty()


def test_restatement_within_one_load_keeps_the_newest(tmp_path, mapping):
    _write_costs(tmp_path, "costs_20261102T060000Z.json", "5.00")
    _write_costs(tmp_path, "costs_20261109T060000Z.json", "6.00")
    result = load_vendor_exports("openai", [tmp_path], mapping)
    assert _one(result.costs, meter_id="output_tokens")["amount"] == Decimal("6")
    assert result.superseded.height == 2
    assert result.superseded["superseded_by_file"].str.ends_with("20261109T060000Z.json").all()


def test_focus_gzipped_csv_loads_like_the_plain_one(tmp_path, mapping):
    import gzip

    source = FIXTURES / "focus" / "bedrock_focus_2026-10.csv"
    (tmp_path / "focus.csv.gz").write_bytes(gzip.compress(source.read_bytes()))
    plain = load_vendor_exports("focus", [source], mapping).costs
    packed = load_vendor_exports("focus", [tmp_path], mapping).costs
    cols = ["date", "model_id", "meter_id", "quantity", "amount", "charge_class"]
    assert packed.select(cols).equals(plain.select(cols))


# --------------------------------------------------------------------------- FOCUS details

_FOCUS_HEAD = (
    "BillingAccountId,SubAccountId,BillingCurrency,BillingPeriodStart,ChargePeriodStart,"
    "ChargeCategory,ChargeClass,BilledCost,ConsumedQuantity,ConsumedUnit,ProviderName,"
    "ServiceName,x_UsageType"
)


def _focus(tmp_path: Path, *rows: str, sep: str = ",", name: str = "f.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([_FOCUS_HEAD.replace(",", sep), *rows]) + "\n")
    return path


_HAIKU = "USE1-Claude3.5Haiku-input-tokens"


def test_focus_time_with_an_offset_is_converted_to_the_utc_day(tmp_path, mapping):
    path = _focus(
        tmp_path,
        f"1,2,USD,2024-09-01T00:00:00Z,2024-09-18T23:30:00-02:00,Usage,,0.08,100000,Tokens,AWS,"
        f"Amazon Bedrock,{_HAIKU}",
    )
    row = load_vendor_exports("focus", [path], mapping).costs.row(0, named=True)
    assert row["date"] == date(2024, 9, 19)  # 23:30 at -02:00 is 01:30 UTC the next day


def test_focus_blank_billed_cost_and_too_many_decimals_are_reviewed_not_rounded(tmp_path, mapping):
    path = _focus(
        tmp_path,
        f"1,2,USD,2024-09-01,2024-09-18,Usage,,,100000,Tokens,AWS,Amazon Bedrock,{_HAIKU}",
        "1,2,USD,2024-09-01,2024-09-19,Usage,,0.1234567890123,1,Tokens,AWS,Amazon Bedrock,"
        + _HAIKU,
    )
    loaded = load_vendor_exports("focus", [path], mapping)
    assert loaded.costs.is_empty()
    blank = _one(loaded.review, date=date(2024, 9, 18))
    assert blank["amount"] is None and "BilledCost is blank" in blank["reason"]
    precise = _one(loaded.review, date=date(2024, 9, 19))
    assert precise["amount"] is None and "0.1234567890123" in precise["reason"]
    assert "not rounded" in precise["reason"]


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_focus_delimiter_is_sniffed(tmp_path, mapping, sep):
    row = f"1;2;USD;2024-09-01;2024-09-18;Usage;;0.08;100000;Tokens;AWS;Amazon Bedrock;{_HAIKU}"
    path = _focus(tmp_path, row.replace(";", sep), sep=sep)
    assert load_vendor_exports("focus", [path], mapping).costs["amount"].to_list() == [
        Decimal("0.08")
    ]


def test_focus_header_without_the_columns_names_the_delimiter(tmp_path, mapping):
    (tmp_path / "f.csv").write_text("Billed Cost;Currency\n1;USD\n")
    with pytest.raises(UsageboxError, match="semicolon-delimited"):
        load_vendor_exports("focus", [tmp_path / "f.csv"], mapping)


def test_bedrock_through_aws_marketplace_maps_by_service_name(tmp_path, mapping):
    path = _focus(
        tmp_path,
        "1,2,USD,2024-09-01,2024-09-18,Usage,,0.08,100000,Tokens,AWS,"
        "Claude 3.5 Haiku (Amazon Bedrock Edition),USW2-MP:USW2_InputTokenCount-Units",
        "1,2,USD,2024-09-01,2024-09-18,Usage,,0.4,100000,Tokens,AWS,"
        "Claude 3.5 Haiku (Amazon Bedrock Edition),USW2-MP:USW2_OutputTokenCount-Units",
    )
    costs = load_vendor_exports("focus", [path], mapping).costs
    assert set(costs["model_id"]) == {"claude-3-5-haiku"}
    assert sorted(costs["meter_id"]) == ["input_tokens", "output_tokens"]


def test_focus_zero_cost_and_quantity_rows_are_ignored_and_counted(tmp_path, mapping):
    path = _focus(
        tmp_path,
        "1,2,USD,2024-09-01,2024-09-18,Usage,,0.00000000000,0,GB,AWS,Amazon S3,USW2-Requests",
        "1,2,USD,2024-09-01,2024-09-18,Usage,,NULL,NULL,NULL,AWS,Amazon S3,USW2-Requests",
    )
    loaded = load_vendor_exports("focus", [path], mapping)
    assert loaded.ignored.height == 1 and loaded.review.height == 1  # blank cost is reviewed
