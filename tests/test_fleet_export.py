"""The exporter against a real PostgreSQL and a real meter: exactly once, through faults.

In-process and fast; tests/test_fleet_nodes.py runs the same faults with real `llm-node serve`
processes.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from node.fleet.exporter import Exporter
from node.meter import Meter, Usage
from tests.fleet_support import PostgresServer, free_port, new_database, query
from tests.meter_support import start

ROW = "request_id, status, prompt_tokens, cached_tokens, completion_tokens, cost_units, currency"


def meter_rows(path: Path) -> set[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        local = ROW.replace("request_id", "id")
        return set(conn.execute(f"SELECT {local} FROM requests WHERE status != 'running'"))
    finally:
        conn.close()


def fleet_rows(url: str) -> list[tuple[object, ...]]:
    return query(url, f"SELECT {ROW} FROM requests")


def traffic(meter: Meter, prefix: str, count: int) -> None:
    """`count` priced requests, finished ok (and one more left running)."""
    for i in range(count):
        rid = f"{prefix}{i}"
        meter.open_request(start(rid, prompt_tokens=7)).result()
        meter.finish(rid, Usage(7, 2, i + 1), "ok").result()
    meter.open_request(start(f"{prefix}-running", prompt_tokens=3)).result()


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def priced_meter(path: Path) -> Meter:
    meter = Meter(path)
    meter.set_price("smollm2-135m", "cpu", "1.25", "3.000001")
    return meter


def test_every_final_row_is_exported_once_with_its_counts_and_cost(
    tmp_path: Path, fleet_url: str
) -> None:
    with priced_meter(tmp_path / "a.db") as meter:
        traffic(meter, "a", 5)
        exporter = Exporter(meter, fleet_url, "node-a", batch=2)  # several batches
        assert exporter.export_pending() == 5
        assert exporter.export_pending() == 0  # nothing twice
        assert meter.export_state().exported_seq == 5
        assert meter.recover_interrupted() == 1  # the running row becomes final: exported too
        assert exporter.export_pending() == 1
    rows = fleet_rows(fleet_url)
    assert len(rows) == 6
    assert set(rows) == meter_rows(tmp_path / "a.db")
    assert {r[5] for r in rows if r[1] == "ok"} >= {7 * 1_250_000 + 1 * 3_000_001}
    nodes = query(fleet_url, "SELECT node_id, exported_seq FROM nodes")
    assert nodes == [("node-a", 6)]


def test_a_batch_committed_but_not_acknowledged_is_not_counted_twice(
    tmp_path: Path, fleet_url: str
) -> None:
    db = tmp_path / "a.db"
    with priced_meter(db) as meter:
        traffic(meter, "a", 4)
        assert Exporter(meter, fleet_url, "node-a").export_pending() == 4
    # As if the node died after PostgreSQL's COMMIT and before the watermark moved.
    conn = sqlite3.connect(db)
    conn.execute("UPDATE export_state SET exported_seq = 1")
    conn.commit()
    conn.close()
    with Meter(db) as meter:
        traffic(meter, "b", 2)
        assert Exporter(meter, fleet_url, "node-a").export_pending() == 5  # 3 again, 2 new
        assert meter.export_state().pending == 0
    rows = fleet_rows(fleet_url)
    assert len(rows) == 6 == len({r[0] for r in rows})
    assert set(rows) == meter_rows(db)


def test_postgres_down_rows_wait_and_catch_up_exactly_once(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    server = postgres  # stopped and started again: the session's server is back after it
    try:
        url = new_database(server)
        with priced_meter(tmp_path / "a.db") as meter:
            exporter = Exporter(meter, url, "node-a", interval_s=0.05, backoff_s=(0.05, 0.2))
            exporter.start()
            traffic(meter, "a", 3)
            wait_for(lambda: exporter.status().lag_rows == 0 and exporter.status().up, "export")
            server.stop()
            traffic(meter, "b", 4)  # metering goes on locally
            wait_for(lambda: not exporter.status().up, "the exporter to notice")
            wait_for(lambda: exporter.status().failures >= 2, "retries")
            down = exporter.status()
            assert down.lag_rows == 4 and down.lag_seconds > 0
            assert down.error
            server.start()
            wait_for(lambda: exporter.status().lag_rows == 0, "catch-up")
            up = exporter.status()
            assert up.up and up.error is None and up.last_success is not None
            assert up.lag_seconds == 0
            traffic(meter, "c", 1)
            exporter.stop()  # the last pass sends what finished just before
            assert meter.export_state().pending == 0
        rows = fleet_rows(url)
        assert len(rows) == 8 == len({r[0] for r in rows})
        assert set(rows) == meter_rows(tmp_path / "a.db")
    finally:
        if not server.started:
            server.start()


def test_unreachable_fleet_database_at_start_never_blocks_and_never_drops(tmp_path: Path) -> None:
    nobody_listens = f"postgresql://fleet@127.0.0.1:{free_port()}/fleet"
    with priced_meter(tmp_path / "a.db") as meter:
        traffic(meter, "a", 2)
        exporter = Exporter(meter, nobody_listens, "node-a", backoff_s=(0.05, 0.1))
        exporter.start()
        wait_for(lambda: exporter.status().failures >= 2, "failed attempts")
        assert exporter.status().lag_rows == 2
        assert "127.0.0.1" in (exporter.status().error or "")
        began = time.monotonic()
        exporter.stop(timeout_s=10)
        assert time.monotonic() - began < 10
        assert meter.export_state().exported_seq == 0  # nothing acknowledged, all kept
