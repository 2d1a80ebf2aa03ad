"""A wheel built from this repo, installed away from the checkout, closes a month into PDFs.

Templates, CSS, the issuer block, the logo and the default pricebooks are package data, so an
install with no source tree (`pip install usagebox-pipelines`) must render invoices. The wheel
goes into an empty folder with `pip install --target`; a child interpreter (this venv's, for
the dependencies) runs from an unrelated folder with that folder first on `PYTHONPATH`, so it
imports the installed copy, never the checkout (the script asserts it), and uses no
`--pricebooks` and no `$USAGEBOX_PRICEBOOKS`: the packaged defaults must be found. A PDF with
the logo renders to the same bytes there as from the checkout (no install path in the bytes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Not part of a source distribution: local state, caches and build output.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "data",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "out",
    "tmp*",
)

_IN_THE_INSTALL = r"""
import json, sys
from datetime import UTC, datetime
from pathlib import Path

site, home, events = (Path(a) for a in sys.argv[1:4])

import usagebox_demo
import usagebox_pipelines
from usagebox_pipelines import config
from usagebox_pipelines.catalog import INVOICES
from usagebox_pipelines.cli import cli_main
from usagebox_pipelines.stages.issue import code_version
from usagebox_pipelines.pricing import load_accounts, load_pricebooks
from usagebox_pipelines.stages.events import update_events
from usagebox_pipelines.stages.rating import build_rated_usage
from usagebox_pipelines.stages.rollups import build_usage_hourly, build_usage_monthly
from usagebox_pipelines.storage import DeltaStore

def inside(path):
    return Path(path).resolve().is_relative_to(site.resolve())

assert inside(usagebox_pipelines.__file__), usagebox_pipelines.__file__
assert inside(usagebox_demo.__file__), usagebox_demo.__file__
for folder in (config.TEMPLATES_DIR, config.ASSETS_DIR, config.DEFAULT_PRICEBOOKS):
    assert inside(folder) and folder.is_dir(), folder
settings = config.Settings.resolve(str(home))
assert settings.pricebooks == config.DEFAULT_PRICEBOOKS, settings.pricebooks
assert config.SOURCE_ROOT is None and code_version() == usagebox_pipelines.__version__

books = load_pricebooks(settings.pricebooks)
accounts = load_accounts(settings.pricebooks)

assert cli_main(["ingest", str(events), "--home", str(home)]) == 0
store = DeltaStore(settings.home)
update_events(store)
build_usage_hourly(
    store, datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
)
build_usage_monthly(store, "2026-10")
build_rated_usage(store, settings.pricebooks, "2026-10")
assert cli_main(["close", "2026-10", "--approve", "--home", str(home)]) == 0
issued = store.read(INVOICES).to_dicts()
numbers = sorted(r["invoice_number"] for r in issued if r["status"] == "issued")
verified = [cli_main(["invoice", "verify", n, "--home", str(home)]) for n in numbers]
from usagebox_pipelines.documents import asset_url, html_to_pdf
from usagebox_pipelines.invoicing.render import pdf_sha256
portable = html_to_pdf(PORTABLE_HTML.format(logo=asset_url("logo.svg")))
print(json.dumps({
    "portable_sha256": pdf_sha256(portable),
    "pricebook_versions": len(books.versions),
    "accounts": len(accounts.listed),
    "numbers": numbers,
    "verified": verified,
}))
"""


# Same bytes from any install location: the logo's absolute file: URL must not leak into them.
PORTABLE_HTML = '<link rel="stylesheet" href="base.css"><img src="{logo}"><p>same bytes</p>'


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    command = " ".join(map(str, args))[:200]
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_a_wheel_installed_without_the_checkout_renders_invoices(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=_NOT_SOURCE)
    dist, site, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(source)])
    (wheel,) = dist.glob("usagebox_pipelines-*.whl")
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), wheel])

    elsewhere.mkdir()
    events = elsewhere / "events.jsonl"
    rows = [
        {
            "event_id": f"w-{i}",
            "account_id": account,
            "meter_id": meter,
            "model_id": "gpt-4o",
            "quantity": 250_000 * (i + 1),
            "timestamp": f"2026-10-{2 + i:02d}T10:15:00Z",
        }
        for i, (account, meter) in enumerate(
            [
                ("acct-001", "input_tokens"),
                ("acct-001", "output_tokens"),
                ("acct-007", "input_tokens"),
            ]
        )
    ]
    events.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {k: v for k, v in os.environ.items() if not k.startswith("USAGEBOX_")}
    env["PYTHONPATH"] = str(site)
    home = elsewhere / "home"
    script = f"PORTABLE_HTML = {PORTABLE_HTML!r}\n{_IN_THE_INSTALL}"
    proc = _run(
        [sys.executable, "-P", "-c", script, str(site), str(home), str(events)],
        cwd=elsewhere,
        env=env,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["pricebook_versions"] >= 2 and result["accounts"] >= 2
    assert result["numbers"] and result["verified"] == [0] * len(result["numbers"])

    from pypdf import PdfReader

    from usagebox_pipelines.documents import asset_url, html_to_pdf
    from usagebox_pipelines.invoicing.render import pdf_sha256

    here = html_to_pdf(PORTABLE_HTML.format(logo=asset_url("logo.svg")))
    assert result["portable_sha256"] == pdf_sha256(here)

    pdfs = sorted((home / "documents").rglob("*.pdf"))
    invoices = [p for p in pdfs if any(n in p.name for n in result["numbers"])]
    assert len(invoices) == len(result["numbers"]), pdfs
    for pdf in invoices:
        reader = PdfReader(pdf)
        assert len(reader.pages) >= 1
        text = "".join(page.extract_text() for page in reader.pages)
        assert any(n in text for n in result["numbers"])
