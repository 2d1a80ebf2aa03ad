"""The README's analyst examples run as written: every command of each block marked
`<!-- readme-test -->` runs against a fresh demo home and must exit 0."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import DemoHome, usagebox_cli

README = Path(__file__).resolve().parents[1] / "README.md"
MARKED_BLOCK = re.compile(r"<!-- readme-test -->\s*```bash\n(.*?)```", re.S)
DEMO_HOME = "data/demo"


def readme_commands() -> list[str]:
    """The command lines of every marked block (comments and blank lines skipped)."""
    blocks = MARKED_BLOCK.findall(README.read_text())
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_the_readme_has_marked_examples_that_name_the_demo_home() -> None:
    commands = readme_commands()
    assert len(commands) >= 6
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "usagebox" and DEMO_HOME in argv, command


@pytest.mark.slow  # builds a demo home
@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs_as_written(command: str, demo_home: DemoHome) -> None:
    home = str(demo_home.home)
    argv = [home if a == DEMO_HOME else a for a in shlex.split(command)[1:]]
    done = usagebox_cli(argv)
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    assert done.stdout.strip(), f"{command} printed nothing"
