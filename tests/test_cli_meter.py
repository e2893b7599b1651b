"""The meter's CLI (SPEC §6) as a user runs it: real subprocesses on a real SQLite file."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from node.meter import Meter, Usage
from tests.meter_support import start

REPO = Path(__file__).resolve().parents[1]


def run(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args, "--db", str(db)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(db: Path, *args: str) -> str:
    done = run(db, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def snapshot(db: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def test_api_keys_create_list_delete(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    created = json.loads(
        ok(db, "api-keys", "create", "--level", "llm", "--comment", "ci", "--org", "acme",
           "--expires-in", "30", "--json")
    )  # fmt: skip
    assert set(created) == {"id", "secret", "level", "comment", "org", "created", "expires"}
    assert created["secret"].startswith("llmn_") and created["level"] == "LLM"
    assert (created["comment"], created["org"]) == ("ci", "acme")
    assert created["created"].endswith("Z") and created["expires"] > created["created"]
    with Meter(db) as meter:
        assert meter.verify_key(created["secret"]).id == created["id"]

    listed = json.loads(ok(db, "api-keys", "list", "--json"))
    assert [k["id"] for k in listed] == [created["id"]]
    assert listed[0]["last_used"] is not None
    assert set(listed[0]) >= {"id", "level", "comment", "org", "created", "expires", "last_used"}
    table = ok(db, "api-keys", "list")
    assert created["id"] in table and "last used" in table
    for output in (table, json.dumps(listed)):
        assert created["secret"] not in output

    assert created["id"] in ok(db, "api-keys", "delete", created["id"])
    assert json.loads(ok(db, "api-keys", "list", "--json")) == []


def test_human_create_prints_the_secret_once(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    out = ok(db, "api-keys", "create", "--level", "ADMIN")
    secret = next(w for w in out.split() if w.startswith("llmn_"))
    with Meter(db) as meter:
        key = meter.verify_key(secret)
    assert key is not None and key.level == "ADMIN" and key.id in out


def test_prices_set_and_list(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    set_out = json.loads(
        ok(db, "prices", "set", "smollm2-135m", "cpu", "--prompt", "19.78", "--completion",
           "167.66", "--json")
    )  # fmt: skip
    assert set_out == {
        "model": "smollm2-135m",
        "gpu_type": "cpu",
        "prompt_per_1m": "19.78",
        "cached_per_1m": None,
        "completion_per_1m": "167.66",
        "currency": "PLN",
    }
    ok(db, "prices", "set", "smollm2-135m", "cpu", "--prompt", "20", "--completion", "170")
    current = json.loads(ok(db, "prices", "list", "--json"))
    assert [(p["prompt_per_1m"], p["valid_until"]) for p in current] == [("20", None)]
    history = json.loads(ok(db, "prices", "list", "--history", "--json"))
    assert [p["prompt_per_1m"] for p in history] == ["19.78", "20"]
    table = ok(db, "prices", "list")
    assert "smollm2-135m" in table and "170" in table and "PLN" in table


@pytest.fixture
def billed_db(tmp_path: Path) -> Path:
    """The seed example: one request, 18 + 16 tokens at 19.78 / 167.66 PLN per 1M."""
    db = tmp_path / "m.db"
    with Meter(db) as meter:
        meter.set_price("smollm2-135m", "cpu", "19.78", "167.66")
        meter.open_request(start("req-1", key_id="key_a")).result()
        meter.finish("req-1", Usage(18, 0, 16), "ok").result()
        meter.open_request(start("req-2", key_id="key_b", gpu_type="L4")).result()
        meter.finish("req-2", Usage(5, 0, 5), "cancelled").result()
    return db


def test_billing_status_outputs(billed_db: Path) -> None:
    report = json.loads(ok(billed_db, "billing", "status", "--json"))
    assert report["currency"] == "PLN"
    assert report["total"] | {} == report["total"] and report["total"]["cost"] == "0.0030386"
    assert [(r["key_id"], r["cost"], r["no_price"]) for r in report["rows"]] == [
        ("key_a", "0.0030386", False),
        ("key_b", "0", True),
    ]
    table = ok(billed_db, "billing", "status")
    assert "0.003039 PLN" in table and "no price" in table and "TOTAL" in table
    rows = list(csv.DictReader(io.StringIO(ok(billed_db, "billing", "status", "--csv"))))
    assert [(r["key_id"], r["cost"]) for r in rows] == [("key_a", "0.0030386"), ("key_b", "0")]
    by_gpu = json.loads(ok(billed_db, "billing", "status", "--by", "gpu", "--json"))
    assert {r["gpu_type"] for r in by_gpu["rows"]} == {"cpu", "L4"}
    future = json.loads(ok(billed_db, "billing", "status", "--since", "2999-01-01", "--json"))
    assert future["total"]["requests"] == 0


def test_billing_requests_outputs(billed_db: Path) -> None:
    rows = json.loads(ok(billed_db, "billing", "requests", "--json"))
    assert [r["id"] for r in rows] == ["req-2", "req-1"]
    assert rows[1]["cost"] == "0.0030386" and rows[1]["currency"] == "PLN"
    only_ok = json.loads(ok(billed_db, "billing", "requests", "--status", "ok", "--json"))
    assert [r["id"] for r in only_ok] == ["req-1"]
    assert len(json.loads(ok(billed_db, "billing", "requests", "--limit", "1", "--json"))) == 1
    table = ok(billed_db, "billing", "requests", "--key", "key_a")
    assert "req-1" in table and "0.003039 PLN" in table and "req-2" not in table


BAD_INPUT = [
    (["api-keys", "create", "--level", "ROOT"], "--level"),
    (["api-keys", "create", "--level", "LLM", "--expires-in", "0"], "--expires-in"),
    (["api-keys", "create", "--level", "LLM", "--expires-in", "soon"], "--expires-in"),
    (["api-keys", "create", "--level", "LLM", "--expires-in", "nan"], "--expires-in"),
    (["api-keys", "create", "--level", "LLM", "--expires-in", "1e300"], "--expires-in"),
    (["api-keys", "delete", "key_nope"], "key_nope"),
    (["prices", "set", "m", "cpu", "--prompt", "-1", "--completion", "1"], "negative"),
    (["prices", "set", "m", "cpu", "--prompt", "1.1234567", "--completion", "1"], "6 decimal"),
    (["prices", "set", "m", "cpu", "--prompt", "1", "--completion", "cheap"], "--completion"),
    (["prices", "set", "m", "cpu", "--prompt", "1", "--completion", "1", "--currency", "zł"],
     "--currency"),
    (["prices", "set", "m", "cpu", "--prompt", "1"], "--completion"),
    (["billing", "status", "--since", "yesterday"], "--since"),
    (["billing", "status", "--until", "2026-13-01"], "--until"),
    (["billing", "status", "--by", "week"], "--by"),
    (["billing", "status", "--until", "9999-12-31"], "out of range"),
    (["billing", "status", "--json", "--csv"], "--csv"),
    (["billing", "status", "--since", "2026-02-01", "--until", "2026-01-01"], "--since"),
    (["billing", "requests", "--status", "done"], "--status"),
    (["billing", "requests", "--limit", "0"], "--limit"),
    (["billing", "requests", "--limit", "99999999999999999999"], "--limit"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "named"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    billed_db: Path, args: list[str], named: str
) -> None:
    before = snapshot(billed_db)
    done = run(billed_db, *args)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), done.stderr
    assert named in lines[0]
    assert snapshot(billed_db) == before


def test_mixed_currencies_are_refused_in_one_line(billed_db: Path) -> None:
    with Meter(billed_db) as meter:
        meter.set_price("smollm2-135m", "L4", "1", "1", "EUR")
        meter.open_request(start("req-3", gpu_type="L4")).result()
        meter.finish("req-3", Usage(1, 0, 1), "ok").result()
    done = run(billed_db, "billing", "status")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "EUR, PLN" in done.stderr and "--currency" in done.stderr
    eur = json.loads(ok(billed_db, "billing", "status", "--currency", "eur", "--json"))
    assert eur["currency"] == "EUR" and eur["total"]["cost"] == "0.000002"


def test_a_database_that_cannot_be_opened(tmp_path: Path) -> None:
    done = run(tmp_path / "missing" / "m.db", "api-keys", "list")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--db" in done.stderr and "cannot open" in done.stderr
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n" * 100)
    done = run(notes, "billing", "status")
    assert done.returncode == 2 and "not a database" in done.stderr
    assert notes.read_text().startswith("not a database")


def test_bad_input_on_a_new_path_creates_no_database(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    assert (
        run(db, "prices", "set", "m", "cpu", "--prompt", "x", "--completion", "1").returncode == 2
    )
    assert not db.exists()


def test_reads_do_not_wait_for_a_busy_writer(billed_db: Path) -> None:
    """The server holds the write lock most of the time under load; reports still answer."""
    writer = sqlite3.connect(billed_db, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE requests SET user = 'x'")  # uncommitted: invisible to readers
        # A command that needed the write lock would fail after the busy timeout (exit != 0).
        report = json.loads(ok(billed_db, "billing", "status", "--json"))
        keys = json.loads(ok(billed_db, "api-keys", "list", "--json"))
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert report["total"]["requests"] == 2 and keys == []
