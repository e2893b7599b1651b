"""The README's commands and settings are the CLI's: every documented line parses, nothing runs."""

from __future__ import annotations

import re
import sqlite3
import tomllib
from pathlib import Path

import click
import pytest
from cli_args import all_commands, envvars, fenced_blocks, invocations, options, parse

from node.cli import cli
from node.config import ModelSpec
from node.meter import Meter

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")
INVOCATIONS = invocations(TEXT, "README.md")
# Commands the operator path must show, each at least once (SPEC §6).
REQUIRED = [
    ("serve",),
    ("api-keys", "create"),
    ("api-keys", "list"),
    ("api-keys", "delete"),
    ("prices", "set"),
    ("prices", "list"),
    ("billing", "status"),
    ("billing", "requests"),
    ("models", "list"),
]


def settings_rows() -> list[str]:
    """The first-column cells of the table under `## Settings`."""
    section = re.search(r"^## Settings\n(.*?)(?=^## |\Z)", TEXT, re.MULTILINE | re.DOTALL)
    assert section, "README has no '## Settings' section"
    rows = [line for line in section.group(1).splitlines() if line.startswith("|")]
    return [row.split("|")[1] for row in rows[2:]]  # skip the header and the --- line


def named(cell: str, pattern: str) -> set[str]:
    return set(re.findall(pattern, cell))


FLAG = r"`(--[a-z0-9][a-z0-9-]*)"
ENVVAR = r"`(LLM_NODE_[A-Z0-9_]+)`"


def test_readme_shows_the_operator_commands() -> None:
    shown = {inv.args[: len(req)] for inv in INVOCATIONS for req in REQUIRED}
    missing = [" ".join(req) for req in REQUIRED if req not in shown]
    assert not missing, f"README never shows: {missing}"
    assert len(INVOCATIONS) >= 25


@pytest.mark.parametrize("invocation", INVOCATIONS, ids=str)
def test_readme_command_parses(invocation) -> None:  # type: ignore[no-untyped-def]
    error = None
    try:
        parse(invocation.args)
    except click.ClickException as exc:
        error = exc.format_message()
    if error is not None:
        pytest.fail(f"{invocation}\n  -> {error}", pytrace=False)


def test_parser_refuses_what_the_cli_refuses() -> None:
    """The check above could fail: unknown options, commands and missing arguments are caught."""
    for bad in (
        ["api-keys", "create", "--level", "LLM", "--no-such-option"],
        ["api-keys", "create"],
        ["api-keys", "delete"],
        ["prices", "set", "smollm2-135m", "A100", "--prompt", "1"],
        ["billing", "frobnicate"],
        ["billing"],
        ["serve", "--port", "not-a-number"],
    ):
        with pytest.raises(click.UsageError):
            parse(bad)


def test_settings_table_names_real_flags_and_variables() -> None:
    rows = settings_rows()
    assert rows, "the settings table is empty"
    every_option = [opt for command in all_commands() for opt in options(command)]
    for cell in rows:
        flags, variables = named(cell, FLAG), named(cell, ENVVAR)
        assert flags, f"settings row names no flag: {cell.strip()}"
        for flag in flags:
            carrying = [opt for opt in every_option if flag in opt.opts + opt.secondary_opts]
            assert carrying, f"README settings: no command has the flag {flag}"
            for variable in variables:
                assert any(variable in envvars(opt) for opt in carrying), (
                    f"README settings: {flag} does not read {variable}"
                )


def test_every_environment_variable_and_serve_flag_is_documented() -> None:
    rows = settings_rows()
    documented_vars = set().union(*(named(cell, ENVVAR) for cell in rows))
    documented_flags = set().union(*(named(cell, FLAG) for cell in rows))
    used_vars = {v for command in all_commands() for opt in options(command) for v in envvars(opt)}
    assert used_vars <= documented_vars, f"undocumented variables: {used_vars - documented_vars}"
    serve = cli.commands["serve"]
    serve_flags = {flag for opt in options(serve) for flag in opt.opts if flag.startswith("--")}
    assert serve_flags <= documented_flags, (
        f"undocumented serve flags: {serve_flags - documented_flags}"
    )


def test_registry_examples_are_valid_model_tables() -> None:
    tables = 0
    for line, info, body in fenced_blocks(TEXT):
        if info != "toml":
            continue
        for table in tomllib.loads(body).get("model", []):
            ModelSpec.model_validate(table)  # raises, naming the field, if the docs are wrong
            tables += 1
        assert line > 0
    assert tables >= 2


def test_command_lines_are_found_wherever_the_shell_runs_them() -> None:
    """The extraction the checks above rely on: nothing the README runs may slip past them."""
    sample = """\
```bash
$ LLM_NODE_DB=/tmp/x.db .venv/bin/llm-node billing status --by org  # a comment
KEY=$(docker exec -it -e A=1 llm llm-node api-keys create --level LLM \\
      --comment "two words" --json | python3 -c 'print(1)')
docker run -d --name llm -p 8000:8000 -v "$PWD/m:/models" llm-node:cuda serve --port 9000
docker run -d --name llm llm-node:cpu
echo llm-node-is-not-a-command && llm-node models list
```
```python
llm-node = "not shell"
```
"""
    found = [inv.args for inv in invocations(sample, "sample")]
    assert found == [
        ("billing", "status", "--by", "org"),
        ("api-keys", "create", "--level", "LLM", "--comment", "two words", "--json"),
        ("serve", "--port", "9000"),
        ("models", "list"),
    ]


def test_meter_tables_and_columns_named_in_readme_exist(tmp_path: Path) -> None:
    meter = Meter(tmp_path / "llm-node.db")
    meter.close()
    with sqlite3.connect(tmp_path / "llm-node.db") as conn:
        columns = {
            table: {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    section = re.search(r"^## The meter\n(.*?)(?=^## )", TEXT, re.MULTILINE | re.DOTALL)
    assert section
    tables = set(re.findall(r"the `(\w+)` table|in\s+`(\w+)`", section.group(1)))
    named_tables = {name for pair in tables for name in pair if name}
    assert named_tables >= {"requests", "api_keys", "prices"}
    assert named_tables <= set(columns), (
        f"README names missing tables: {named_tables - set(columns)}"
    )
    assert {"cost_units", "currency", "started", "finished"} <= columns["requests"]
