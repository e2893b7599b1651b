"""Fleet export: rows/s from a local meter into PostgreSQL, and the catch-up time of a backlog.

A meter is filled with final rows (as a node that served while PostgreSQL was unreachable),
then one exporter pass sends them all, batch by batch, with the watermark moved after each
commit: the catch-up a node does when PostgreSQL returns. Target: >= 5,000 rows/s.

    python bench/fleet_bench.py [--rows 100000] [--batch 1000 5000] [--fleet-db URL]

Without --fleet-db a throwaway PostgreSQL is started (tests/fleet_support.py: Debian's initdb,
fsync off, as in the tests); with it, an empty database you own (tables are created).

Serving with export on vs off (target >= 0.98x at 8 clients):

    python bench/fleet_bench.py --serving [--rounds 3] [--clients 8] [--max-tokens 64]

starts `llm-node serve` from copies of one meter (one key), once in fleet mode (--fleet-db:
exporter and key replica running) and once without, one at a time and in alternating order
(so neither competes with the other for the CPU), and drives each with bench/http_bench.py's
streaming clients. It prints each round and the median of the per-round ratio on / off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # http_bench's clients

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


@contextlib.contextmanager
def serving_node(base_db: Path, fleet_url: str | None, args: argparse.Namespace) -> Iterator[Any]:
    """One `llm-node serve` on a fresh copy of `base_db`, in fleet mode when `fleet_url`."""
    import http_bench

    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    db = tmp / "meter.db"
    shutil.copy(base_db, db)
    registry = tmp / "models.toml"
    registry.write_text(
        f'[[model]]\nid = "{http_bench.MODEL_ID}"\npath = "{http_bench.gguf_path()}"\n'
        f"n_ctx = {args.n_ctx}\nparallel = {args.parallel}\n"
    )
    port = http_bench.free_port()
    cmd = [str(Path(sys.executable).with_name("llm-node")), "serve", "--port", str(port),
           "--db", str(db), "--models", str(registry), "--gpu-type", "cpu"]  # fmt: skip
    if fleet_url is not None:
        cmd += ["--fleet-db", fleet_url, "--node-id", f"bench-{uuid.uuid4().hex[:6]}"]
    name = "export-on" if fleet_url else "export-off"
    with http_bench.started(cmd, f"fleet-bench-{name}.log") as process:
        url = f"http://127.0.0.1:{port}"
        http_bench.wait_ready(url, "/health", process)
        yield http_bench.Target(name, url, args.secret, process.pid)
    shutil.rmtree(tmp, ignore_errors=True)


def serving(url: str, args: argparse.Namespace) -> None:
    """Tokens/s at `--clients` with export on vs off: both nodes up (an idle node costs next
    to nothing), loaded one at a time in alternating order, many short rounds; the median of
    the per-round ratios is robust to a box whose speed drifts (it is shared)."""
    import http_bench

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base.db"
        with Meter(base) as meter:
            _key, args.secret = meter.create_key("LLM")
        with serving_node(base, None, args) as off, serving_node(base, url, args) as on:
            ratios = []
            print(f"{'round':>5} {'export off tok/s':>17} {'export on tok/s':>16} {'on/off':>7}")
            for round_ in range(args.rounds):
                got: dict[str, float] = {}
                for target in (off, on) if round_ % 2 == 0 else (on, off):
                    result = asyncio.run(http_bench.run_level(target, args.clients, args))
                    if result.failures:
                        raise SystemExit(f"{target.name}: {result.failures} failed requests")
                    got[target.name] = result.tok_s
                ratios.append(got["export-on"] / got["export-off"])
                print(
                    f"{round_ + 1:>5} {got['export-off']:>17.1f} {got['export-on']:>16.1f}"
                    f" {ratios[-1]:>6.3f}x",
                    flush=True,
                )
            rows = on_rows(url)
        print(f"median on/off over {args.rounds} rounds: {statistics.median(ratios):.3f}x"
              f" at {args.clients} clients (target >= 0.98x); {rows} rows exported")  # fmt: skip


def on_rows(url: str) -> int:
    with connect(url) as conn:
        return conn.execute("SELECT count(*) FROM requests").fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serving", action="store_true", help="tokens/s, export on vs off")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=8192)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--sampling", default="full")
    parser.add_argument("--ban-tokens", type=lambda s: [int(x) for x in s.split(",") if x],
                        default=[0, 2, 4])  # fmt: skip
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
        if args.serving:
            serving(url, args)
            return
        print(f"{'batch':>6} {'rows':>8} {'catch-up s':>11} {'rows/s':>9}")
        for batch in args.batch:
            seconds = run(url, args.rows, batch)
            print(f"{batch:>6} {args.rows:>8} {seconds:>11.2f} {args.rows / seconds:>9.0f}")
    finally:
        if server is not None:
            server.remove()


if __name__ == "__main__":
    main()
