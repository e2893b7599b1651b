"""Real-traffic benchmark: llm-node against llama-server (and optionally llama-cpp-python's
server) on workloads that look like users, one server alive at a time, rounds alternating.

Workloads, run in this order against each server it starts (so "repeat" finds what "distinct"
left behind, as a server in production would):

- distinct: `--prompts` different prompts of about 30-700 tokens, each with its own max_tokens
  (16-256), sent by `--clients` concurrent clients;
- chat: `--users` users (more than the slots), each a `--turns`-turn conversation behind one
  shared ~250-word system prompt, every turn sending the whole history;
- repeat: the distinct prompts asked again, by the same clients.

Every request streams, spells out the same sampler settings (whole vocabulary, temperature
0.7) and bans the end-of-generation tokens, so each server generates exactly max_tokens. The
node runs with auth and meter on. Reported per workload and server: completion tokens/s, time
to first token p50/p99, inter-token latency p50/p99, RSS after the workload, and the median
over rounds of llm-node's tok/s divided by the peer's in the same round.

    bash bench/build_llama_server.sh    # once, ~10 min; prints the binary's path
    .venv/bin/python bench/traffic_bench.py --rounds 2
    .venv/bin/python bench/traffic_bench.py --workloads distinct --prompts 8 --rounds 1
    .venv/bin/python bench/traffic_bench.py --variant --kv-unified \
        --llama-cpp-python --llama-cpp-python-python /tmp/lcpp/bin/python

`--variant` adds a second llm-node with extra serve options (ratios stay against the first);
llama-cpp-python's server needs its [server] extra, best in a venv of its own:
`python3 -m venv /tmp/lcpp && /tmp/lcpp/bin/pip install llama-cpp-python[server]` (or the wheel
scripts/setup.sh cached, plus fastapi, uvicorn, sse-starlette, pydantic-settings,
starlette-context).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_bench import (  # a sibling script, not a package
    MODEL_ID,
    Target,
    rss_mib,
    serve_metered_node,
    start_llama_cpp_python,
    start_llama_server,
    threads_field,
)

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("distinct", "chat", "repeat")
BAN = {"0": -100, "2": -100, "4": -100}  # SmolLM2: <|endoftext|>, <|im_end|>, <reponame>
SAMPLER = {"temperature": 0.7, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
# A small vocabulary of common words: about 1.3 SmolLM2 tokens each.
_TEXT = (
    "the ship harbor river mountain lantern keeper storm village market bread story garden "
    "winter summer morning evening window letter friend teacher student engine signal bridge "
    "forest animal music silver copper paper number planet ocean island road city house"
)
WORDS = _TEXT.split()
SYSTEM = (
    "You are a patient, careful assistant for a small harbor town. You answer questions about "
    "the ferry timetable, the weather at sea, the fish market, the lighthouse, local history "
    "and the town's festivals. Keep answers short and concrete, use plain words, and when you "
    "are not sure, say so and suggest who in town might know. Never invent ferry times. "
) * 5  # about 250 words


@dataclass
class Sample:
    tokens: int
    ttft: float | None
    gaps: list[float]


@dataclass
class Result:
    target: str
    workload: str
    seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    rss_mib: float | None = None
    failures: int = 0

    @property
    def tok_s(self) -> float:
        return sum(s.tokens for s in self.samples) / self.seconds if self.seconds else 0.0

    def ttft(self, q: float) -> float:
        return _pct([s.ttft for s in self.samples if s.ttft is not None], q)

    def itl(self, q: float) -> float:
        return _pct([g for s in self.samples for g in s.gaps], q)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def distinct_prompts(n: int, seed: int = 12) -> list[tuple[str, int]]:
    """(prompt, max_tokens): about 30-700 tokens (~1.3 tokens a word), max_tokens 16-256."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.randint(22, 540)
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        out.append((f"Request {i}: continue this text. {text}", rng.randint(16, 256)))
    return out


async def stream_chat(
    client: httpx.AsyncClient, target: Target, messages: list[dict], max_tokens: int, seed: int
) -> tuple[Sample, str]:
    body = {
        "model": MODEL_ID, "messages": messages, "max_tokens": max_tokens, **SAMPLER,
        "seed": seed, "logit_bias": BAN, "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    headers = {"Authorization": f"Bearer {target.api_key}"}
    began = time.perf_counter()
    stamps: list[float] = []
    text: list[str] = []
    usage: int | None = None
    async with client.stream(
        "POST", f"{target.url}/v1/chat/completions", json=body, headers=headers
    ) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{target.name}: HTTP {resp.status_code}: {await resp.aread()!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]["completion_tokens"]
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    stamps.append(time.perf_counter())
                    text.append(piece)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    ttft = stamps[0] - began if stamps else None
    return Sample(usage if usage is not None else len(stamps), ttft, gaps), "".join(text)


async def retrying(call: Callable[[], object]):
    try:
        return await call()
    except httpx.RemoteProtocolError:  # a keep-alive connection the server had closed
        return await call()


async def run_distinct(target: Target, args: argparse.Namespace, name: str) -> Result:
    result = Result(target.name, name)
    queue = list(enumerate(distinct_prompts(args.prompts)))
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(timeout=900, limits=limits) as client:

        async def worker() -> None:
            while queue:
                i, (prompt, max_tokens) = queue.pop(0)
                messages = [{"role": "user", "content": prompt}]
                try:
                    sample, _ = await retrying(
                        lambda m=messages, k=max_tokens, s=i: stream_chat(client, target, m, k, s)
                    )
                    result.samples.append(sample)
                except Exception as exc:
                    result.failures += 1
                    print(f"  {target.name}: {exc}", file=sys.stderr)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.clients)))
        result.seconds = time.perf_counter() - began
    return result


async def run_chat(target: Target, args: argparse.Namespace) -> Result:
    result = Result(target.name, "chat")
    limits = httpx.Limits(max_connections=args.users + 4)
    async with httpx.AsyncClient(timeout=900, limits=limits) as client:

        async def user(u: int) -> None:
            rng = random.Random(1000 + u)
            history = [{"role": "system", "content": SYSTEM}]
            for turn in range(args.turns):
                words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40)))
                history.append({"role": "user", "content": f"User {u}, turn {turn}: {words}?"})
                try:
                    sample, reply = await retrying(
                        lambda h=list(history), s=u * 10 + turn: stream_chat(
                            client, target, h, args.chat_max_tokens, s
                        )
                    )
                except Exception as exc:
                    result.failures += 1
                    print(f"  {target.name}: {exc}", file=sys.stderr)
                    return
                result.samples.append(sample)
                history.append({"role": "assistant", "content": reply})

        began = time.perf_counter()
        await asyncio.gather(*(user(u) for u in range(args.users)))
        result.seconds = time.perf_counter() - began
    return result


@contextlib.contextmanager
def start_node(args: argparse.Namespace, extra: list[str], name: str) -> Iterator[Target]:
    """llm-node with auth and meter on (a fresh meter database and key)."""
    fields = f"n_ctx = {args.n_ctx}\nparallel = {args.parallel}\n" + threads_field(args.threads)
    with serve_metered_node("traffic-bench", fields, [*args.node_args, *extra]) as target:
        yield dataclasses.replace(target, name=name)


async def bench_target(target: Target, args: argparse.Namespace) -> list[Result]:
    results = []
    for name in args.workloads:
        if name == "chat":
            result = await run_chat(target, args)
        else:
            result = await run_distinct(target, args, name)
        result.rss_mib = rss_mib(target.pid)
        print(
            f"  {target.name:<16} {name:<8} {result.tok_s:7.1f} tok/s  TTFT p50 "
            f"{result.ttft(0.5) * 1000:6.0f} ms  ITL p50 {result.itl(0.5) * 1000:5.1f} ms",
            file=sys.stderr,
        )
        results.append(result)
    return results


def print_table(rounds: dict[tuple[str, str], list[Result]], args: argparse.Namespace) -> None:
    """Each target's median round per workload, and llm-node's per-round median ratio."""
    clients = {"distinct": args.clients, "repeat": args.clients, "chat": args.users}
    header = (
        "| workload | clients | target | tok/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 "
        "| RSS MiB | fail | llm-node/this (median/round) |"
    )
    print(header)
    print("|" + "---|" * 11)
    targets = sorted({t for t, _ in rounds}, key=lambda t: (t != "llm-node", t))
    for workload in args.workloads:
        for target in targets:
            rs = rounds.get((target, workload), [])
            if not rs:
                continue
            mid = sorted(rs, key=lambda r: r.tok_s)[len(rs) // 2]
            node = rounds.get(("llm-node", workload), [])
            ratios = [n.tok_s / t.tok_s for n, t in zip(node, rs, strict=False) if t.tok_s]
            ratio = f"{statistics.median(ratios):.2f}x" if ratios else "-"
            rss = f"{mid.rss_mib:.0f}" if mid.rss_mib is not None else "-"
            print(
                f"| {workload} | {clients[workload]} | {target} | {mid.tok_s:.1f} "
                f"| {mid.ttft(0.5) * 1000:.0f} ms | {mid.ttft(0.99) * 1000:.0f} ms "
                f"| {mid.itl(0.5) * 1000:.1f} ms | {mid.itl(0.99) * 1000:.1f} ms | {rss} "
                f"| {sum(r.failures for r in rs)} | {ratio} |"
            )


def default_llama_server() -> str | None:
    """The binary bench/build_llama_server.sh built (or builds now: minutes)."""
    out = subprocess.run(
        ["bash", str(ROOT / "bench" / "build_llama_server.sh")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    path = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    return path if out.returncode == 0 and Path(path).is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-server", help="llama-server binary (default: build_llama_server)")
    parser.add_argument("--no-llama-server", action="store_true", help="llm-node alone")
    parser.add_argument("--llama-cpp-python", action="store_true", help="also its server")
    parser.add_argument(
        "--llama-cpp-python-python",
        metavar="PYTHON",
        help="the Python running it (one with llama-cpp-python[server])",
    )
    parser.add_argument("--variant", type=lambda s: s.split(), default=None,
                        help="also an llm-node with these extra serve options, e.g. "
                        "'--kv-unified'")  # fmt: skip
    parser.add_argument("--workloads", type=lambda s: [w for w in s.split(",") if w],
                        default=list(WORKLOADS), help=f"of {WORKLOADS}")  # fmt: skip
    parser.add_argument("--prompts", type=int, default=24, help="distinct prompts")
    parser.add_argument("--clients", type=int, default=8, help="clients for distinct/repeat")
    parser.add_argument("--users", type=int, default=16, help="chat users")
    parser.add_argument("--turns", type=int, default=4, help="chat turns per user")
    parser.add_argument("--chat-max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=8192)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="decode threads, every server")
    parser.add_argument("--node-args", type=lambda s: s.split(), default=[],
                        help="extra `llm-node serve` options, e.g. '--batching exact'")  # fmt: skip
    args = parser.parse_args()
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; known: {WORKLOADS}")

    factories: list[tuple[str, Callable[[], contextlib.AbstractContextManager[Target]]]] = [
        ("llm-node", lambda: start_node(args, [], "llm-node"))
    ]
    if args.variant:
        variant = "llm-node " + " ".join(args.variant)
        factories.append((variant, lambda: start_node(args, args.variant, variant)))
    if not args.no_llama_server:
        binary = args.llama_server or default_llama_server()
        if binary is None:
            raise SystemExit("no llama-server: run bench/build_llama_server.sh or --llama-server")
        factories.append(("llama-server", lambda: start_llama_server(binary, args)))
    if args.llama_cpp_python:
        factories.append(("llama-cpp-python", lambda: start_llama_cpp_python(args)))
    print(
        f"{len(factories)} target(s), {args.rounds} round(s), workloads {args.workloads}: "
        f"{args.prompts} prompts x {args.clients} clients, {args.users} users x {args.turns} turns",
        file=sys.stderr,
    )
    rounds: dict[tuple[str, str], list[Result]] = {}
    for round_ in range(args.rounds):
        for _name, factory in factories if round_ % 2 == 0 else factories[::-1]:
            with factory() as target:  # one server alive at a time
                for result in asyncio.run(bench_target(target, args)):
                    rounds.setdefault((result.target, result.workload), []).append(result)
    print_table(rounds, args)


if __name__ == "__main__":
    main()
