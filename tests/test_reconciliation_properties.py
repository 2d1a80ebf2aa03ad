"""Property: any order of arrival and any re-pull of a set of exports gives the same tables."""

from __future__ import annotations

import gzip
import json
import re
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usagebox_pipelines.config import DEFAULT_PRICEBOOKS
from usagebox_pipelines.reconciliation.loaders import load_vendor_exports, merge_lines
from usagebox_pipelines.reconciliation.mapping import load_vendor_mapping
from usagebox_pipelines.reconciliation.restatement import LINES, TABLE_SCHEMAS, tag_lines
from usagebox_pipelines.schemas import empty

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
DAY1, DAY2 = 1790812800, 1790899200  # 2026-10-01, 2026-10-02 UTC
# What a standing line is; which copy of a re-pull it was read from is not part of it.
CONTENT = ["line_id", "exported_at", "model_id", "meter_id", "quantity", "amount", "reason"]


def _result(item: str, value: str, project: str | None) -> dict:
    return {
        "object": "organization.costs.result",
        "amount": {"value": f"__{value}__", "currency": "usd"},
        "line_item": item,
        "project_id": project,
    }


def _page(start: int, results: list[dict]) -> str:
    page = {
        "object": "page",
        "data": [
            {"object": "bucket", "start_time": start, "end_time": start + 86400, "results": results}
        ],
        "has_more": False,
        "next_page": None,
    }
    return json.dumps(page).replace('"__', "").replace('__"', "")


# Two days, two projects, restatements of the same day and scope, an identical re-export,
# unknown models (review) and zero lines of an unknown model (ignored).
EXPORTS = {
    "a_20261102T060000Z.json": _page(
        DAY1,
        [
            _result("gpt-4o-2024-08-06, input", "1.10", "proj_a"),
            _result("gpt-4o-2024-08-06, output", "2.00", "proj_a"),
            _result("o9-preview, input", "0.30", "proj_a"),
        ],
    ),
    "a_20261104T060000Z.json": _page(  # restates day 1 of proj_a
        DAY1,
        [
            _result("gpt-4o-2024-08-06, input", "1.15", "proj_a"),
            _result("o9-preview, input", "0.35", "proj_a"),
            _result("o9-preview, output", "0", "proj_a"),
        ],
    ),
    "b_20261103T060000Z.json": _page(
        DAY1, [_result("gpt-4o-mini-2024-07-18, output", "0.60", "proj_b")]
    ),
    "b_20261105T060000Z.json": _page(  # the same content again, later: changes nothing
        DAY1, [_result("gpt-4o-mini-2024-07-18, output", "0.60", "proj_b")]
    ),
    "c_20261103T060000Z.json": _page(
        DAY2,
        [
            _result("gpt-4o-2024-08-06, input", "0.000000000001", None),
            _result("gpt-4o-2024-08-06, input", "0.000000000001", None),  # two equal charges
            _result("gpt-realtime-2.1, audio input", "0.37", None),
        ],
    ),
}


def _reserialized(text: str) -> str:
    """The same export as another client writes it: indented, keys sorted, numbers without
    trailing zeros (`1.10` -> `1.1`)."""
    doc = json.loads(text, parse_float=Decimal)
    marked = json.dumps(doc, indent=1, sort_keys=True, default=lambda d: f"__D__{d.normalize()}")
    return re.sub(r'"__D__([^"]*)"', r"\1", marked)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, list[Path]]:
    """Each export, and re-pulls of it: re-serialized, and gzipped (same pull stamp)."""
    root = tmp_path_factory.mktemp("exports")
    out: dict[str, list[Path]] = {}
    for name, text in EXPORTS.items():
        plain = root / name
        plain.write_text(text)
        compact = root / f"repull_{name}"
        compact.write_text(_reserialized(text))
        packed = root / f"gz_{name}.gz"
        packed.write_bytes(gzip.compress(text.encode()))
        out[name] = [plain, compact, packed]
    return out


@pytest.fixture(scope="module")
def mapping():
    return load_vendor_mapping(DEFAULT_PRICEBOOKS)


def _load_in_batches(batches: list[list[Path]], mapping) -> dict[str, pl.DataFrame]:
    stored = empty(LINES).with_columns(_table=pl.lit(""))
    state: dict[str, pl.DataFrame] = {}
    for batch in batches:
        state, _ = merge_lines(stored, load_vendor_exports("openai", batch, mapping).lines())
        stored = pl.concat([tag_lines(frame, table) for table, frame in state.items()])
    return {
        table: tag_lines(frame, table).select(CONTENT).sort(CONTENT, nulls_last=True)
        for table, frame in state.items()
    }


def test_copies_read_as_the_same_lines(files, mapping):
    for copies in files.values():
        ids = [
            load_vendor_exports("openai", [p], mapping).lines()["line_id"].sort() for p in copies
        ]
        assert ids[0].equals(ids[1]) and ids[0].equals(ids[2])


@SETTINGS
@given(data=st.data())
def test_any_order_and_any_re_pull_gives_the_same_tables(files, mapping, data):
    expected = _load_in_batches([[files[n][0] for n in sorted(EXPORTS)]], mapping)
    arrivals = [
        data.draw(st.sampled_from(files[name]), label=name)
        for name in EXPORTS
        for _ in range(data.draw(st.integers(1, 2), label=f"{name} pulls"))
    ]
    arrivals = data.draw(st.permutations(arrivals), label="order")
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(arrivals)), max_size=4), label="cuts")))
    batches = [arrivals[i:j] for i, j in zip([0, *cuts], [*cuts, len(arrivals)], strict=True)]
    got = _load_in_batches([b for b in batches if b], mapping)
    for table in TABLE_SCHEMAS:
        assert got[table].equals(expected[table]), table


def test_the_expected_tables_hold_the_newest_generation(files, mapping):
    tables = _load_in_batches([[files[n][0] for n in sorted(EXPORTS)]], mapping)
    costs = tables["vendor_costs"]
    assert costs["amount"].sum() == Decimal("1.15") + Decimal("0.60") + Decimal("0.000000000002")
    assert tables["vendor_review"]["amount"].sort().to_list() == [Decimal("0.35"), Decimal("0.37")]
    assert tables["vendor_ignored"].height == 1
