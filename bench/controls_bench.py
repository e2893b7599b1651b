"""Operator controls' cost: a key with rate limits and a budget vs a key without, same node.

Two measurements (issue 13's targets: >= 0.98x tokens/s at 8 streaming clients, admission p99
added latency < 2 ms):

1. HTTP: one `llm-node serve` on the real model; rounds alternate between the plain key and
   a key with rpm, tpm, max-parallel, a key budget and an org budget (all far above what the
   run uses, so nothing is refused), 8 streaming clients each; tokens/s per round.
2. Admission, in process: `Gate.admit` + finish on a real meter file, 8 concurrent tasks,
   for a plain key and for the limited key; p50 / p99 of the time admission takes.

    .venv/bin/python bench/controls_bench.py [--rounds 3] [--threads 1] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from http_bench import (
    MODEL_ID,
    Target,
    free_port,
    gguf_path,
    run_level,
    started,
    wait_ready,
)

from node.admission import Gate
from node.meter import Limits, Meter, RequestStart, Usage
from node.meter.budgets import parse_budget
from node.meter.limits import RateLimiter

LIMITS = ["--rpm", "1000000", "--tpm", "1000000000", "--max-parallel", "64"]
BUDGET = ["--budget", "1000000", "--budget-period", "month"]


def _cli(db: Path, *args: str) -> str:
    llm_node = str(Path(sys.executable).with_name("llm-node"))
    done = subprocess.run(
        [llm_node, *args, "--db", str(db)], capture_output=True, text=True, check=True
    )
    return done.stdout


@contextlib.contextmanager
def node(args: argparse.Namespace) -> Iterator[tuple[Target, Target]]:
    tmp = Path(tempfile.mkdtemp(prefix="controls-bench-"))
    db = tmp / "meter.db"
    plain = json.loads(_cli(db, "api-keys", "create", "--level", "LLM", "--json"))["secret"]
    limited = json.loads(
        _cli(
            db, "api-keys", "create", "--level", "LLM", "--org", "bench", *LIMITS, *BUDGET, "--json"
        )
    )["secret"]
    _cli(db, "orgs", "set", "bench", *BUDGET)
    _cli(db, "prices", "set", MODEL_ID, "cpu", "--prompt", "19.78", "--completion", "167.66")
    registry = tmp / "models.toml"
    registry.write_text(
        f'[[model]]\nid = "{MODEL_ID}"\npath = "{gguf_path()}"\nn_ctx = {args.n_ctx}\n'
        f"parallel = {args.parallel}\n" + (f"n_threads = {args.threads}\n" if args.threads else "")
    )
    port = free_port()
    llm_node = str(Path(sys.executable).with_name("llm-node"))
    cmd = [
        llm_node,
        "serve",
        "--port",
        str(port),
        "--db",
        str(db),
        "--models",
        str(registry),
        "--gpu-type",
        "cpu",
    ]
    with started(cmd, "controls-bench-node.log") as process:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, "/health", process)
        yield (
            Target("plain key", url, plain, process.pid),
            Target("limited key", url, limited, process.pid),
        )


async def admission(meter: Meter, key_id: str, tag: str, limits: Limits, n: int) -> list[float]:
    gate = Gate(meter, RateLimiter())
    times: list[float] = []

    async def worker(w: int) -> None:
        for i in range(n):
            start = RequestStart(
                f"{key_id}-{tag}-{w}-{i}",
                key_id,
                "bench" if limits else None,  # the limited key's org has a budget too
                "chat.completions",
                MODEL_ID,
                "Q4_1",
                "cpu",
                "cpu",
                None,
                prompt_tokens=20,
            )
            began = time.perf_counter()
            admitted = await gate.admit(start, limits, 20, 64)
            times.append(time.perf_counter() - began)
            admitted.settle(84)
            await asyncio.wrap_future(meter.finish(start.id, Usage(20, 0, 64), "ok"))

    await asyncio.gather(*(worker(w) for w in range(8)))
    return times


def bench_admission(requests: int, rounds: int) -> dict[str, list[list[float]]]:
    """Admission times per round, the two keys interleaved (a shared box drifts)."""
    tmp = Path(tempfile.mkdtemp(prefix="controls-admit-"))
    out: dict[str, list[list[float]]] = {"plain key": [], "limited key": []}
    with Meter(tmp / "m.db") as meter:
        meter.set_price(MODEL_ID, "cpu", "19.78", "167.66")
        meter.set_org("bench", parse_budget("1000000", "month"))
        plain, _ = meter.create_key("LLM", org=None)
        limited, _ = meter.create_key(
            "LLM",
            org="bench",
            limits=Limits(1_000_000, 10**9, 64),
            budget=parse_budget("1000000", "month"),
        )
        for round_ in range(rounds + 1):  # round 0 warms up and is dropped
            pair = [("plain key", plain.id, Limits()), ("limited key", limited.id, limited.limits)]
            for name, key_id, limits in pair if round_ % 2 else pair[::-1]:
                times = asyncio.run(admission(meter, key_id, f"r{round_}", limits, requests))
                if round_:
                    out[name].append(times)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=8192)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--admissions", type=int, default=250, help="per task, 8 tasks")
    args = parser.parse_args()
    args.sampling, args.ban_tokens = "full", [0, 2, 4]

    admit = bench_admission(args.admissions, args.rounds)
    tok_s: dict[str, list[float]] = {"plain key": [], "limited key": []}
    with node(args) as (plain, limited):
        for round_ in range(args.rounds):
            pair = (plain, limited) if round_ % 2 == 0 else (limited, plain)
            for target in pair:
                result = asyncio.run(run_level(target, args.clients, args))
                if result.failures:
                    raise SystemExit(f"{target.name}: {result.failures} failed requests")
                tok_s[target.name].append(result.tok_s)
                print(f"  round {round_}: {target.name}: {result.tok_s:.1f} tok/s", file=sys.stderr)
    ratios = [lim / pl for pl, lim in zip(tok_s["plain key"], tok_s["limited key"], strict=True)]
    print(
        f"{'key':<12} {'tok/s best':>10} {'tok/s median':>12} {'admit p50':>10} {'admit p99':>10}"
    )
    for name in ("plain key", "limited key"):
        p50 = statistics.median(pct(times, 0.5) for times in admit[name]) * 1e3
        p99 = statistics.median(pct(times, 0.99) for times in admit[name]) * 1e3
        best, median = max(tok_s[name]), statistics.median(tok_s[name])
        print(f"{name:<12} {best:>10.1f} {median:>12.1f} {p50:>8.3f}ms {p99:>8.3f}ms")
    added = [
        (pct(lim, 0.99) - pct(pl, 0.99)) * 1e3
        for pl, lim in zip(admit["plain key"], admit["limited key"], strict=True)
    ]
    print(
        f"limited / plain tok/s: median per round {statistics.median(ratios):.3f}x; admission"
        f" p99 added: median per round {statistics.median(added):.3f} ms"
        " (medians over interleaved rounds)"
    )


if __name__ == "__main__":
    main()
