"""Meter write path: rows opened + finished per second at 8 concurrent callers, and the latency
`open_request` adds (p50, p99), as the service sees it (asyncio tasks awaiting the futures).

Peers measured in the same run: the same meter without group commit (one transaction per
write, the ratio's base), each with synchronous=FULL (fsync per commit) instead of the default
NORMAL, and a thread hand-off with no SQLite at all (the scheduling floor of this machine).
Targets for the default: >= 2,000 rows/s, p99 open < 5 ms.

    python bench/meter_bench.py [--rows 4000] [--callers 8]
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import statistics
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from node.meter import Meter, RequestStart, Usage


def _start(request_id: str) -> RequestStart:
    return RequestStart(
        id=request_id,
        key_id="key_bench",
        org="bench",
        endpoint="/v1/chat/completions",
        model="smollm2-135m",
        quant_type="Q4_1",
        gpu_type="cpu",
        gpu_name="cpu",
        user=None,
        prompt_tokens=18,
    )


async def _caller(meter: Meter, worker: int, rows: int, latencies: list[float]) -> None:
    for i in range(rows):
        rid = f"bench-{worker}-{i}"
        began = time.perf_counter()
        await asyncio.wrap_future(meter.open_request(_start(rid)))
        latencies.append(time.perf_counter() - began)
        await asyncio.wrap_future(meter.finish(rid, Usage(18, 0, 16), "ok"))


async def _drive(meter: Meter, callers: int, rows: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    per_caller = rows // callers
    began = time.perf_counter()
    await asyncio.gather(*(_caller(meter, w, per_caller, latencies) for w in range(callers)))
    return time.perf_counter() - began, latencies


class _NoDiskMeter:
    """Peer: the same thread hand-off (queue → thread → future) with no SQLite at all: the
    floor this machine's scheduling puts under any writer-thread design."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Future[None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (future := self._queue.get()) is not None:
            future.set_result(None)

    def _submit(self) -> Future[None]:
        future: Future[None] = Future()
        self._queue.put(future)
        return future

    def open_request(self, start: RequestStart) -> Future[None]:
        return self._submit()

    def finish(self, request_id: str, usage: Usage, status: str) -> Future[None]:
        return self._submit()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


def measure_floor(callers: int, rows: int) -> dict:
    fake = _NoDiskMeter()
    try:
        elapsed, latencies = asyncio.run(_drive(fake, callers, rows))  # type: ignore[arg-type]
    finally:
        fake.close()
    return _summary("thread hand-off, no disk", elapsed, latencies, len(latencies))


def _summary(name: str, elapsed: float, latencies: list[float], rows: int) -> dict:
    latencies.sort()
    return {
        "name": name,
        "rows_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "rows": rows,
    }


def measure(folder: Path, name: str, callers: int, rows: int, **options: object) -> dict:
    with Meter(folder / f"{name}.db", **options) as meter:  # type: ignore[arg-type]
        meter.set_price("smollm2-135m", "cpu", "19.78", "167.66")
        asyncio.run(_drive(meter, callers, callers * 10))  # warm-up
        elapsed, latencies = asyncio.run(_drive(meter, callers, rows))
        done = meter.billing_status()["total"]["requests"]
    return _summary(name, elapsed, latencies, done)


def measure_verify(folder: Path, calls: int = 20_000) -> dict:
    """`verify_key` (every request's auth) against a plain indexed SELECT on the same file."""
    import sqlite3

    with Meter(folder / "keys.db") as meter:
        for _ in range(100):
            meter.create_key("LLM")
        _, secret = meter.create_key("LLM")
        timings = []
        for _ in range(calls):
            began = time.perf_counter()
            meter.verify_key(secret)
            timings.append(time.perf_counter() - began)
        conn = sqlite3.connect(folder / "keys.db")
        peer = []
        for _ in range(calls):
            began = time.perf_counter()
            conn.execute("SELECT * FROM api_keys WHERE secret_sha256 = ?", ("0" * 64,)).fetchone()
            peer.append(time.perf_counter() - began)
        conn.close()
    timings.sort()
    peer.sort()
    return {
        "p50_us": statistics.median(timings) * 1e6,
        "p99_us": timings[int(calls * 0.99)] * 1e6,
        "peer_p50_us": statistics.median(peer) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--callers", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meter-bench-") as tmp:
        folder = Path(tmp)
        results = [
            measure(folder, "group commit, NORMAL*", args.callers, args.rows),
            measure(folder, "group commit, FULL", args.callers, args.rows, synchronous="FULL"),
            measure(folder, "no group commit, NORMAL", args.callers, args.rows, max_batch=1),
            measure(
                folder, "no group commit, FULL", args.callers, args.rows,
                max_batch=1, synchronous="FULL",
            ),
            measure_floor(args.callers, args.rows),
        ]  # fmt: skip
        verify = measure_verify(folder)
    base = results[2]["rows_per_s"]
    print(f"meter write path: {args.callers} concurrent callers, {args.rows} rows (open + finish)")
    print(f"{'configuration':<24} {'rows/s':>9} {'vs peer':>8} {'open p50':>9} {'open p99':>9}")
    for r in results:
        print(
            f"{r['name']:<24} {r['rows_per_s']:>9.0f} {r['rows_per_s'] / base:>7.2f}x"
            f" {r['p50_ms']:>7.2f}ms {r['p99_ms']:>7.2f}ms"
        )
    print(
        f"verify_key: p50 {verify['p50_us']:.1f} us, p99 {verify['p99_us']:.1f} us"
        f" (peer: bare indexed SELECT p50 {verify['peer_p50_us']:.1f} us,"
        f" {verify['p50_us'] / verify['peer_p50_us']:.1f}x)"
    )
    main_result = results[0]
    print(
        "* the default. "
        f"targets: >= 2000 rows/s: {'met' if main_result['rows_per_s'] >= 2000 else 'MISSED'};"
        f" p99 open < 5 ms: {'met' if main_result['p99_ms'] < 5 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
