"""Pricebook loading: strict validation with file + field in every error, versions, freezing."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path

import pytest

from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.pricing.pricebook import (
    PricebookError,
    load_pricebook_file,
    load_pricebooks,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "pricebooks"
FIXTURES = Path(__file__).parent / "fixtures" / "pricebooks"
MODELS = [
    "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-5", "gpt-5-mini",
    "claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5", "claude-3-5-haiku",
]  # fmt: skip
HEAD = """\
pricebook: t
version: "1"
effective_from: 2026-10-01T00:00:00Z
currency: USD
"""


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# ---- the shipped standard pricebook ---------------------------------------------------------


def test_shipped_standard_has_two_versions_the_second_mid_demo_month() -> None:
    books = load_pricebooks(SHIPPED)
    assert books.names() == ["standard"]
    v1, v2 = books.versions_of("standard")
    assert (v1.version, v2.version) == ("2025-01-01", "2026-10-16")
    assert v2.effective_from == datetime(2026, 10, 16, tzinfo=UTC)
    assert v1.file.name == "standard-2025-01-01.yaml"
    assert all(v.currency == "USD" and len(v.content_sha256) == 64 for v in (v1, v2))
    assert books.version_at("standard", datetime(2026, 10, 15, 23, tzinfo=UTC)) is v1
    assert books.version_at("standard", datetime(2026, 10, 16, 0, tzinfo=UTC)) is v2


@pytest.mark.parametrize("version", ["2025-01-01", "2026-10-16"])
def test_shipped_standard_prices_every_demo_model_meter_gpu_and_tool(version: str) -> None:
    rates = load_pricebooks(SHIPPED).get(f"standard@{version}").rates
    selectors = {(r.meter_id, r.model_id, r.dimensions) for r in rates}
    for model in MODELS:
        for meter in ("input_tokens", "output_tokens", "cached_input_tokens"):
            assert (meter, model, ()) in selectors, (meter, model)
    for gpu in ("h100", "a100", "l4"):
        assert ("gpu_seconds", "*", (("gpu", gpu),)) in selectors
    for tool in ("web_search", "code_interpreter", "file_search"):
        assert ("tool_calls", "*", (("tool", tool),)) in selectors
    models = {r.price_model for r in rates}
    assert {"per_unit", "graduated", "volume", "package"} <= models
    assert all(r.per == 3600 for r in rates if r.meter_id == "gpu_seconds")
    assert all(r.package_size == 1000 for r in rates if r.meter_id == "tool_calls")


def test_shipped_second_version_changes_some_prices_not_all() -> None:
    books = load_pricebooks(SHIPPED)
    v1, v2 = books.versions_of("standard")
    old = {r.rate_id: r for r in v1.rates}
    changed = [r.rate_id for r in v2.rates if r != old[r.rate_id]]
    assert {r.rate_id for r in v2.rates} == set(old)  # same ids: tiers carry over
    assert 3 <= len(changed) < len(old)
    assert "gpt-5-output" in changed


def test_shipped_prices_are_a_resale_markup_over_vendor_list() -> None:
    rates = {r.rate_id: r for r in load_pricebooks(SHIPPED).get("standard@2025-01-01").rates}
    list_prices = {  # vendor-formats.md §4, USD per 1 M tokens
        "input_tokens:gpt-4o": D("2.50"),
        "output_tokens:gpt-4o": D("10.00"),
        "input_tokens:claude-sonnet-4-5": D("3.00"),
        "output_tokens:claude-opus-4-1": D("75.00"),
        "cached_input_tokens:gpt-5": D("0.125"),
    }
    for rate_id, vendor in list_prices.items():
        markup = rates[rate_id].unit_price / vendor
        assert D("1.2") <= markup <= D("1.3"), rate_id


# ---- validation: one bad thing per file, message names file and field ------------------------

RATE = '  - {meter_id: input_tokens, model_id: a, per: 1000000, unit_price: "1.00"}\n'
INVALID = [
    ("unknown top key", HEAD + "colour: blue\nrates:\n" + RATE, r"colour: unknown key"),
    ("missing rates", HEAD, r"rates: required"),
    ("empty rates", HEAD + "rates: []\n", r"rates: must be a non-empty list"),
    (
        "unknown rate key",
        HEAD + "rates:\n  - {meter_id: x, model_id: a, unit_price: '1', colour: 1}\n",
        r"rates\[0\]\.colour: unknown key",
    ),
    (
        "float price",
        HEAD + "rates:\n  - {meter_id: x, model_id: a, unit_price: 2.49}\n",
        r"rates\[0\]\.unit_price: write decimals as quoted strings",
    ),
    (
        "bad decimal",
        HEAD + "rates:\n  - {meter_id: x, model_id: a, unit_price: 'two'}\n",
        r"rates\[0\]\.unit_price: not a decimal: 'two'",
    ),
    (
        "negative price",
        HEAD + "rates:\n  - {meter_id: x, model_id: a, unit_price: '-1'}\n",
        r"rates\[0\]\.unit_price: must be at least 0",
    ),
    (
        "too many places",
        HEAD + "rates:\n  - {meter_id: x, model_id: a, unit_price: '0.0000000000001'}\n",
        r"rates\[0\]\.unit_price: at most 12 decimal places",
    ),
    (
        "zero per",
        HEAD + "rates:\n  - {meter_id: x, model_id: a, per: 0, unit_price: '1'}\n",
        r"rates\[0\]\.per: must be greater than 0",
    ),
    (
        "no price",
        HEAD + "rates:\n  - {meter_id: x, model_id: a}\n",
        r"rates\[0\]: needs exactly one of unit_price, markup, percentage, tiers, package, "
        r"flat, dynamic \(got none\)",
    ),
    (
        "two prices",
        HEAD + "rates:\n  - {meter_id: x, model_id: a, unit_price: '1', flat: '2'}\n",
        r"rates\[0\]: needs exactly one of",
    ),
    (
        "missing model",
        HEAD + "rates:\n  - {meter_id: x, unit_price: '1'}\n",
        r"rates\[0\]\.model_id: required",
    ),
    (
        "per with package",
        HEAD + "rates:\n  - {meter_id: x, model_id: a, per: 10, package: {size: 10, price: '1'}}\n",
        r"rates\[0\]\.per: not used with package",
    ),
    (
        "zero package size",
        HEAD + "rates:\n  - {meter_id: x, model_id: a, package: {size: 0, price: '1'}}\n",
        r"rates\[0\]\.package\.size: must be greater than 0",
    ),
    (
        "bad tier mode",
        HEAD + "rates:\n  - {meter_id: x, model_id: a, tiers: {mode: stairs, steps: []}}\n",
        r"rates\[0\]\.tiers\.mode: must be graduated or volume",
    ),
    (
        "closed last tier",
        HEAD + "rates:\n  - meter_id: x\n    model_id: a\n    tiers:\n      mode: graduated\n"
        "      steps: [{up_to: 10, unit_price: '1'}]\n",
        r"rates\[0\]\.tiers\.steps\[0\]\.up_to: the last step must be open-ended",
    ),
    (
        "open middle tier",
        HEAD + "rates:\n  - meter_id: x\n    model_id: a\n    tiers:\n      mode: volume\n"
        "      steps: [{up_to: null, unit_price: '1'}, {up_to: null, unit_price: '1'}]\n",
        r"rates\[0\]\.tiers\.steps\[0\]\.up_to: only the last step may be open-ended",
    ),
    (
        "equal tier bounds",
        HEAD + "rates:\n  - meter_id: x\n    model_id: a\n    tiers:\n      mode: graduated\n"
        "      steps: [{up_to: 10, unit_price: '1'}, {up_to: 10, unit_price: '1'},"
        " {up_to: null, unit_price: '1'}]\n",
        r"rates\[0\]\.tiers\.steps\[1\]\.up_to: tiers must be increasing \(got 10 after 10\)",
    ),
    (
        "duplicate selector",
        HEAD + "rates:\n" + RATE + RATE.replace('"1.00"', '"2.00"'),
        r"rates\[1\]: duplicates rates\[0\]",
    ),
    (
        "ambiguous dimensions",
        HEAD + "rates:\n"
        "  - {meter_id: g, model_id: '*', dimensions: {gpu: h100}, unit_price: '1'}\n"
        "  - {meter_id: g, model_id: '*', dimensions: {region: eu}, unit_price: '2'}\n",
        r"rates\[1\]: is ambiguous with rates\[0\]",
    ),
    (
        "duplicate id",
        HEAD + "rates:\n  - {id: r, meter_id: x, model_id: a, unit_price: '1'}\n"
        "  - {id: r, meter_id: x, model_id: b, unit_price: '1'}\n",
        r"rates\[1\]\.id: duplicate rate id 'r'",
    ),
    (
        "unknown currency",
        HEAD.replace("USD", "XYZ") + "rates:\n" + RATE,
        r"currency: unknown currency 'XYZ'",
    ),
    (
        "not on the hour",
        HEAD.replace("T00:00:00Z", "T00:30:00Z") + "rates:\n" + RATE,
        r"effective_from: must be aligned to a UTC hour",
    ),
    (
        "naive timestamp",
        HEAD.replace("2026-10-01T00:00:00Z", "'2026-10-01T00:00:00'") + "rates:\n" + RATE,
        r"effective_from: needs a UTC offset or Z",
    ),
    (
        "date only",
        HEAD.replace("2026-10-01T00:00:00Z", "2026-10-01") + "rates:\n" + RATE,
        r"effective_from: must be a timestamp with offset",
    ),
    (
        "duplicate yaml key",
        HEAD + "currency: EUR\nrates:\n" + RATE,
        r"invalid YAML \(line 5\): duplicate key 'currency'",
    ),
    ("yaml syntax", HEAD + "rates: [\n", r"invalid YAML"),
]


@pytest.mark.parametrize(("text", "pattern"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_pricebook_names_file_and_field(tmp_path: Path, text: str, pattern: str) -> None:
    _write(tmp_path, "bad.yaml", text)
    with pytest.raises(PricebookError, match=r"bad\.yaml: " + pattern):
        load_pricebooks(tmp_path)


def test_unsorted_tiers_message_matches_the_contract_example() -> None:
    with pytest.raises(PricebookError) as err:
        load_pricebook_file(FIXTURES / "invalid" / "unsorted-tiers.yaml")
    assert str(err.value).endswith(
        "unsorted-tiers.yaml: rates[3].tiers.steps[1].up_to: "
        "tiers must be increasing (got 100 after 1000)"
    )


def test_float_price_fixture_is_refused() -> None:
    with pytest.raises(PricebookError, match=r"float-price\.yaml: rates\[0\]\.unit_price"):
        load_pricebook_file(FIXTURES / "invalid" / "float-price.yaml")


def test_pricebook_error_is_a_user_error() -> None:
    assert issubclass(PricebookError, UsageboxError)


# ---- across files ---------------------------------------------------------------------------


def test_two_versions_with_the_same_effective_from_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", HEAD + "rates:\n" + RATE)
    _write(tmp_path, "b.yaml", HEAD.replace('"1"', '"2"') + "rates:\n" + RATE)
    with pytest.raises(
        PricebookError, match=r"b\.yaml: effective_from: .* also the effective_from of .*a\.yaml"
    ):
        load_pricebooks(tmp_path)


def test_the_same_version_id_twice_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", HEAD + "rates:\n" + RATE)
    _write(tmp_path, "b.yaml", HEAD.replace("10-01", "11-01") + "rates:\n" + RATE)
    with pytest.raises(PricebookError, match=r"version: version '1' of 't' also in .*a\.yaml"):
        load_pricebooks(tmp_path)


def test_a_pricebook_keeps_one_currency(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", HEAD + "rates:\n" + RATE)
    later = HEAD.replace('"1"', '"2"').replace("10-01", "11-01").replace("USD", "EUR")
    _write(tmp_path, "b.yaml", later + "rates:\n" + RATE)
    with pytest.raises(PricebookError, match=r"b\.yaml: currency: EUR differs from USD"):
        load_pricebooks(tmp_path)


def test_files_without_pricebook_key_are_skipped_and_an_empty_folder_fails(tmp_path: Path) -> None:
    books = load_pricebooks(FIXTURES / "rating")
    assert books.names() == ["euro", "simple", "yen"]
    with pytest.raises(PricebookError, match="no pricebook files"):
        load_pricebooks(tmp_path)
    with pytest.raises(PricebookError, match="pricebook folder not found"):
        load_pricebooks(tmp_path / "missing")


def test_version_at_before_the_first_version_and_unknown_pricebook() -> None:
    books = load_pricebooks(FIXTURES / "rating")
    with pytest.raises(PricebookError, match="no version of pricebook 'simple' in effect"):
        books.version_at("simple", datetime(2026, 9, 30, 23, tzinfo=UTC))
    with pytest.raises(PricebookError, match="unknown pricebook 'nope'"):
        books.version_at("nope", datetime(2026, 10, 1, tzinfo=UTC))


def test_rates_parse_all_price_models() -> None:
    v1 = load_pricebooks(FIXTURES / "rating").get("simple@v1")
    by_id = {r.rate_id: r for r in v1.rates}
    assert by_id["out-m1"].price_model == "graduated"
    assert [t.up_to for t in by_id["out-m1"].tiers] == [D(1000), D(5000), None]
    assert by_id["out-m2"].price_model == "volume"
    assert (by_id["web"].package_size, by_id["web"].package_price) == (D(1000), D("10.00"))
    assert by_id["platform"].flat == D("49.00")
    assert by_id["gpu_seconds:*:gpu=h100:region=eu"].specificity == (0, 2, 0)
    assert by_id["input_tokens:m1"].specificity == (1, 0, 0)


# ---- frozen once invoiced --------------------------------------------------------------------


def _copy_shipped(tmp_path: Path) -> Path:
    folder = tmp_path / "pricebooks"
    shutil.copytree(SHIPPED, folder)
    return folder


def test_check_frozen_passes_for_unchanged_files(tmp_path: Path) -> None:
    books = load_pricebooks(_copy_shipped(tmp_path))
    books.check_frozen(books.fingerprints())
    books.check_frozen({v.file.name: v.content_sha256 for v in books.versions})


def test_a_file_edited_after_it_issued_an_invoice_is_refused(tmp_path: Path) -> None:
    folder = _copy_shipped(tmp_path)
    issued = load_pricebooks(folder).fingerprints()
    path = folder / "standard-2026-10-16.yaml"
    path.write_text(path.read_text().replace('"11.00"', '"10.00"', 1))
    with pytest.raises(PricebookError) as err:
        load_pricebooks(folder).check_frozen(issued)
    message = str(err.value)
    assert "standard-2026-10-16.yaml: content_sha256: file was edited after it issued" in message
    assert re.search(r"recorded [0-9a-f]{12}", message)


def test_a_removed_version_that_issued_an_invoice_is_refused(tmp_path: Path) -> None:
    folder = _copy_shipped(tmp_path)
    books = load_pricebooks(folder)
    with pytest.raises(PricebookError, match="standard@1999-01-01: .* is missing"):
        books.check_frozen({**books.fingerprints(), "standard@1999-01-01": "0" * 64})


def test_with_version_replaces_the_same_start_or_adds(tmp_path: Path) -> None:
    books = load_pricebooks(SHIPPED)
    text = (SHIPPED / "standard-2026-10-16.yaml").read_text()
    same_start = _write(tmp_path, "p.yaml", text.replace('version: "2026-10-16"', 'version: "p"'))
    replaced = books.with_version(load_pricebook_file(same_start))
    assert [v.version for v in replaced.versions] == ["2025-01-01", "p"]
    later = text.replace('version: "2026-10-16"', 'version: "2026-10-20"').replace(
        "effective_from: 2026-10-16", "effective_from: 2026-10-20"
    )
    added = books.with_version(load_pricebook_file(_write(tmp_path, "q.yaml", later)))
    assert [v.version for v in added.versions] == ["2025-01-01", "2026-10-16", "2026-10-20"]


def test_load_pricebook_file_requires_a_pricebook(tmp_path: Path) -> None:
    path = _write(tmp_path, "x.yaml", "vendors: {}\n")
    with pytest.raises(PricebookError, match=r"x\.yaml: not a pricebook"):
        load_pricebook_file(path)


def test_comment_and_whitespace_edits_keep_the_content_hash(tmp_path: Path) -> None:
    folder = _copy_shipped(tmp_path)
    issued = load_pricebooks(folder).fingerprints()
    path = folder / "standard-2026-10-16.yaml"
    path.write_text("# reviewed by finance\n" + path.read_text().replace("\n", "  \n") + "\n\n")
    books = load_pricebooks(folder)
    assert books.fingerprints() == issued
    books.check_frozen(issued)


def test_a_legacy_stamp_of_the_file_bytes_is_still_accepted(tmp_path: Path) -> None:
    import hashlib

    folder = _copy_shipped(tmp_path)
    path = folder / "standard-2026-10-16.yaml"
    legacy = {"standard@2026-10-16": hashlib.sha256(path.read_bytes()).hexdigest()}
    load_pricebooks(folder).check_frozen(legacy)
    path.write_text(path.read_text().replace('"11.00"', '"10.00"', 1))
    with pytest.raises(PricebookError, match="edited after it issued"):
        load_pricebooks(folder).check_frozen(legacy)
