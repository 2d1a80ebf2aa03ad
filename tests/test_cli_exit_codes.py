"""CONTRACT §1 exit codes for every command (issue 11, items 4–6).

0 ok; 1 a check or invariant failed; 2 bad input or usage with exactly one line on stderr
(`usagebox: <reason>`) and no traceback. A representative set runs through the installed
console script; the rest call `cli_main` in-process (the same code path, faster).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import event, write_jsonl
from usagebox_pipelines import cli
from usagebox_pipelines.cli import cli_main
from usagebox_pipelines.config import DEFAULT_PRICEBOOKS

ROOT = Path(__file__).resolve().parents[1]

PRICEBOOK = next(
    p for p in sorted(DEFAULT_PRICEBOOKS.glob("*.yaml")) if "pricebook" in p.read_text()
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An events-only home (verify fails on it: no rollups yet), a file, a missing home."""
    root = tmp_path_factory.mktemp("exit-codes")
    events = write_jsonl(root / "events.jsonl", [event("e1", qty="1.5"), event("e2", qty=2)])
    home = root / "home"
    assert cli_main(["ingest", str(events), "--home", str(home)]) == 0
    a_file = root / "a-file"
    a_file.write_text("not a home\n")
    return {
        "root": root,
        "events": events,
        "home": home,
        "file": a_file,
        "missing": root / "missing",
    }


def run_in_process(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def console_script() -> str:
    script = Path(sys.executable).parent / "usagebox"
    return str(script) if script.exists() else shutil.which("usagebox") or "usagebox"


def run_script(argv: list[str], **env: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [console_script(), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line(code: int, err: str, expected_code: int, *needles: str) -> None:
    assert code == expected_code, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("usagebox: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---- through the real console script ---------------------------------------------------


def test_script_ok_with_options_before_the_command(world) -> None:
    code, out, err = run_script(
        ["--home", world["home"], "--pricebooks", DEFAULT_PRICEBOOKS, "sql",
         "SELECT count(*) AS n FROM events", "--format", "json"]
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == '[{"n": 2}]' and err == ""


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        ([], ["missing command", "--help"]),
        (["ingest", "--bogus"], ["No such option: --bogus", "usagebox ingest --help"]),
        (["ingest"], ["Missing argument"]),
        (["nosuch"], ["No such command"]),
        (["demo", "--events", "many"], ["--events"]),
        (["verify", "--home", "{missing}"], ["no usagebox home at {missing}", "usagebox ingest"]),
        (["--home", "{missing}", "verify"], ["no usagebox home at {missing}"]),
        (["ingest", "{events}", "--home", "{file}"], ["is a file"]),
        (["sql", "SELECT * FROM read_csv('/etc/passwd')", "--home", "{home}"], ["read_csv"]),
        (["run", "--date", "2026-10-01", "--home", "{missing}"], ["no usagebox home"]),
        (["close", "2026-13", "--home", "{home}"], ["2026-13"]),
    ],
)
def test_script_usage_errors_are_one_line_exit_2(world, argv, needles) -> None:
    fill = {k: str(v) for k, v in world.items()}
    code, out, err = run_script([a.format(**fill) for a in argv])
    assert_one_line(code, err, 2, *(n.format(**fill) for n in needles))
    assert not world["missing"].exists()


def test_script_verify_failing_exits_1(world) -> None:
    code, out, err = run_script(["verify", "--home", world["home"]])
    assert '"passed": false' in out
    assert_one_line(code, err, 1, "invariants failed")


def test_script_corrupted_delta_log_names_the_table(world, tmp_path) -> None:
    home = tmp_path / "broken"
    shutil.copytree(world["home"], home)
    first = sorted((home / "tables" / "events" / "_delta_log").glob("*.json"))[0]
    first.write_text("garbage\n")
    code, _, err = run_script(["sql", "SELECT count(*) FROM events", "--home", home])
    assert_one_line(code, err, 2, "'events'", "_delta_log", "restore")
    code, _, err = run_script(["verify", "--home", home])
    assert_one_line(code, err, 2, "'events'")


def test_script_unreachable_object_store_is_one_line(world) -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
    }
    code, _, err = run_script(["verify", "--home", "s3://nobucket/home"], **env)
    assert_one_line(code, err, 2, "cannot reach the object store", "AWS_ENDPOINT_URL")


# ---- every command, in process ---------------------------------------------------------

OUT = "{root}/out"
COMMANDS = {
    "run": ["run", "--date", "2026-10-01"],
    "close": ["close", "2026-10"],
    "usage": ["usage", "acct-001", "--from", "2026-10-01", "--to", "2026-10-02"],
    "explain": ["explain", "UBX-2026-000001"],
    "verify": ["verify"],
    "reconcile": ["reconcile", "--vendor", "openai", "{events}"],
    "sql": ["sql", "SELECT 1"],
    "reprice": ["reprice", "--pricebook", str(PRICEBOOK), "--month", "2026-10"],
    "invoices": ["invoices", "--month", "2026-10", "--out", OUT],
    "invoices-positional": ["invoices", "2026-10", "--out", OUT],
    "invoice verify": ["invoice", "verify", "UBX-2026-000001"],
    "guardrails export": ["guardrails", "export", "--out", OUT + "/p.json"],
    "guardrails status": ["guardrails", "status", "acct-001"],
}
CREATING = {
    "ingest": ["ingest", "{events}"],
    "demo": ["demo", "--events", "10"],
}


def _fill(argv: list[str], world) -> list[str]:
    return [a.format(**{k: str(v) for k, v in world.items()}) for a in argv]


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("where", ["after", "before"])
def test_missing_home_is_exit_2(capsys, world, name: str, where: str) -> None:
    argv = _fill(COMMANDS[name], world)
    home = ["--home", str(world["missing"])]
    argv = [*argv, *home] if where == "after" else [*home, *argv]
    code, out, err = run_in_process(capsys, argv)
    assert_one_line(code, err, 2, f"no usagebox home at {world['missing']}", "--home")
    assert out == "" and not world["missing"].exists()


@pytest.mark.parametrize("name", sorted({**COMMANDS, **CREATING}))
def test_home_that_is_a_file_is_exit_2(capsys, world, name: str) -> None:
    argv = _fill({**COMMANDS, **CREATING}[name], world)
    code, _, err = run_in_process(capsys, [*argv, "--home", world["file"]])
    assert_one_line(code, err, 2, f"--home {world['file']} is a file")


@pytest.mark.parametrize("name", sorted({**COMMANDS, **CREATING}))
def test_unknown_option_is_exit_2(capsys, world, name: str) -> None:
    argv = _fill({**COMMANDS, **CREATING}[name], world)
    code, _, err = run_in_process(capsys, [*argv, "--colour", "red"])
    assert_one_line(code, err, 2, "No such option: --colour", "--help")


@pytest.mark.parametrize(
    "argv",
    [
        ["ingest"],
        ["close"],
        ["usage", "acct-001", "--from", "2026-10-01"],
        ["usage", "--from", "2026-10-01", "--to", "2026-10-02"],
        ["explain"],
        ["reconcile", "{events}"],
        ["reconcile", "--vendor", "openai"],
        ["sql"],
        ["reprice", "--month", "2026-10"],
        ["invoices", "--month", "2026-10"],
        ["invoice", "verify"],
        ["guardrails", "export"],
        ["guardrails", "status"],
        ["invoice"],
        ["guardrails"],
        ["--home"],
    ],
)
def test_missing_argument_or_option_is_exit_2(capsys, world, argv) -> None:
    code, _, err = run_in_process(capsys, _fill(argv, world))
    assert_one_line(code, err, 2, "--help")


@pytest.mark.parametrize(
    "argv",
    [
        ["close", "October"],
        ["run", "--date", "yesterday"],
        ["run", "--month", "2026-10", "--date", "2026-10-01"],
        ["verify", "--month", "2026/10"],
        ["sql", "SELECT 1", "--format", "xml"],
        ["explain", "X", "--line", "first"],
        ["usage", "acct-001", "--from", "2026-10-02", "--to", "2026-10-01"],
        ["reprice", "--pricebook", "{missing}/p.yaml", "--month", "2026-10"],
        ["reconcile", "--vendor", "openai", "{missing}/export.csv"],
        ["invoices", "--out", OUT],
        ["--pricebooks", "{missing}", "verify"],
    ],
)
def test_bad_values_are_exit_2(capsys, world, argv) -> None:
    code, _, err = run_in_process(capsys, [*_fill(argv, world), "--home", world["home"]])
    assert_one_line(code, err, 2)


def test_ingest_creates_its_home_and_accepts_options_in_either_place(capsys, world, tmp_path):
    before = tmp_path / "before"
    code, out, err = run_in_process(capsys, ["--home", before, "ingest", world["events"]])
    assert code == 0, err
    assert '"accepted": 2' in out
    after = tmp_path / "after"
    code, out, err = run_in_process(capsys, ["ingest", world["events"], "--home", after])
    assert code == 0 and '"duplicates": 0' in out
    assert (before / "tables" / "events").is_dir() and (after / "tables" / "events").is_dir()


def test_command_options_override_those_before_the_command(capsys, world) -> None:
    argv = ["--home", world["missing"], "sql", "SELECT count(*) AS n FROM events"]
    code, out, err = run_in_process(capsys, [*argv, "--format", "json", "--home", world["home"]])
    assert code == 0, err
    assert out.strip() == '[{"n": 2}]'


def test_help_is_exit_0(capsys) -> None:
    for argv in (["--help"], ["ingest", "--help"], ["invoice", "verify", "--help"]):
        code, out, _ = run_in_process(capsys, argv)
        assert code == 0 and "Usage:" in out


# ---- exit 1: checks and invariants -----------------------------------------------------


def test_verify_fails_with_exit_1_on_a_home_without_rollups(capsys, world) -> None:
    code, out, err = run_in_process(capsys, ["verify", "--home", world["home"]])
    assert '"passed": false' in out
    assert_one_line(code, err, 1, "3_hourly_equals_events")


def test_run_with_a_failed_step_exits_1(capsys, world, monkeypatch) -> None:
    from usagebox_pipelines import runner

    def failing(settings, day, *_progress):
        return [runner.RunOutcome("daily_job", str(day), False, "r1", ["usage_hourly: boom"])]

    monkeypatch.setattr(runner, "run_day", failing)
    code, out, err = run_in_process(
        capsys, ["run", "--date", "2026-10-01", "--home", world["home"]]
    )
    assert code == 1, err
    assert "daily_job 2026-10-01: FAILED" in out
    assert err.splitlines() == ["usagebox: daily_job 2026-10-01: usage_hourly: boom"]


def test_run_that_succeeds_exits_0(capsys, world, monkeypatch) -> None:
    from usagebox_pipelines import runner

    monkeypatch.setattr(
        runner, "run_month", lambda s, m, *_: [runner.RunOutcome("monthly_job", m, True, "r2")]
    )
    argv = ["--home", world["home"], "run", "--month", "2026-10", "--json"]
    code, out, err = run_in_process(capsys, argv)
    assert code == 0, err
    assert json.loads(out)["runs"][0]["success"] is True


def test_close_without_events_refuses_to_issue(capsys, world, tmp_path) -> None:
    home = tmp_path / "no-events"
    shutil.copytree(world["home"], home)
    shutil.rmtree(home / "tables" / "events")
    for argv in (["close", "2026-10"], ["close", "2026-10", "--approve"]):
        code, out, err = run_in_process(capsys, [*argv, "--home", home])
        assert_one_line(code, err, 2, "no events", "ingest")
        assert out == ""
    assert not (home / "tables" / "invoices").exists()


def test_invoice_verify_exit_codes(capsys, tmp_path) -> None:
    from tests.test_close_audit import number_of
    from tests.test_close_scenario import OCT, scenario

    store, settings = scenario().home_at("oct_closed", tmp_path / "h")
    opts = ["--home", settings.home, "--pricebooks", str(settings.pricebooks)]
    number = number_of(store, OCT, "acct-001")
    code, out, err = run_in_process(capsys, ["invoice", "verify", number, *opts])
    assert code == 0 and '"reproduced": true' in out, err
    code, out, err = run_in_process(capsys, ["verify", "--month", OCT, *opts])
    assert code == 0 and '"passed": true' in out, err
    code, out, err = run_in_process(
        capsys, ["invoices", "--month", OCT, "--out", tmp_path / "out", *opts]
    )
    assert code == 0, err  # the README's spelling
    assert (tmp_path / "out" / "register.csv").exists()
    (settings.documents_dir / "invoices" / OCT / f"{number}.pdf").unlink()
    code, out, err = run_in_process(capsys, ["invoice", "verify", number, *opts])
    assert code == 1 and '"reproduced": false' in out
    assert "Traceback" not in err
    code, _, err = run_in_process(capsys, ["invoice", "verify", "UBX-1999-000001", *opts])
    assert_one_line(code, err, 2)
    code, _, err = run_in_process(
        capsys, ["invoices", "--month", OCT, "--out", tmp_path / "again", *opts]
    )
    assert_one_line(code, err, 1, "PDF missing or changed")


# ---- environment failures --------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        PermissionError(13, "Permission denied", "/somewhere/tables/raw_events"),
        OSError(
            "Generic LocalFileSystem error: Unable to open file: Permission denied (os error 13)"
        ),
    ],
)
def test_home_not_writable_is_one_line(capsys, world, tmp_path, monkeypatch, error) -> None:
    from usagebox_pipelines import storage

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(storage, "write_deltalake", refuse)
    code, _, err = run_in_process(capsys, ["ingest", world["events"], "--home", tmp_path / "h"])
    assert_one_line(code, err, 2, "permission denied", "--home")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_home_is_one_line(capsys, world, tmp_path) -> None:
    home = tmp_path / "ro"
    shutil.copytree(world["home"], home)
    for path in [home, *home.rglob("*")]:
        if path.is_dir():
            path.chmod(0o555)
    try:
        other = write_jsonl(tmp_path / "more.jsonl", [event("e3")])
        code, _, err = run_in_process(capsys, ["ingest", other, "--home", home])
        assert_one_line(code, err, 2, "permission denied")
    finally:
        for path in [home, *home.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)


def test_unexpected_bugs_still_raise(world, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("usagebox_pipelines.sql.run_sql", broken)
    with pytest.raises(ZeroDivisionError):
        cli.cli_main(["sql", "SELECT 1", "--home", str(world["home"])])


# ---- the README's examples run as typed -------------------------------------------------

_PLACEHOLDERS = {
    "FILE...": "{events}",
    "PATH...": "{events}",
    "FILE": "{events}",
    "F": "{events}",
    "H": "{file}",
    "data/demo": "{file}",  # the analyst examples name the demo home
    "DIR": "{root}/readme-out",
    "ACCOUNT": "acct-001",
    "INV": "UBX-2026-000001",
    "M": "2026-10",
    "D": "2026-10-01",
    "T": "2026-10-01T00:00:00Z",
    "N": "1",
    '"SELECT': "SELECT 1",
    '..."': "",
}


def readme_examples() -> list[str]:
    import re

    text = (ROOT / "README.md").read_text()
    inline = re.findall(r"`(usagebox [^`]*)`", text)
    blocks = re.findall(r"^(usagebox .*)$", text, flags=re.MULTILINE)
    return sorted({e for e in inline + blocks if e != "usagebox run"})


def _expand(example: str) -> list[str]:
    """`[--opt X]` kept without brackets, `a\\|b` takes the first, placeholders filled."""
    import re
    import shlex

    example = example.replace("[", "").replace("]", "")
    example = re.split(r"\s\\\|\s", example)[0]  # `--date D \| --month M`
    example = re.sub(r"(\S+?)(\\\|\S+)+", r"\1", example)  # `table\|csv\|json`
    words = shlex.split(example)[1:] if '"' in example else example.split()[1:]
    filled = [_PLACEHOLDERS.get(w, w) for w in words if _PLACEHOLDERS.get(w, w)]
    if filled.count("2026-10-01T00:00:00Z") == 2:  # `--from T --to T`
        filled[len(filled) - 1 - filled[::-1].index("2026-10-01T00:00:00Z")] = "2026-10-02"
    return filled


@pytest.mark.parametrize("example", readme_examples())
def test_readme_examples_parse(capsys, world, example: str) -> None:
    """Every example reaches the home check (here: a file), so its words are all accepted."""
    argv = _fill(_expand(example), world)
    if "--home" not in argv:
        argv += ["--home", str(world["file"])]
    code, _, err = run_in_process(capsys, argv)
    assert_one_line(code, err, 2, "is a file")


def test_ingest_of_a_missing_file_writes_nothing(capsys, world, tmp_path) -> None:
    home = tmp_path / "typo"
    code, out, err = run_in_process(
        capsys, ["ingest", world["events"], tmp_path / "nope.jsonl", "--home", home]
    )
    assert_one_line(code, err, 2, "no such file", "nope.jsonl")
    assert out == "" and not home.exists()


def test_ingest_with_an_unreadable_file_lands_the_rest_and_exits_2(capsys, world, tmp_path):
    """A scheduler reading the exit code sees the bad file; the good one is in, and the same
    command run again after the fix loads only what was missing."""
    home, bad = tmp_path / "home", tmp_path / "bad.txt"
    bad.write_text("not events")
    code, out, err = run_in_process(capsys, ["ingest", world["events"], bad, "--home", home])
    assert code == 2 and "Traceback" not in err
    summary = json.loads(out)
    assert summary["files"] == 1 and summary["accepted"] > 0 and len(summary["errors"]) == 1
    lines = err.splitlines()
    assert any("bad.txt" in line and "unknown file format" in line for line in lines)
    assert lines[-1].startswith("usagebox: 1 input(s) not ingested") and "again" in lines[-1]
    bad.unlink()
    code, out, _ = run_in_process(capsys, ["ingest", world["events"], "--home", home])
    assert code == 0 and json.loads(out)["accepted"] == 0


def test_ingest_into_a_home_below_a_file_is_one_line(capsys, world) -> None:
    home = world["file"] / "sub"
    code, _, err = run_in_process(capsys, ["ingest", world["events"], "--home", home])
    assert_one_line(code, err, 2, f"{world['file']} is a file")


def test_ingest_into_an_unwritable_parent_is_one_line(capsys, world, tmp_path, monkeypatch):
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: real(path, mode) and not mode & os.W_OK)
    code, _, err = run_in_process(capsys, ["ingest", world["events"], "--home", tmp_path / "x"])
    assert_one_line(code, err, 2, "permission denied", "--home")
