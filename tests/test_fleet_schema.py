"""Fleet mode basics: PostgreSQL migrations, the local export sequence, a stable node id."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlite_utils import Database

from node.fleet.connect import check_url, connect, shown
from node.fleet.schema import MIGRATIONS, MIGRATIONS_TABLE, migrate
from node.meter import Meter, Usage
from node.meter.export import NodeIdConflict
from node.meter.schema import migrations
from tests.fleet_support import query
from tests.meter_support import Clock, start


def test_postgres_migrations_apply_once_in_order(fleet_url: str) -> None:
    with connect(fleet_url) as conn:
        assert migrate(conn) == [name for name, _ in MIGRATIONS]
        assert migrate(conn) == []  # idempotent: nothing applied twice
    names = query(fleet_url, f"SELECT name FROM {MIGRATIONS_TABLE} ORDER BY applied_at, name")
    assert [n for (n,) in names] == [name for name, _ in MIGRATIONS]
    tables = query(fleet_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert {"nodes", "requests", MIGRATIONS_TABLE} <= {t for (t,) in tables}


def test_nodes_starting_together_migrate_once(fleet_url: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(4)

    def node() -> None:
        try:
            with connect(fleet_url) as conn:
                gate.wait()
                results.append(migrate(conn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=node) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(len(r) for r in results) == [0, 0, 0, len(MIGRATIONS)]


def test_fleet_urls_are_checked_and_shown_without_password() -> None:
    assert shown("postgresql://bill:s3cret@db:5432/fleet") == "postgresql://bill:***@db:5432/fleet"
    assert shown("postgresql://bill@db/fleet") == "postgresql://bill@db/fleet"
    assert check_url("postgres://db/fleet?sslmode=verify-full")
    for bad in ("mysql://db/fleet", "host=db dbname=fleet password=s3cret", ""):
        with pytest.raises(ValueError) as info:
            check_url(bad)
        assert "s3cret" not in str(info.value)


def test_node_id_is_generated_once_and_kept_in_the_meter(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    with Meter(db) as meter:
        generated = meter.claim_node_id()
    with Meter(db) as meter:
        assert meter.claim_node_id() == generated
    with Meter(tmp_path / "other.db") as meter:
        assert meter.claim_node_id() != generated  # each meter is its own node


def test_a_chosen_node_id_is_kept_and_cannot_change_after_export(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    with Meter(db) as meter:
        assert meter.claim_node_id("gpu-07") == "gpu-07"
    with Meter(db) as meter:
        assert meter.claim_node_id() == "gpu-07"
        with pytest.raises(ValueError, match="node id"):
            meter.claim_node_id("bad id!")
        meter.open_request(start("r1")).result()
        meter.finish("r1", Usage(1, 0, 1), "ok").result()
        meter.acknowledge_export(1).result()
        with pytest.raises(NodeIdConflict, match="gpu-07"):
            meter.claim_node_id("gpu-08")
        assert meter.claim_node_id("gpu-07") == "gpu-07"


def test_every_row_gets_the_next_seq_when_it_becomes_final(tmp_path: Path) -> None:
    clock = Clock()
    with Meter(tmp_path / "m.db", clock=clock) as meter:
        for rid in ("a", "b", "c", "d"):
            meter.open_request(start(rid, prompt_tokens=5)).result()
            clock.advance(1)
        assert meter.export_state().last_seq == 0  # running rows have no seq
        meter.finish("c", Usage(5, 0, 2), "ok").result()
        meter.finish("a", Usage(5, 0, 0), "cancelled").result()
        meter.finish("c", Usage(9, 0, 9), "ok").result()  # a second finish changes nothing
        assert meter.recover_interrupted() == 2  # b and d, backdated, numbered after a and c
        rows = meter.exportable_rows(0, 10)
        assert [(r[0], r[1], r[9]) for r in rows] == [
            (1, "c", "ok"),
            (2, "a", "cancelled"),
            (3, "b", "interrupted"),
            (4, "d", "interrupted"),
        ]
        assert [r[1] for r in meter.exportable_rows(2, 10)] == ["b", "d"]
        assert meter.export_state().last_seq == 4
        meter.acknowledge_export(3).result()
        meter.acknowledge_export(2).result()  # never backwards
        meter.acknowledge_export(9).result()  # never past the last row
        state = meter.export_state()
        assert (state.exported_seq, state.pending) == (3, 1)


def test_rows_final_before_the_migration_are_numbered_oldest_first(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    clock = Clock()
    with Meter(db, clock=clock) as meter:
        for rid in ("x", "y", "z"):
            meter.open_request(start(rid)).result()
        meter.finish("y", Usage(1, 0, 1), "ok").result()
        clock.advance(5)
        meter.finish("x", Usage(1, 0, 1), "error").result()
    # Back to the schema before the export: drop what m005 added, as an older node left it.
    conn = sqlite3.connect(db)
    conn.executescript(
        "DROP TRIGGER requests_seq_final; DROP TRIGGER requests_seq_new;"
        " DROP INDEX requests_seq; DROP TABLE export_state;"
        " ALTER TABLE requests DROP COLUMN seq;"
        f" DELETE FROM _sqlite_migrations WHERE migration_set = '{migrations.name}'"
        " AND name = 'm005_export_seq';"
    )
    conn.close()
    assert "m005_export_seq" in {m.name for m in migrations.pending(Database(db))}
    with Meter(db, clock=clock) as meter:
        assert [(r[0], r[1]) for r in meter.exportable_rows(0, 10)] == [(1, "y"), (2, "x")]
        meter.finish("z", Usage(1, 0, 1), "ok").result()
        assert meter.export_state().last_seq == 3


def test_a_later_table_rebuild_cannot_silently_stop_the_numbering(tmp_path: Path) -> None:
    """A migration after m005 that rebuilds `requests` (SQLite drops a table's triggers with
    it) gets the export triggers back in its own transaction."""
    db = tmp_path / "m.db"
    Meter(db).close()

    @migrations(name="zz_test_rebuild")
    def rebuild(database: Database) -> None:
        database.execute("CREATE TABLE requests_new AS SELECT * FROM requests")
        database.execute("DROP TABLE requests")
        database.execute("ALTER TABLE requests_new RENAME TO requests")

    try:
        with Meter(db) as meter:
            meter.open_request(start("r1")).result()
            meter.finish("r1", Usage(1, 0, 1), "ok").result()
            assert [r[:2] for r in meter.exportable_rows(0, 10)] == [(1, "r1")]
    finally:
        migrations._migrations.pop()  # only this test's database saw it


def test_a_row_inserted_final_gets_its_seq_too(tmp_path: Path) -> None:
    """A request a rate limit refused is written `rejected` at once, never `running`."""
    with Meter(tmp_path / "m.db") as meter:
        meter.reject(start("refused", prompt_tokens=4)).result()
        assert [(r[0], r[1], r[9]) for r in meter.exportable_rows(0, 10)] == [
            (1, "refused", "rejected")
        ]
