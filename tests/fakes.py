"""A small fake engine implementing `node.engine.interface`, for fast API-shape tests.

It stands beside (never instead of) the end-to-end tests on the real model. Tokens are
whitespace-separated words; the reply to any prompt is `w0 w1 w2 ...`, one word per token.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.config import ModelSpec
from node.engine.interface import (
    ChatMessage,
    ContextOverflow,
    Embeddings,
    EngineBusy,
    EngineStats,
    Finished,
    GenerationEvent,
    ModelInfo,
    PromptCacheStats,
    SampledLogprob,
    SamplingParams,
    TextDelta,
    TokenCounts,
    TokenLogprob,
    Tool,
)

FAKE_VOCAB = 1000


def fake_info(name: str, *, embeddings: bool = False, n_ctx: int = 64) -> ModelInfo:
    return ModelInfo(
        id=name,
        aliases=(f"{name}-alias",),
        path=Path(__file__),
        embeddings=embeddings,
        n_ctx=n_ctx * 2,
        n_ctx_per_seq=n_ctx,
        parallel=2,
        quant_type="Q4_1",
        n_params=1000,
        size_bytes=2000,
        n_embd=4,
        n_vocab=FAKE_VOCAB,
    )


class FakeGeneration:
    def __init__(self, engine: FakeEngine, n_prompt: int, params: SamplingParams) -> None:
        self._engine = engine
        self._params = params
        cached = min(engine.cached_tokens, n_prompt)
        self._counts = TokenCounts(prompt_tokens=n_prompt, cached_tokens=cached)
        self._cancelled = False
        self.submitted = params

    @property
    def counts(self) -> TokenCounts:
        return self._counts

    def _logprobs(self, i: int, text: str) -> tuple[SampledLogprob, ...] | None:
        """Token i has probability 1/2; the top list is it, then `x` at 1/4, `y` at 1/8..."""
        n_top = self._params.logprobs
        if n_top is None:
            return None
        top = [TokenLogprob(i, text.encode(), math.log(0.5))]
        top += [TokenLogprob(900 + k, b"xyz"[k : k + 1], math.log(0.25 / 2**k)) for k in range(3)]
        return (SampledLogprob(i, text.encode(), math.log(0.5), tuple(top[:n_top])),)

    def cancel(self) -> None:
        self._cancelled = True

    async def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        engine = self._engine
        limit = self._params.max_tokens or engine.default_tokens
        try:
            for i in range(limit):
                await asyncio.sleep(engine.step_s)
                if self._cancelled:
                    yield Finished("cancelled", self._counts.copy())
                    return
                if engine.raise_after is not None and i >= engine.raise_after:
                    raise RuntimeError("fake engine bug")
                if engine.fail_after is not None and i >= engine.fail_after:
                    yield Finished("error", self._counts.copy(), "fake failure")
                    return
                word = f"w{i}"
                engine.decode_calls += 1
                self._counts.completion_tokens += 1
                if word in self._params.stop:
                    yield Finished("word", self._counts.copy(), stop_word=word)
                    return
                text = word if i == 0 else f" {word}"
                yield TextDelta(text, (i,), self._logprobs(i, text))
            reason = "length" if self._params.max_tokens else "eos"
            yield Finished(reason, self._counts.copy())
        finally:
            engine.active -= 1


class FakeEngine:
    """Implements `GenerationEngine`."""

    def __init__(self, name: str = "fake", *, n_ctx: int = 64, max_active: int = 4) -> None:
        self.info = fake_info(name, n_ctx=n_ctx)
        self.max_active = max_active
        self.active = 0
        self.step_s = 0.002
        self.default_tokens = 8
        self.cached_tokens = 0  # prompt tokens every generation reports as reused
        self.fail_after: int | None = None  # then Finished("error")
        self.raise_after: int | None = None  # then the iterator raises (a bug)
        self.submitted: list[SamplingParams] = []
        self.generations: list[FakeGeneration] = []
        self.decode_calls = 0  # one per fake token (each generation decodes alone)

    def prompt_cache_stats(self) -> PromptCacheStats:
        return PromptCacheStats()

    chat_template: str | None = None

    def render_chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[Tool] = (),
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        if any(m.content == "break the template" for m in messages):
            raise ValueError("the template cannot render this")
        return " ".join(f"<{m.role}> {m.content}" for m in messages) + " <assistant>"

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return [len(word) for word in text.split()]

    def piece(self, token: int, special: bool = True) -> bytes:
        return b"x" * token

    def detokenize(self, tokens: Sequence[int], special: bool = True) -> str:
        return " ".join("x" * t for t in tokens)

    def check_fits(self, n_prompt_tokens: int, max_tokens: int | None) -> None:
        if n_prompt_tokens + (max_tokens or 1) > self.info.n_ctx_per_seq:
            raise ContextOverflow(n_prompt_tokens, self.info.n_ctx_per_seq)

    def validate(self, params: SamplingParams) -> None:
        if any(token >= FAKE_VOCAB for token in params.logit_bias):
            raise ValueError("logit_bias token is not in the vocabulary")

    def submit(self, prompt_tokens: list[int], params: SamplingParams) -> FakeGeneration:
        self.validate(params)
        if self.active >= self.max_active:
            raise EngineBusy(retry_after=2)
        self.active += 1
        self.submitted.append(params)
        generation = FakeGeneration(self, len(prompt_tokens), params)
        self.generations.append(generation)
        return generation

    def close(self) -> None:
        pass


class FakeEmbedder:
    """Implements `EmbeddingEngine`: vector = (len, words, 1, 0), normalised."""

    def __init__(self, name: str = "fake-embed") -> None:
        self.info = fake_info(name, embeddings=True, n_ctx=32)
        self.decode_calls = 0

    def tokenize(self, text: str) -> list[int]:
        return [len(word) for word in text.split()]

    async def embed(self, texts: Sequence[str | Sequence[int]]) -> Embeddings:
        self.decode_calls += 1
        vectors = []
        for item in texts:
            text = item if isinstance(item, str) else " ".join("x" * t for t in item)
            raw = [float(len(text)), float(len(text.split())), 1.0, 0.0]
            norm = sum(v * v for v in raw) ** 0.5
            vectors.append([v / norm for v in raw])
        n = sum(len(self.tokenize(t)) if isinstance(t, str) else len(t) for t in texts)
        return Embeddings(vectors, n)

    def close(self) -> None:
        pass


@dataclass
class FakeGpu:
    name: str = "Fake GPU"
    type: str = "fakegpu"
    memory_bytes: int = 0
    driver: str = "none"


class FakePool:
    """Implements the service's `ModelPool`; `load` waits until `release()` if `hold` is set."""

    def __init__(self, *engines: FakeEngine | FakeEmbedder, hold: bool = False) -> None:
        self.engines = list(engines)
        self._ready = False
        self._released = threading.Event()
        if not hold:
            self._released.set()

    @property
    def ready(self) -> bool:
        return self._ready

    def release(self) -> None:
        self._released.set()

    def load(
        self, specs: list[ModelSpec], on_progress: Callable[[str, float], None] | None = None
    ) -> None:
        self._released.wait(30)
        for engine in self.engines:
            if on_progress:
                on_progress(engine.info.id, 100.0)
        self._ready = True

    def _get(self, name: str) -> FakeEngine | FakeEmbedder | None:
        for engine in self.engines:
            if name == engine.info.id or name in engine.info.aliases:
                return engine
        return None

    def info(self, name: str) -> ModelInfo | None:
        engine = self._get(name)
        return None if engine is None else engine.info

    def generator(self, name: str) -> FakeEngine | None:
        engine = self._get(name)
        return engine if isinstance(engine, FakeEngine) else None

    def embedder(self, name: str) -> FakeEmbedder | None:
        engine = self._get(name)
        return engine if isinstance(engine, FakeEmbedder) else None

    def infos(self) -> list[ModelInfo]:
        return [e.info for e in self.engines]

    def decode_calls(self) -> int:
        return sum(e.decode_calls for e in self.engines)

    def stats(self) -> EngineStats:
        return EngineStats(decode_calls=self.decode_calls())

    def prompt_cache_stats(self) -> dict[str, PromptCacheStats]:
        return {
            e.info.id: e.prompt_cache_stats() for e in self.engines if isinstance(e, FakeEngine)
        }

    def close(self) -> None:
        pass
