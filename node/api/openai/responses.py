"""OpenAI's response objects as typed models: chat completions and chunks, text completions,
embeddings, usage. Fields appear in OpenAI's order; `None` is sent as null except in the
sparse objects (stream deltas, usage details) where OpenAI leaves unset fields out."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

from node.engine.interface import TokenCounts
from node.meter import Bill


class _Out(BaseModel):
    # Closed objects in /openapi.json: an answer carries exactly the fields declared here.
    model_config = ConfigDict(frozen=False, extra="forbid")


class _Sparse(_Out):
    """Serialised without its None fields."""

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class PromptTokensDetails(_Out):
    cached_tokens: int


class CompletionTokensDetails(_Sparse):
    reasoning_tokens: int | None = None


class Usage(_Sparse):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails | None = None
    cost: str | None = None  # exact decimal string, when the model has a price here
    currency: str | None = None


def usage_of(counts: TokenCounts, bill: Bill | None) -> Usage:
    usage = Usage(
        prompt_tokens=counts.prompt_tokens,
        completion_tokens=counts.completion_tokens,
        total_tokens=counts.prompt_tokens + counts.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=counts.cached_tokens),
    )
    if bill is not None and bill.priced:
        usage.cost = format(bill.cost, "f")
        usage.currency = bill.currency
    return usage


# -- logprobs ----------------------------------------------------------------------------------


class TopLogprob(_Out):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(_Out):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(_Out):
    content: list[TokenLogprob] | None
    refusal: None = None


class CompletionLogprobs(_Out):
    """The legacy completions shape: parallel lists."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


# -- chat ----------------------------------------------------------------------------------------


class Function(_Out):
    name: str
    arguments: str


class ToolCallOut(_Out):
    id: str
    type: Literal["function"] = "function"
    function: Function


class Message(_Out):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallOut] | None = None

    @model_serializer(mode="wrap")
    def _keep_content(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # OpenAI always sends `content` and `refusal` (null when absent).
        out = {k: v for k, v in handler(self).items() if v is not None}
        return {"role": out["role"], "content": self.content, "refusal": None, **out}


class ChatChoice(_Out):
    index: int
    message: Message
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str


class ChatCompletion(_Out):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: None = None
    choices: list[ChatChoice]
    usage: Usage


class FunctionDelta(_Sparse):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Sparse):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta | None = None


class Delta(_Sparse):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(_Out):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(_Out):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: None = None
    choices: list[ChunkChoice]
    usage: Usage | None = None

    @model_serializer(mode="wrap")
    def _shape(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if self.usage is None:
            out.pop("usage", None)
        return out


# -- completions -------------------------------------------------------------------------------


class TextChoice(_Out):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None


class TextCompletion(_Out):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: None = None
    choices: list[TextChoice]
    usage: Usage | None = None

    @model_serializer(mode="wrap")
    def _shape(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if self.usage is None:
            out.pop("usage", None)
        return out


# -- embeddings --------------------------------------------------------------------------------


class Embedding(_Out):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(_Sparse):
    prompt_tokens: int
    total_tokens: int
    cost: str | None = None
    currency: str | None = None


class EmbeddingList(_Out):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


# -- models ------------------------------------------------------------------------------------


class ModelPrice(_Sparse):
    prompt_per_1m: str  # exact decimal strings
    cached_per_1m: str | None = None  # absent: cached prompt tokens at the prompt price
    completion_per_1m: str
    currency: str


class ModelCard(_Out):
    """OpenAI's model object plus what this node knows about serving it."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llm-node"
    aliases: list[str]
    type: Literal["generation", "embeddings"]
    context_length: int
    n_ctx: int
    parallel: int
    quant_type: str
    n_params: int
    size_bytes: int
    gpu_type: str
    gpu_name: str
    price: ModelPrice | None


class ModelList(_Out):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# What `/openapi.json` documents as the 200 answers.
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    ChatCompletion,
    TextCompletion,
    EmbeddingList,
    ModelCard,
    ModelList,
)
