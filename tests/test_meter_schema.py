"""Opening the database: WAL, migrations recorded once, concurrent first opens, bad files."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from node.meter import Meter, MeterUnavailable
from node.meter.schema import migrations
from tests.meter_support import start


def test_fresh_database_is_wal_and_fully_migrated(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    Meter(db).close()
    Meter(db).close()  # reopening applies nothing twice
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        applied = conn.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = ? ORDER BY id",
            (migrations.name,),
        ).fetchall()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert [name for (name,) in applied] == [
        "m001_api_keys",
        "m002_prices",
        "m003_requests",
        "m004_controls",
        "m005_export_seq",
        "m006_cached_prompt_prices",
        "m007_fleet_sync",
    ]
    assert {"api_keys", "prices", "requests", "orgs"} <= tables


def test_concurrent_first_opens_migrate_once(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    errors: list[BaseException] = []

    def open_and_write(i: int) -> None:
        try:
            with Meter(db) as meter:
                meter.create_key("LLM", comment=str(i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_and_write, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with Meter(db) as meter:
        assert sorted(k.comment for k in meter.list_keys()) == [str(i) for i in range(6)]


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not sqlite at all\n" * 200)
    with pytest.raises(MeterUnavailable, match="not a database"):
        Meter(path)
    assert path.read_text().startswith("not sqlite")


def test_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(MeterUnavailable, match="cannot open"):
        Meter(tmp_path / "no" / "such" / "m.db")


def test_closed_meter_refuses_work(tmp_path: Path) -> None:
    meter = Meter(tmp_path / "m.db")
    meter.close()
    with pytest.raises(MeterUnavailable, match="closed"):
        meter.list_keys()
    with pytest.raises(MeterUnavailable, match="closed"):
        meter.open_request(start("r1")).result()
