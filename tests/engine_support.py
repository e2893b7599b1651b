"""Helpers for the engine tests: build real engines on the real GGUF, run generations."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from node.config import ModelSpec
from node.engine.interface import ChatMessage, Finished, SamplingParams, TextDelta
from node.engine.model import LoadedModel
from node.engine.scheduler import Scheduler

# The end-of-generation tokens of SmolLM2 (<|endoftext|>, <|im_end|>, <reponame>): biasing them
# away makes a generation run until its limit, for tests that need a long-running request.
NO_EOG_BIAS = {0: -100.0, 2: -100.0, 4: -100.0}


# One decode thread: ggml's threads spin at every op barrier, so two of them on a 2-core machine
# shared with anything else (other tests, a server under test) slow a decode from ~5 ms to
# seconds. One thread is a little slower alone and never pathological. The default (physical
# cores) is exercised by bench/engine_bench.py and test_engine_pool.
TEST_THREADS = 1


def make_scheduler(
    path: Path, *, n_ctx: int = 4096, parallel: int = 8, max_queue: int | None = None, **extra
) -> Scheduler:
    extra.setdefault("n_threads", TEST_THREADS)
    # The scheduler tests check bit-identical batching: exact unless a test asks for mixed.
    extra.setdefault("batching", "exact")
    spec = ModelSpec(id="test", path=path, n_ctx=n_ctx, parallel=parallel, **extra)
    return Scheduler(LoadedModel(spec), max_queue=max_queue)


def chat_tokens(engine: Scheduler, content: str) -> list[int]:
    return engine.tokenize(engine.render_chat([ChatMessage("user", content)]))


@dataclass
class Result:
    text: str
    deltas: list[str]
    finished: Finished


async def collect(engine: Scheduler, tokens: list[int], params: SamplingParams) -> Result:
    generation = engine.submit(tokens, params)
    deltas: list[str] = []
    async for event in generation:
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            return Result("".join(deltas), deltas, event)
    raise AssertionError("generation ended without Finished")


def run(coro):
    return asyncio.run(coro)


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw)
