"""Package layout: the demo stays out of the product; documents' files ship as package data.

`usagebox_pipelines` never imports `usagebox_demo`; the one allowed edge is the `usagebox demo`
command, which imports `usagebox_demo.run` lazily inside its function body, so loading the CLI
or the Dagster definitions never loads the demo. Templates, assets and the default pricebooks
live in `usagebox_pipelines/package_data/` (tests/test_wheel_install.py installs a real wheel);
the checkout's top-level `pricebooks/` is a link to the packaged folder, not a second copy.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import usagebox_pipelines
from usagebox_pipelines.config import ASSETS_DIR, DEFAULT_PRICEBOOKS, TEMPLATES_DIR

PRODUCT = Path(usagebox_pipelines.__file__).parent
ROOT = Path(__file__).resolve().parents[1]


def _demo_imports(tree: ast.AST) -> list[ast.AST]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(
            a.name.split(".")[0] == "usagebox_demo" for a in node.names
        ):
            found.append(node)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == (
            "usagebox_demo"
        ):
            found.append(node)
    return found


def _enclosing_function(tree: ast.AST, target: ast.AST) -> str | None:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if any(child is target for child in ast.walk(node)):
                return node.name
    return None


def test_product_imports_the_demo_only_lazily_in_the_demo_command() -> None:
    edges = []
    for path in sorted(PRODUCT.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _demo_imports(tree):
            edges.append((path.relative_to(PRODUCT).as_posix(), _enclosing_function(tree, node)))
    assert edges == [("cli.py", "demo")]


def test_loading_the_cli_and_definitions_does_not_load_the_demo() -> None:
    code = (
        "import sys, usagebox_pipelines.cli, usagebox_pipelines.definitions;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'usagebox_demo'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip() == "[]"


def test_demo_modules_are_gone_from_the_domain_packages() -> None:
    assert not (PRODUCT / "demo").exists()
    assert not (PRODUCT / "reconciliation" / "demo_exports.py").exists()
    assert not (PRODUCT / "guardrails" / "demo.py").exists()


def test_documents_files_and_default_pricebooks_are_package_data() -> None:
    data = PRODUCT / "package_data"
    assert TEMPLATES_DIR == (data / "templates").resolve()
    assert ASSETS_DIR == (data / "assets").resolve()
    assert DEFAULT_PRICEBOOKS == (data / "pricebooks").resolve()
    for name in ("invoice_v1.html.j2", "reconciliation_v1.html.j2", "base.css", "invoice.css"):
        assert (TEMPLATES_DIR / name).is_file(), name
    for name in ("issuer.yaml", "logo.svg"):
        assert (ASSETS_DIR / name).is_file(), name
    assert {"accounts.yaml", "vendors.yaml"} <= {p.name for p in DEFAULT_PRICEBOOKS.iterdir()}
    for old in ("reports", "assets"):
        assert not (ROOT / old).exists(), f"top-level {old}/ moved into package_data/"


def test_the_checkouts_pricebooks_folder_links_to_the_packaged_one() -> None:
    link = ROOT / "pricebooks"
    assert link.is_symlink() and link.resolve() == DEFAULT_PRICEBOOKS
