"""Fleet export: rows/s from a local meter into PostgreSQL, and the catch-up time of a backlog.

A meter is filled with final rows (as a node that served while PostgreSQL was unreachable),
then one exporter pass sends them all, batch by batch, with the watermark moved after each
commit: the catch-up a node does when PostgreSQL returns. Target: >= 5,000 rows/s.

    python bench/fleet_bench.py [--rows 100000] [--batch 1000 5000] [--fleet-db URL]

Without --fleet-db a throwaway PostgreSQL is started (tests/fleet_support.py: Debian's initdb,
fsync off, as in the tests); with it, an empty database you own (tables are created).

Serving with export on vs off (target >= 0.98x at 8 clients): start two nodes with copies of one
meter (so one key works on both), one with --fleet-db, and compare them in one run:
    bench/http_bench.py --node-url http://127.0.0.1:8002 --node-key KEY --clients 8 \
        --peer export-off=http://127.0.0.1:8001 --peer-key KEY
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.fleet.connect import connect
from node.fleet.exporter import Exporter
from node.meter import Meter


def backlog(path: Path, rows: int) -> None:
    """`rows` final priced rows straight into the meter file; its triggers number them."""
    Meter(path).close()  # create and migrate
    conn = sqlite3.connect(path)
    t0 = time.time_ns() // 1000
    with conn:
        conn.executemany(
            "INSERT INTO requests (id, key_id, org, endpoint, model, quant_type, gpu_type,"
            " gpu_name, prompt_tokens, cached_tokens, completion_tokens, started, finished,"
            " prompt_price_micro, completion_price_micro, currency, cost_units, status)"
            " VALUES (?, 'key_bench', 'bench', 'chat.completions', 'smollm2-135m', 'Q4_1', 'cpu',"
            " 'cpu', 120, 32, 64, ?, ?, 2500000, 10000000, 'PLN', ?, 'ok')",
            (
                (uuid.uuid4().hex, t0 + i, t0 + i + 500_000, 120 * 2_500_000 + 64 * 10_000_000)
                for i in range(rows)
            ),
        )
    conn.close()


def run(url: str, rows: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        backlog(path, rows)
        with Meter(path) as meter:
            exporter = Exporter(meter, url, f"bench-{uuid.uuid4().hex[:6]}", batch=batch)
            began = time.perf_counter()
            sent = exporter.export_pending()
            seconds = time.perf_counter() - began
            assert sent == rows and meter.export_state().pending == 0
    with connect(url) as conn:
        conn.execute("TRUNCATE requests")
        conn.commit()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--fleet-db", help="an empty PostgreSQL database (default: throwaway)")
    args = parser.parse_args()
    server = None
    url = args.fleet_db
    if url is None:
        from tests.fleet_support import PostgresServer, new_database

        server = PostgresServer()
        server.start()
        url = new_database(server)
    try:
        print(f"{'batch':>6} {'rows':>8} {'catch-up s':>11} {'rows/s':>9}")
        for batch in args.batch:
            seconds = run(url, args.rows, batch)
            print(f"{batch:>6} {args.rows:>8} {seconds:>11.2f} {args.rows / seconds:>9.0f}")
    finally:
        if server is not None:
            server.remove()


if __name__ == "__main__":
    main()
