"""Limits, budgets and orgs in the CLI (SPEC §6), as a user runs it: real subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.meter import Meter, Usage
from tests.meter_support import start
from tests.test_cli_meter import ok, run, snapshot


def test_keys_with_limits_and_budgets_then_orgs(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    created = json.loads(
        ok(db, "api-keys", "create", "--level", "LLM", "--org", "acme", "--rpm", "60",
           "--tpm", "10000", "--max-parallel", "2", "--budget", "25.50",
           "--budget-period", "month", "--json")
    )  # fmt: skip
    key_id = created["id"]
    with Meter(db) as meter:
        meter.set_price("smollm2-135m", "cpu", "19.78", "167.66")
        meter.open_request(start("r1", key_id=key_id, org="acme")).result()
        meter.finish("r1", Usage(18, 0, 16), "ok").result()
    (listed,) = json.loads(ok(db, "api-keys", "list", "--json"))
    assert (listed["rpm"], listed["tpm"], listed["max_parallel"]) == (60, 10000, 2)
    assert listed["budget"]["amount"] == "25.5" and listed["budget"]["period"] == "month"
    assert listed["budget"]["spent"] == "0.0030386"
    assert listed["budget"]["remaining"] == "25.4969614"
    table = ok(db, "api-keys", "list")
    assert "25.5/month" in table and "25.4969614" in table
    updated = json.loads(
        ok(db, "api-keys", "update", key_id, "--rpm", "none", "--tpm", "500", "--comment", "ci",
           "--budget", "none", "--json")
    )  # fmt: skip
    assert (updated["rpm"], updated["tpm"], updated["max_parallel"]) == (None, 500, 2)
    assert updated["comment"] == "ci" and updated["budget"] is None
    org = json.loads(
        ok(db, "orgs", "set", "acme", "--budget", "1", "--budget-period", "total", "--json")
    )
    assert org["budget"]["spent"] == "0.0030386" and org["budget"]["remaining"] == "0.9969614"
    ok(db, "orgs", "set", "beta")  # recorded without a budget
    orgs = json.loads(ok(db, "orgs", "list", "--json"))
    assert [(o["org"], o["keys"], o["budget"] is None) for o in orgs] == [
        ("acme", 1, False),
        ("beta", 0, True),
    ]
    status = ok(db, "billing", "status", "--by", "org")
    assert "1/total" in status and "0.9969614" in status


BAD_INPUT = [
    (["api-keys", "create", "--level", "LLM", "--rpm", "0"], "--rpm"),
    (["api-keys", "create", "--level", "LLM", "--tpm", "many"], "--tpm"),
    (["api-keys", "create", "--level", "LLM", "--budget", "5"], "--budget-period"),
    (["api-keys", "create", "--level", "LLM", "--budget", "1.0000001", "--budget-period", "day"],
     "--budget"),
    (["api-keys", "update", "key_nope", "--rpm", "5"], "key_nope"),
    (["api-keys", "update", "KEY"], "nothing to change"),
    (["orgs", "set", "acme", "--budget", "5", "--budget-period", "year"], "--budget-period"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "named"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, args: list[str], named: str
) -> None:
    db = tmp_path / "m.db"
    Meter(db).close()
    before = snapshot(db)
    done = run(db, *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and named in lines[0], done.stderr
    assert done.stdout == ""
    assert snapshot(db) == before
