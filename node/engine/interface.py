"""What the engine promises its callers: requests, events, errors and the engine protocols.

The HTTP layer and the service see only these types; `fakes` in the tests implement the same
protocols. Nothing here imports llama-cpp-python.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class SamplingParams:
    """Per-sequence sampling. Defaults are OpenAI's (temperature 1, no top-k/min-p cut)."""

    max_tokens: int | None = None  # None: until end of generation or the sequence's context
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    seed: int | None = None  # None: random
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # GBNF text, e.g. from `grammar.json_schema_grammar`


@dataclass
class TokenCounts:
    """Exact counts for one request; live while it runs, final in `Finished`."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV was reused, not decoded again
    completion_tokens: int = 0

    def copy(self) -> TokenCounts:
        return TokenCounts(self.prompt_tokens, self.cached_tokens, self.completion_tokens)


@dataclass(frozen=True)
class TextDelta:
    """New completion text. Never contains (part of) a stop string."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The last event of a generation."""

    reason: FinishReason
    counts: TokenCounts
    error: str | None = None  # set when reason == "error"


GenerationEvent = TextDelta | Finished


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]  # one L2-normalised vector per input, in input order
    prompt_tokens: int


@dataclass(frozen=True)
class ModelInfo:
    """What the node tells clients about a loaded model."""

    id: str
    aliases: tuple[str, ...]
    path: Path
    embeddings: bool
    n_ctx: int  # total KV context
    n_ctx_per_seq: int  # the most one request (prompt + completion) may use
    parallel: int
    quant_type: str  # e.g. "Q4_1", "Q5_K_M", from the GGUF file type
    n_params: int
    size_bytes: int
    n_embd: int


class ContextOverflow(ValueError):
    """The prompt (with its max tokens) cannot fit a sequence's context. Raised before decode."""

    def __init__(self, n_prompt_tokens: int, n_ctx: int, message: str | None = None) -> None:
        self.n_prompt_tokens = n_prompt_tokens
        self.n_ctx = n_ctx
        super().__init__(
            message
            or f"This model's maximum context length is {n_ctx} tokens, but the request needs "
            f"{n_prompt_tokens} prompt tokens plus its completion."
        )


class EngineBusy(RuntimeError):
    """The admission queue is full; the client should retry after `retry_after` seconds."""

    def __init__(self, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__("the model's request queue is full; retry later")


class Generation(Protocol):
    """A submitted request. Iterate for events; `counts` is readable at any time."""

    @property
    def counts(self) -> TokenCounts: ...

    def cancel(self) -> None:
        """Stop within one decode step; the last event is then `Finished("cancelled")`."""

    def __aiter__(self) -> AsyncIterator[GenerationEvent]: ...


class GenerationEngine(Protocol):
    """One loaded generation model with its own scheduler thread."""

    info: ModelInfo
    decode_calls: int  # llama_decode calls so far (llama-server's `n_decode_total`)

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The chat template applied with the generation prompt; raises ValueError if it fails."""

    def tokenize(self, text: str) -> list[int]:
        """Tokens as the model will decode them (BOS added only if the text lacks it)."""

    def check_fits(self, n_prompt_tokens: int, max_tokens: int | None) -> None:
        """Raise `ContextOverflow` if the request cannot fit one sequence's context."""

    def validate(self, params: SamplingParams) -> None:
        """Raise ValueError for parameters `submit` would refuse (bad logit_bias token, grammar),
        so callers can reject a request before metering it."""

    def submit(self, prompt_tokens: list[int], params: SamplingParams) -> Generation:
        """Queue a request; call on the event loop. Raises `EngineBusy` or `ContextOverflow`."""

    def close(self) -> None: ...


class EmbeddingEngine(Protocol):
    info: ModelInfo
    decode_calls: int

    def tokenize(self, text: str) -> list[int]: ...

    async def embed(self, texts: Sequence[str]) -> Embeddings:
        """Raises `ContextOverflow` for an input longer than the context."""

    def close(self) -> None: ...
