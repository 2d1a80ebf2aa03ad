"""The demo is not part of the product: `usagebox_pipelines` never imports `usagebox_demo`.

The one allowed edge is the `usagebox demo` command, which imports `usagebox_demo.run` lazily
inside its function body, so loading the CLI or the Dagster definitions never loads the demo.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import usagebox_pipelines

PRODUCT = Path(usagebox_pipelines.__file__).parent


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
