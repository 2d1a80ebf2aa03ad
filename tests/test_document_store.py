"""The document store: atomic puts, sha256, refused paths, and documents beside s3:// tables."""

from __future__ import annotations

import hashlib
from pathlib import Path

import boto3
import pytest

from tests.test_close_scenario import OCT, OCT_ISSUED, OCTOBER, build_month, ingest
from usagebox_pipelines.config import DEFAULT_PRICEBOOKS, Settings
from usagebox_pipelines.errors import UsageboxError
from usagebox_pipelines.stages.books import issued_invoices
from usagebox_pipelines.stages.close import close_month
from usagebox_pipelines.stages.drafts import refresh_drafts
from usagebox_pipelines.stages.export import export_invoices
from usagebox_pipelines.stages.reproduce import verify_invoice
from usagebox_pipelines.storage import DeltaStore, DocumentStore

REL = "invoices/2026-10/UBX-2026-000001.pdf"


def test_put_is_atomic_and_returns_the_sha256(tmp_path: Path) -> None:
    docs = DocumentStore(str(tmp_path))
    sha = docs.put(REL, b"%PDF-1 first")
    assert sha == hashlib.sha256(b"%PDF-1 first").hexdigest() == docs.sha256(REL)
    assert docs.get(REL) == b"%PDF-1 first" and docs.exists(REL)
    assert docs.local_path(REL) == tmp_path / "documents" / REL
    assert docs.listdir("invoices/2026-10", ".pdf") == [REL]
    assert docs.get("invoices/2026-10/none.pdf") is None
    assert docs.sha256("invoices/2026-10/none.pdf") is None


def test_a_failing_write_leaves_no_temp_file_and_the_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = DocumentStore(str(tmp_path))
    docs.put(REL, b"old")

    def broken(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("usagebox_pipelines.storage.os.replace", broken)
    with pytest.raises(OSError, match="disk full"):
        docs.put(REL, b"new bytes")
    folder = tmp_path / "documents" / "invoices" / "2026-10"
    assert [p.name for p in folder.iterdir()] == ["UBX-2026-000001.pdf"]
    assert docs.get(REL) == b"old"


@pytest.mark.parametrize(
    "bad",
    [
        "../escape.pdf",
        "invoices/../../etc/passwd",
        "/etc/passwd",
        "invoices//x.pdf",
        "./x.pdf",
        "invoices\\..\\x.pdf",
        "s3://other/x.pdf",
        "",
    ],
)
def test_paths_that_are_not_plain_relative_paths_are_refused(tmp_path: Path, bad: str) -> None:
    docs = DocumentStore(str(tmp_path))
    for call in (lambda: docs.put(bad, b"x"), lambda: docs.get(bad), lambda: docs.sha256(bad)):
        with pytest.raises(UsageboxError, match="refusing document path"):
            call()
    assert not (tmp_path / "documents").exists()


def test_settings_of_an_s3_home_have_no_local_documents_folder() -> None:
    settings = Settings("s3://billing/usagebox", DEFAULT_PRICEBOOKS)
    with pytest.raises(ValueError, match="object storage"):
        _ = settings.documents_dir
    assert DocumentStore(settings.home).uri(REL) == f"s3://billing/usagebox/documents/{REL}"


@pytest.mark.slow  # a local moto S3 server
def test_a_close_on_an_s3_home_stores_its_pdfs_under_the_home_and_verify_reads_them(
    tmp_path: Path,
    s3_home: str,
) -> None:
    store = DeltaStore(s3_home)
    settings = Settings(s3_home, DEFAULT_PRICEBOOKS)
    ingest(store, tmp_path / "october.jsonl", OCTOBER)
    build_month(store, settings.pricebooks, OCT)
    refresh_drafts(store, settings.pricebooks, OCT)
    result = close_month(store, settings, OCT, approve=True, now=OCT_ISSUED, approved_by="test")
    assert result.status == "closed"
    assert all(i["pdf"].startswith(f"{s3_home}/documents/invoices/{OCT}/") for i in result.invoices)

    s3 = boto3.client("s3")
    listed = s3.list_objects_v2(Bucket="billing", Prefix=f"usagebox/documents/invoices/{OCT}/")
    keys = sorted(o["Key"] for o in listed.get("Contents", []))
    docs = issued_invoices(store).sort("invoice_number")
    assert keys == [f"usagebox/documents/{p}" for p in docs["pdf_path"].to_list()]
    assert not (settings.local_home / "documents").exists()  # nothing under $TMPDIR

    number = docs["invoice_number"][0]
    report = verify_invoice(store, settings, number)
    assert report.reproduced, report.differences
    sha = report.pdf_sha256
    assert sha["stored"] == sha["rerendered"] == sha["file"]

    exported = export_invoices(store, settings, OCT, tmp_path / "out")  # `invoices --out`
    copy = tmp_path / "out" / f"{number}.pdf"
    assert exported.documents == docs.height
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == docs["pdf_sha256"][0]

    documents = DocumentStore(s3_home)
    documents.put(docs["pdf_path"][0], b"%PDF- tampered")
    tampered = verify_invoice(store, settings, number)
    assert not tampered.reproduced
    assert tampered.pdf_sha256["file"] == hashlib.sha256(b"%PDF- tampered").hexdigest()
