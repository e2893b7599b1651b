"""What the engine promises its callers: requests, events, errors and the engine protocols.

The HTTP layer and the service see only these types; `fakes` in the tests implement the same
protocols. Nothing here imports llama-cpp-python.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from node.errors import NodeError

if TYPE_CHECKING:
    from node.config import ModelSpec

FinishReason = Literal["stop", "length", "cancelled", "error"]  # the client-facing family
# Why a generation ended, as llama-server's slots say it: an end-of-generation token, a stop
# word, the token limit (max_tokens or the sequence's context), cancelled, or an engine error.
StopType = Literal["eos", "word", "length", "cancelled", "error"]


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
    # Non-empty: the grammar is lazy, free until one of these regexes matches the output
    # (llama.cpp's semantics: it applies from the match, or from its first group).
    grammar_triggers: tuple[str, ...] = ()
    # True: special tokens other than end-of-generation appear as their text (tool-call
    # formats mark calls with them, e.g. `<|python_tag|>`, and the parser must see them).
    special_tokens: bool = False
    # None: no log-probabilities (and no cost); N >= 0: the sampled token's and the N most
    # likely tokens' log-softmax of the raw logits (before any sampler), per token.
    logprobs: int | None = None


@dataclass
class TokenCounts:
    """Exact counts for one request; live while it runs, final in `Finished`."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV was reused, not decoded again
    completion_tokens: int = 0

    def copy(self) -> TokenCounts:
        return TokenCounts(self.prompt_tokens, self.cached_tokens, self.completion_tokens)


@dataclass(frozen=True)
class TokenLogprob:
    """One candidate token: its id, the bytes it adds to the text, its log-probability."""

    token: int
    piece: bytes
    logprob: float


@dataclass(frozen=True)
class SampledLogprob(TokenLogprob):
    """The sampled token, and the most likely tokens at its position (most likely first)."""

    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class TextDelta:
    """New completion text and the tokens sampled since the previous delta.

    The text never contains (part of) a stop string; text held back while a stop string may be
    starting comes with a later delta, so `tokens` and `text` may not line up one to one. End
    of generation tokens are not in `tokens`. `logprobs` (one per token) only when asked for.
    """

    text: str
    tokens: tuple[int, ...] = ()
    logprobs: tuple[SampledLogprob, ...] | None = None


@dataclass(frozen=True)
class Finished:
    """The last event of a generation."""

    stop: StopType
    counts: TokenCounts
    error: str | None = None  # set when stop == "error"
    stop_word: str | None = None  # the stop string matched, when stop == "word"

    @property
    def reason(self) -> FinishReason:
        return "stop" if self.stop in ("eos", "word") else self.stop


GenerationEvent = TextDelta | Finished


@dataclass(frozen=True)
class EngineStats:
    """Counters of the generation engines for `/metrics` (llama-server's names in comments)."""

    decode_calls: int = 0  # n_decode_total
    busy_slot_decodes: int = 0  # busy slots summed over decode calls: n_busy_slots_total
    n_tokens_max: int = 0  # the most tokens one sequence has held
    kv_tokens: int = 0  # tokens in the KV cache now, every slot of every model
    kv_capacity: int = 0  # the KV cache's size in tokens
    requests_waiting: int = 0  # queued for a slot (or KV room): requests_deferred


Role = Literal["system", "developer", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolCall:
    """A call an assistant message made: `arguments` is JSON text, as OpenAI sends it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation, as the chat template gets it (text parts joined)."""

    role: Role
    content: str | None = None
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()  # assistant messages
    tool_call_id: str | None = None  # tool messages: the call this is the result of
    reasoning_content: str | None = None  # assistant messages of thinking models


@dataclass(frozen=True)
class Tool:
    """A function the model may call; `parameters` is its JSON schema."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)


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
    n_vocab: int = 0  # token ids a client may send are 0 .. n_vocab - 1
    tool_format: str | None = None  # the registry's override of the detected tool-call format
    reasoning_raw: bool = False  # the registry keeps reasoning inside the content by default


@dataclass(frozen=True)
class PromptCacheStats:
    """What a generation model's host-memory prompt cache did so far."""

    lookups: int = 0  # admissions that searched the cache
    hits: int = 0  # admissions whose KV came from the cache
    tokens_restored: int = 0  # prompt tokens those hits did not decode
    bytes_held: int = 0
    entries: int = 0
    budget_bytes: int = 0  # 0: the cache is off
    evictions: int = 0  # entries dropped to fit a newer one
    refused: int = 0  # restores llama.cpp refused (no room in the KV): recomputed instead


class ContextOverflow(NodeError, ValueError):
    """The prompt (with its max tokens) cannot fit a sequence's context. Raised before decode."""

    code = "context_length_exceeded"

    def __init__(
        self,
        n_prompt_tokens: int,
        n_ctx: int,
        message: str | None = None,
        param: str | None = None,
    ) -> None:
        self.n_prompt_tokens = n_prompt_tokens
        self.n_ctx = n_ctx
        self.param = param  # what the caller blames: "messages", "prompt", "input"
        super().__init__(
            message
            or f"This model's maximum context length is {n_ctx} tokens, but the request needs "
            f"{n_prompt_tokens} prompt tokens plus its completion."
        )

    def extra(self) -> dict[str, Any]:
        return {"n_prompt_tokens": self.n_prompt_tokens, "n_ctx": self.n_ctx}


class EngineBusy(NodeError, RuntimeError):
    """The admission queue is full; the client should retry after `retry_after` seconds."""

    status = 429
    type = "rate_limit_error"
    code = "queue_full"

    def __init__(self, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__("the model's request queue is full; retry later")

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after)))}


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

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template in use (the registry's override or the GGUF's), if any."""

    def render_chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[Tool] = (),
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        """The chat template applied with the generation prompt; raises ValueError if it fails.

        `tools` reach the template as OpenAI's `{"type": "function", "function": {...}}` list;
        `template_kwargs` (e.g. `enable_thinking`) are extra template variables."""

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Tokens as the model will decode them (BOS added only if the text lacks it and
        `add_special`); special-token text such as `<|im_start|>` becomes that token."""

    def piece(self, token: int, special: bool = True) -> bytes:
        """The bytes of one token (`special`: control tokens as their text)."""

    def detokenize(self, tokens: Sequence[int], special: bool = True) -> str:
        """The text of tokens, invalid UTF-8 replaced; raises ValueError for ids outside the
        vocabulary."""

    def check_fits(self, n_prompt_tokens: int, max_tokens: int | None) -> None:
        """Raise `ContextOverflow` if the request cannot fit one sequence's context."""

    def validate(self, params: SamplingParams) -> None:
        """Raise ValueError for parameters `submit` would refuse (bad logit_bias token, grammar),
        so callers can reject a request before metering it."""

    def submit(self, prompt_tokens: list[int], params: SamplingParams) -> Generation:
        """Queue a request; call on the event loop. Raises `EngineBusy` or `ContextOverflow`."""

    def prompt_cache_stats(self) -> PromptCacheStats:
        """The host-memory prompt cache's counters so far (callable from any thread)."""

    def close(self) -> None: ...


class EmbeddingEngine(Protocol):
    info: ModelInfo
    decode_calls: int

    def tokenize(self, text: str) -> list[int]: ...

    async def embed(self, texts: Sequence[str | Sequence[int]]) -> Embeddings:
        """Each input is text or token ids. Raises `ContextOverflow` for an input longer than
        the context, ValueError for a token id outside the vocabulary."""

    def close(self) -> None: ...


class ModelPool(Protocol):
    """Every model a node serves, by id or alias. `node.engine.pool.ModelPool` is the real one."""

    @property
    def ready(self) -> bool: ...

    def load(
        self, specs: list[ModelSpec], on_progress: Callable[[str, float], None] | None = None
    ) -> None: ...

    def info(self, name: str) -> ModelInfo | None:
        """The model of either kind with this name."""

    def generator(self, name: str) -> GenerationEngine | None:
        """The generation model with this name (None for an embedding model)."""

    def embedder(self, name: str) -> EmbeddingEngine | None:
        """The embedding model with this name (None for a generation model)."""

    def infos(self) -> list[ModelInfo]: ...

    def decode_calls(self) -> int: ...

    def stats(self) -> EngineStats:
        """The generation engines' counters, summed (n_tokens_max: the largest)."""

    def prompt_cache_stats(self) -> dict[str, PromptCacheStats]:
        """Each generation model's prompt cache counters, by model id."""

    def close(self) -> None: ...
