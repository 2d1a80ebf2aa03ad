"""`usagebox demo` end to end on a small month (the shared `demo_home`, built through the CLI):
every stage runs and every invariant holds."""

from __future__ import annotations

import pytest

from tests.conftest import DemoHome
from usagebox_pipelines.catalog import INVOICES
from usagebox_pipelines.config import Settings
from usagebox_pipelines.stages.reproduce import verify_invoice
from usagebox_pipelines.stages.verify import issued_intact, verify
from usagebox_pipelines.storage import DeltaStore

pytestmark = pytest.mark.slow  # the whole demo month


def test_small_demo_runs_every_stage_and_verifies(demo_home: DemoHome) -> None:
    settings = Settings.resolve(str(demo_home.home))
    report = demo_home.report
    store = DeltaStore(settings.home)
    assert report["invoices_issued"] > 0
    assert report["late_ingest"]["late"] > 0
    assert report["next_month_adjustment_lines"] > 0
    assert [r.name for r in verify(store) if not r.passed] == []
    assert issued_intact(store, settings).passed
    first = (
        store.read(INVOICES).filter(store.read(INVOICES)["status"] == "issued").row(0, named=True)
    )
    assert verify_invoice(store, settings, first["invoice_number"]).reproduced
    assert (settings.documents_dir / first["pdf_path"]).exists()
    # the close renders the month's reconciliation PDFs with its invoices; the next month,
    # open, has its CSVs only
    reports = settings.documents_dir / "reconciliation"
    assert (reports / "2026-10" / "reconciliation_2026-10.pdf").exists()
    assert (reports / "2026-10" / "margin_2026-10.pdf").exists()
    assert not list((reports / "2026-11").glob("*.pdf"))
