"""Engine throughput and time to first token at 1..16 concurrent requests, against a peer.

The peer is llama-cpp-python's high-level `Llama` on the same GGUF serving the same requests one
after another (what a single-sequence server does). Every request generates exactly
`--max-tokens` tokens (end-of-generation tokens are ignored on both sides), greedy.

    .venv/bin/python bench/engine_bench.py [--model FILE] [--max-tokens 64] [--levels 1,2,4,8,16]
                                           [--threads N] [--rounds 3]

Each level runs `--rounds` times, engine and peer interleaved, and keeps each side's best run.
Prints a table and the ratios; exits 0 whatever the numbers (targets live in the report).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from llama_cpp import Llama

from node.config import ModelSpec, embedded_model_path
from node.engine.interface import ChatMessage, SamplingParams, TextDelta
from node.engine.model import LoadedModel, physical_cores
from node.engine.scheduler import Scheduler

TOPICS = [
    "the ocean", "mountains", "a library", "trains", "coffee", "the moon", "gardening",
    "chess", "rain", "bicycles", "volcanoes", "music", "bread", "winter", "robots", "bees",
]  # fmt: skip
NO_EOG = {0: -100.0, 2: -100.0, 4: -100.0}  # SmolLM2's end-of-generation tokens


@dataclass
class Run:
    tokens: int
    seconds: float
    ttft: list[float]

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds


def prompts(engine: Scheduler, n: int) -> list[list[int]]:
    return [
        engine.tokenize(engine.render_chat([ChatMessage("user", f"Write a story about {topic}.")]))
        for topic in (TOPICS * 4)[:n]
    ]


async def engine_run(engine: Scheduler, batch: list[list[int]], max_tokens: int) -> Run:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logit_bias=NO_EOG)
    start = time.perf_counter()

    async def one(tokens: list[int]) -> tuple[float, int]:
        first = 0.0
        generation = engine.submit(tokens, params)
        async for event in generation:
            if isinstance(event, TextDelta) and not first:
                first = time.perf_counter() - start
        return first, generation.counts.completion_tokens

    results = await asyncio.gather(*(one(t) for t in batch))
    seconds = time.perf_counter() - start
    return Run(sum(n for _, n in results), seconds, [f for f, _ in results])


def llama_run(llm: Llama, batch: list[list[int]], max_tokens: int) -> Run:
    start = time.perf_counter()
    ttft: list[float] = []
    total = 0
    for tokens in batch:
        n = 0
        for _token in llm.generate(tokens, temp=0.0, reset=True):
            if n == 0:
                ttft.append(time.perf_counter() - start)
            n += 1
            if n == max_tokens:
                break
        total += n
        llm.reset()  # no prefix reuse across requests, as in the engine's distinct prompts
    return Run(total, time.perf_counter() - start, ttft)


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.0f} / {max(values) * 1000:6.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--levels", default="1,2,4,8,16")
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--n-batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many runs per level")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    path = args.model or embedded_model_path()
    parallel = max(levels)
    spec = ModelSpec(
        id="bench",
        path=path,
        n_ctx=parallel * 512,
        parallel=parallel,
        n_threads=args.threads,
        n_batch=args.n_batch,
    )
    engine = Scheduler(LoadedModel(spec))
    llm = Llama(
        str(path),
        n_ctx=512,
        n_batch=args.n_batch,
        n_threads=args.threads,
        n_threads_batch=args.threads,  # as the engine; Llama's default is every logical CPU
        verbose=False,
    )
    print(
        f"model {path.name}, {args.threads} threads, n_batch {args.n_batch}, "
        f"{args.max_tokens} tokens per request, engine parallel={parallel}, "
        f"best of {args.rounds} runs per level"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    batch_all = prompts(engine, parallel)
    asyncio.run(engine_run(engine, batch_all[:2], 8))  # warm up both
    llama_run(llm, batch_all[:1], 8)

    header = (
        f"{'conc':>4} | {'engine tok/s':>12} | {'TTFT p50/max ms':>16} | {'Llama tok/s':>11} | "
        f"{'TTFT p50/max ms':>16} | {'eng/Llama':>9} | {'eng vs 1':>8}"
    )
    print(header)
    print("-" * len(header))
    base = 0.0
    for level in levels:
        batch = batch_all[:level]
        ours_runs, peer_runs = [], []
        for _ in range(args.rounds):  # interleaved, best of: a shared box is noisy
            ours_runs.append(asyncio.run(engine_run(engine, batch, args.max_tokens)))
            peer_runs.append(llama_run(llm, batch, args.max_tokens))
        ours = max(ours_runs, key=lambda r: r.tok_s)
        peer = max(peer_runs, key=lambda r: r.tok_s)
        base = base or ours.tok_s
        print(
            f"{level:>4} | {ours.tok_s:12.1f} | {ms(ours.ttft):>16} | {peer.tok_s:11.1f} | "
            f"{ms(peer.ttft):>16} | {ours.tok_s / peer.tok_s:8.2f}x | "
            f"{ours.tok_s / base:7.2f}x"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    engine.close()
    llm.close()


if __name__ == "__main__":
    main()
