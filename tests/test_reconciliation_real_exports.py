"""Real public vendor exports (tests/fixtures/vendors/real/SOURCES.md): nothing lost, nothing
doubled, whatever the bytes, the scope or the order of arrival."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from usagebox_pipelines.config import DEFAULT_PRICEBOOKS
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.reconciliation.loaders import LoadResult, load_vendor_exports, merge_lines
from usagebox_pipelines.reconciliation.mapping import load_vendor_mapping
from usagebox_pipelines.reconciliation.restatement import (
    COSTS,
    IGNORED,
    LINES,
    REVIEW,
    money_by_table,
    tag_lines,
)
from usagebox_pipelines.schemas import empty

REAL = Path(__file__).parent / "fixtures" / "vendors" / "real"
FOCUS_SLICE = REAL / "focus" / "focus_1.0_sample_slice.csv"
JSON_FILES = sorted((REAL / "openai").glob("*.json")) + sorted((REAL / "anthropic").glob("*.json"))
T0 = datetime(2026, 11, 2, 7, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 3, 7, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def mapping():
    return load_vendor_mapping(DEFAULT_PRICEBOOKS)


def _vendor(path: Path) -> str:
    return path.parent.name


def _merge(state: dict[str, pl.DataFrame] | None, load: LoadResult):
    """A load merged over stored tables (None: an empty home), as the stage does it."""
    if state:
        existing = pl.concat([tag_lines(frame, table) for table, frame in state.items()])
    else:
        existing = empty(LINES).with_columns(_table=pl.lit(""))
    return merge_lines(existing, load.lines(), at=T1)


def _landed(load: LoadResult) -> tuple[Decimal, Decimal]:
    """(money, quantity) over vendor_costs + vendor_review + vendor_ignored."""
    lines = load.lines()
    return (
        Decimal(lines["amount"].sum() or 0),
        Decimal(lines["quantity"].sum() or 0),
    )


def _json_money_in(path: Path) -> Decimal:
    """What the export says it costs, read independently of the loader."""
    doc = json.loads(path.read_text(), parse_float=Decimal)
    total = Decimal(0)
    for bucket in doc["data"]:
        for result in bucket["results"]:
            if isinstance(result.get("amount"), dict):  # OpenAI: dollars
                total += Decimal(result["amount"]["value"])
            elif "amount" in result:  # Anthropic: cents as a decimal string
                total += Decimal(result["amount"]) / 100
    return total


def _json_tokens_in(path: Path) -> Decimal:
    """Tokens a usage export reports: every token of input and output, once."""
    doc = json.loads(path.read_text(), parse_float=Decimal)
    total = Decimal(0)
    for bucket in doc["data"]:
        for r in bucket["results"]:
            if "uncached_input_tokens" in r:  # Anthropic: disjoint fields
                cache = r.get("cache_creation") or {}
                total += r["uncached_input_tokens"] + r["cache_read_input_tokens"]
                total += sum(cache.values()) + r["output_tokens"]
                total += (r.get("server_tool_use") or {}).get("web_search_requests", 0)
            elif "input_uncached_tokens" in r:  # OpenAI 2026: audio/image are subsets
                total += r["input_tokens"] + r["output_tokens"]
            elif "input_tokens" in r:  # OpenAI 2024: audio fields beside text
                total += r["input_tokens"] + r["output_tokens"]
                total += r.get("input_audio_tokens", 0) + r.get("output_audio_tokens", 0)
    return total


@pytest.mark.parametrize("path", JSON_FILES, ids=lambda p: p.name)
def test_money_and_tokens_in_equal_what_landed(path, mapping):
    load = load_vendor_exports(_vendor(path), [path], mapping, loaded_at=T0)
    money, quantity = _landed(load)
    assert money == _json_money_in(path)
    if "usage" in path.name:
        assert quantity == _json_tokens_in(path)


def test_focus_sample_money_in_equals_money_landed_and_zero_rows_are_counted(mapping):
    load = load_vendor_exports("focus", [FOCUS_SLICE], mapping, loaded_at=T0)
    rows = list(csv.DictReader(io.StringIO(FOCUS_SLICE.read_text())))
    money_in = sum(Decimal(r["BilledCost"]) for r in rows)
    totals = money_by_table(load.lines())["USD"]
    assert Decimal(totals["billed"]) == money_in == _landed(load)[0]
    assert Decimal(totals["billed"]) == sum(
        Decimal(totals[k]) for k in ("mapped", "review", "ignored")
    )
    assert load.costs.height + load.review.height + load.ignored.height == len(rows) == 123
    assert load.ignored.height == 17  # zero cost and zero quantity, counted
    assert load.ignored["reason"].str.starts_with("ignored: zero cost and quantity").all()
    # Credit and adjustments are mapped by charge class; the rest (no AI usage) is reviewed.
    assert sorted(load.costs["charge_class"]) == ["adjustment", "adjustment", "credit"]
    assert set(load.costs["provider"]) == {"AWS", "Oracle"}


@pytest.mark.parametrize("path", [*JSON_FILES, FOCUS_SLICE], ids=lambda p: p.name)
def test_loading_twice_changes_nothing(path, mapping):
    first, _ = _merge(None, load_vendor_exports(_vendor(path), [path], mapping, loaded_at=T0))
    again, changes = _merge(first, load_vendor_exports(_vendor(path), [path], mapping))
    assert changes.is_empty()
    for table in (COSTS, REVIEW, IGNORED):
        assert again[table].equals(first[table]), table


@pytest.mark.parametrize("path", [*JSON_FILES, FOCUS_SLICE], ids=lambda p: p.name)
def test_a_re_serialized_or_gzipped_re_pull_changes_nothing(tmp_path, path, mapping):
    vendor = _vendor(path)
    first, _ = _merge(None, load_vendor_exports(vendor, [path], mapping, loaded_at=T0))
    if path.suffix == ".json":
        doc = json.loads(path.read_text(), parse_float=Decimal)
        text = json.dumps(doc, separators=(",", ":"), default=lambda d: float(d))  # other bytes
        copy = tmp_path / f"repull_{path.name}.gz"
        copy.write_bytes(gzip.compress(text.encode()))
    else:
        copy = tmp_path / f"repull_{path.name}.gz"
        copy.write_bytes(gzip.compress(path.read_bytes().replace(b"\n", b"\r\n")))
    again, changes = _merge(first, load_vendor_exports(vendor, [copy], mapping))
    assert changes.is_empty()
    for table in (COSTS, REVIEW, IGNORED):
        assert again[table].height == first[table].height, table
        assert again[table]["line_id"].sort().equals(first[table]["line_id"].sort()), table


def test_two_sub_accounts_on_the_same_day_both_stay(tmp_path, mapping):
    text = FOCUS_SLICE.read_text().splitlines()
    reader = list(csv.reader(text))
    sub = reader[0].index("SubAccountId")
    day = reader[0].index("ChargePeriodStart")
    on_day = [i for i, r in enumerate(reader[1:], 1) if r[day].startswith("2024-09-18")]
    by_sub: dict[str, list[int]] = {}
    for i in on_day:
        by_sub.setdefault(reader[i][sub], []).append(i)
    (a, rows_a), (b, rows_b) = sorted(by_sub.items(), key=lambda kv: -len(kv[1]))[:2]
    for name, rows in (("a_20261101T000000Z.csv", rows_a), ("b_20261102T000000Z.csv", rows_b)):
        (tmp_path / name).write_text("\n".join([text[0], *(text[i] for i in rows)]) + "\n")
    first, _ = _merge(
        None, load_vendor_exports("focus", [tmp_path / "a_20261101T000000Z.csv"], mapping)
    )
    both, changes = _merge(
        first, load_vendor_exports("focus", [tmp_path / "b_20261102T000000Z.csv"], mapping)
    )
    assert changes.is_empty()  # another scope adds; it restates nothing
    stored = both[REVIEW].filter(pl.col("date") == date(2024, 9, 18))
    scopes = stored["vendor_scope"].str.json_path_match("$.SubAccountId")
    assert scopes.value_counts().sort("vendor_scope").rows() == sorted(
        [(a, len(rows_a)), (b, len(rows_b))]
    )


def _openai_costs(project: str, value: str, stamp: str, folder: Path) -> Path:
    page = {
        "object": "page",
        "data": [
            {
                "object": "bucket",
                "start_time": 1730419200,
                "end_time": 1730505600,
                "results": [
                    {
                        "object": "organization.costs.result",
                        "amount": {"value": "VALUE", "currency": "usd"},
                        "line_item": "gpt-4o-2024-08-06, input",
                        "project_id": project,
                    }
                ],
            }
        ],
        "has_more": False,
        "next_page": None,
    }
    path = folder / f"costs_{project}_{stamp}.json"
    path.write_text(json.dumps(page).replace('"VALUE"', value))
    return path


def test_openai_projects_add_and_a_newer_export_of_one_project_restates_only_it(tmp_path, mapping):
    a = _openai_costs("proj_a", "1.25", "20261101T000000Z", tmp_path)
    b = _openai_costs("proj_b", "2.50", "20261102T000000Z", tmp_path)
    a2 = _openai_costs("proj_a", "1.30", "20261103T000000Z", tmp_path)
    state, _ = _merge(None, load_vendor_exports("openai", [a], mapping))
    state, changes = _merge(state, load_vendor_exports("openai", [b], mapping))
    assert changes.is_empty() and state[COSTS]["amount"].sum() == Decimal("3.75")
    state, changes = _merge(state, load_vendor_exports("openai", [a2], mapping))
    assert state[COSTS]["amount"].sum() == Decimal("3.80")
    assert changes["amount"].to_list() == [Decimal("1.25")]
    assert changes["vendor_scope"].to_list() == ['{"project_id":"proj_a"}']


def test_review_lines_are_restated_not_doubled(tmp_path, mapping):
    """The issue's figure: re-pulling the FOCUS sample doubled review (980 -> 1,960 lines)."""
    copy = tmp_path / "focus_20261105T000000Z.csv"
    shutil.copy(FOCUS_SLICE, copy)
    state, _ = _merge(None, load_vendor_exports("focus", [FOCUS_SLICE], mapping, loaded_at=T0))
    again, _ = _merge(state, load_vendor_exports("focus", [copy], mapping))
    assert again[REVIEW].height == state[REVIEW].height == 103
    assert again[REVIEW]["amount"].sum() == state[REVIEW]["amount"].sum()


def test_openai_2026_usage_splits_input_into_disjoint_lines(mapping):
    path = REAL / "openai" / "usage_completions_object_2026-08.json"
    load = load_vendor_exports("openai", [path], mapping)
    mapped = dict(zip(load.costs["meter_id"], load.costs["quantity"], strict=True))
    # input 5000 = uncached 3000 (text 2500 + audio 300 + image 200) + cached 1800 + writes 200
    assert mapped == {
        "input_tokens": 2500,
        "cached_input_tokens": 1500,
        "cache_write_tokens": 200,
        "output_tokens": 800,
    }
    review = dict(zip(load.review["vendor_line_item"], load.review["quantity"], strict=True))
    assert review == {
        "input_audio_tokens": 300,
        "input_image_tokens": 200,
        "input_cached_audio_tokens": 100,
        "input_cached_image_tokens": 200,
        "output_audio_tokens": 100,
        "output_image_tokens": 100,
    }
    assert set(load.costs["model_id"]) == {"gpt-4o-mini"}  # dated snapshot, no alias needed
    assert set(load.costs["vendor_scope"]) == {
        '{"api_key_id":"key_abc","project_id":"proj_abc","user_id":"user-abc"}'
    }


def test_openai_2024_usage_uncached_is_input_minus_cached(mapping):
    path = REAL / "openai" / "usage_completions_object_2024-12.json"
    load = load_vendor_exports("openai", [path], mapping)
    assert dict(zip(load.costs["meter_id"], load.costs["quantity"], strict=True)) == {
        "input_tokens": 1000,
        "cached_input_tokens": 4000,
        "output_tokens": 1000,
    }
    assert load.ignored.is_empty() and load.review.is_empty()  # no audio fields in that spec


def test_openai_costs_quantity_unit_scales_the_quantity(tmp_path, mapping):
    doc = json.loads((REAL / "openai" / "costs_object_2026-08.json").read_text())
    result = doc["data"][0]["results"][0]
    result.update(line_item="gpt-4o-2024-08-06, input", quantity=10, quantity_unit="1000_tokens")
    (tmp_path / "c.json").write_text(json.dumps(doc))
    row = load_vendor_exports("openai", [tmp_path / "c.json"], mapping).costs.row(0, named=True)
    assert row["quantity"] == 10_000 and row["meter_id"] == "input_tokens"


def test_anthropic_documented_examples_map_the_dated_model(mapping):
    usage = load_vendor_exports("anthropic", [REAL / "anthropic"], mapping)
    assert set(usage.costs["model_id"]) == {"claude-sonnet-4"}  # claude-sonnet-4-20250514
    cost = usage.costs.filter(pl.col("source_kind") == "costs").row(0, named=True)
    assert cost["amount"] == Decimal("1.2378912") and cost["context_window"] == "0-200k"
    assert cost["service_tier"] == "standard"
    assert len(usage.warnings) == 2  # both documented examples end with has_more: true
    assert all("has_more=true" in w and "incomplete" in w for w in usage.warnings)


def test_last_page_has_more_false_means_complete(tmp_path, mapping):
    doc = json.loads((REAL / "anthropic" / "cost_report.json").read_text())
    doc["has_more"], doc["next_page"] = False, None
    (tmp_path / "cost.json").write_text(json.dumps(doc))
    assert load_vendor_exports("anthropic", [tmp_path / "cost.json"], mapping).complete


def test_spec_appendix_file_without_billing_currency_is_refused_in_one_line(mapping):
    path = REAL / "focus" / "spec_appendix_commitment_discount_flexibility_2_resources.csv"
    with pytest.raises(UsageboxError, match="missing FOCUS column.*BillingCurrency") as err:
        load_vendor_exports("focus", [path], mapping)
    assert "\n" not in str(err.value)
