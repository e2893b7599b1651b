"""OpenAI request bodies shared by chat and completions, and embeddings, as pydantic models in
OpenAI's field names and order (the chat messages and tools: `chat_protocol`).

Pure data: no engine, no meter. These models are also what `/openapi.json` publishes, so every
rule lives in a constraint the JSON schema shows (types, bounds, `const`, lengths, patterns):
what the document allows, the node accepts. Unknown fields are refused (`extra="forbid"`, i.e.
`additionalProperties: false`), like OpenAI does: a field the node does not know might change
the output. Fields the node does not implement are declared with the one value that changes
nothing (`n: 1`, `echo: false`, `tools: null`), so the client learns of them with a 400 naming
them; fields that only tune are accepted and ignored (`IGNORED`, listed in README). Wrong types
are rejected (strict mode: "1" is no number, 1 is no boolean). Extensions shared with llama.cpp's
server: `top_k`, `min_p`, `repeat_penalty`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
)

from node.engine.interface import SamplingParams

MAX_STOP = 16  # OpenAI allows 4; llama.cpp has no limit. Each costs a text scan per token.
MAX_EMBED_INPUTS = 2048  # OpenAI's limit
MAX_N = 128  # the real limit is the model's `parallel`, checked against the model
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
MAX_PROMPTS = 16  # prompts per completions request; each is its own generation

# Accepted and ignored: they tune OpenAI's service, never what this node sends back.
IGNORED = ("store", "metadata", "service_tier", "prompt_cache_key", "safety_identifier")


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


def unsupported(only: str) -> Any:
    """A field the node does not implement: only `only` (the value that changes nothing) or
    null is accepted. `errors.from_validation` turns anything else into `unsupported_*`."""
    return Field(
        default=None,
        description=f"Not supported by this node: only {only} is accepted.",
        json_schema_extra={"x-llm-node-only": only},
    )


def tag_by(field: str, values: Collection[str]) -> Callable[[Any], str | None]:
    """A discriminator for bodies told apart by `field` (`type`, `role`): its value in angle
    brackets when it is one of `values`, else None (pydantic then reports the union's error)."""

    def tag(value: Any) -> str | None:
        kind = value.get(field) if isinstance(value, dict) else getattr(value, field, None)
        return f"<{kind}>" if kind in values else None

    return tag


def _text_or_list_tag(value: Any) -> str | None:
    return "<text>" if isinstance(value, str) else "<parts>" if isinstance(value, list) else None


def text_or_list(text: Any, items: Any, what: str) -> Any:
    """`text | list`, told apart by the JSON type: an error names the branch the client chose
    (a smart union would report the string branch for a bad list item)."""
    return Annotated[
        Annotated[text, Tag("<text>")] | Annotated[items, Tag("<parts>")],
        Discriminator(
            _text_or_list_tag,
            custom_error_type="invalid_type",
            custom_error_message=f"must be {what}",
        ),
    ]


def _integral(value: Any) -> Any:
    """JSON Schema's `integer` includes 4.0; strict mode alone would refuse it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def integer(**bounds: int) -> Any:
    """An int, bounds first: a bound after the validator would leave the JSON schema as a raw
    `ge` instead of `minimum`."""
    return Annotated[int, Field(**bounds), BeforeValidator(_integral)]  # type: ignore[arg-type]


Int = integer()
One = Annotated[Literal[1], BeforeValidator(_integral)]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]
# ASCII decimal without leading zeros: "²" and "٣" are no token ids, "07" would alias "7".
TokenId = Annotated[str, StringConstraints(pattern=r"^(0|[1-9][0-9]{0,9})$")]
Bias = Annotated[float, Field(ge=-100.0, le=100.0)]


class StreamOptions(_Body):
    include_usage: bool = False
    include_obfuscation: bool | None = Field(
        default=None, description="Accepted and ignored: chunks carry no obfuscation padding."
    )


class TextFormat(_Body):
    type: Literal["text"]


class JsonObjectFormat(_Body):
    type: Literal["json_object"]
    schema_: dict[str, Any] | None = Field(
        default=None,
        alias="schema",
        description="llama-server's extension: the JSON object must also match this schema.",
    )


class JsonSchema(_Body):
    name: str = Field(default="response", max_length=64)
    description: str | None = Field(
        default=None, description="Accepted and ignored: the grammar alone constrains the output."
    )
    schema_: dict[str, Any] = Field(
        alias="schema",
        min_length=1,
        description="A JSON schema; one the node cannot turn into a grammar is refused (400).",
    )
    strict: bool | None = None


class JsonSchemaFormat(_Body):
    type: Literal["json_schema"]
    json_schema: JsonSchema


FORMAT_TYPES = ("text", "json_object", "json_schema")


# Tags in angle brackets: not identifiers, so error locations skip them (see errors.param_path).
ResponseFormat = Annotated[
    Annotated[TextFormat, Tag("<text>")]
    | Annotated[JsonObjectFormat, Tag("<json_object>")]
    | Annotated[JsonSchemaFormat, Tag("<json_schema>")],
    Discriminator(
        tag_by("type", FORMAT_TYPES),
        custom_error_type="invalid_format",
        custom_error_message="type must be 'text', 'json_object' or 'json_schema'",
    ),
]

# patternProperties alone would let other keys through: the schema must refuse them too.
LogitBias = Annotated[dict[TokenId, Bias], Field(json_schema_extra={"additionalProperties": False})]
Stop = text_or_list(
    NonEmpty, Annotated[list[NonEmpty], Field(max_length=MAX_STOP)], "a string or a list of strings"
)


class SamplingFields(_Body):
    """The sampling parameters chat and completions share."""

    model: str = Field(min_length=1)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: LogitBias | None = Field(
        default=None, description="Token id (ASCII decimal, in the model's vocabulary) → bias."
    )
    max_tokens: integer(ge=1) | None = None
    n: integer(ge=1, le=MAX_N) | None = Field(
        default=None, description="Choices; at most the model's `parallel` (prompt billed once)."
    )
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: Int | None = None
    stop: Stop | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = Field(
        default=None, description="Only read when `stream` is true."
    )
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    user: str | None = Field(default=None, max_length=256)
    # llama.cpp extensions
    top_k: integer(ge=0, le=1_000_000) | None = None
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, gt=0.0, le=10.0)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def completion_limit(self) -> int | None:
        return self.max_tokens

    def logprobs_wanted(self) -> int | None:
        """None: no logprobs; N: the sampled token's and the N most likely ones'."""
        return None

    def choices(self) -> int:
        return self.n or 1

    def to_sampling_params(self, grammar: str | None = None) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=self.completion_limit(),
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            min_p=self.min_p or 0.0,
            seed=self.seed,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repeat_penalty=1.0 if self.repeat_penalty is None else self.repeat_penalty,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            stop=stop,
            grammar=grammar,
            logprobs=self.logprobs_wanted(),
        )


TokenIds = Annotated[list[integer(ge=0)], Field(min_length=1)]
# A string, a list of strings, a list of token ids, or a list of lists of token ids.
PromptList = (
    Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_PROMPTS)]
    | TokenIds
    | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]
)
InputList = (
    Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_EMBED_INPUTS)]
    | TokenIds
    | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_EMBED_INPUTS)]
)


def _items(value: str | list[Any]) -> list[str | list[int]]:
    """Prompts or inputs, each as text or token ids."""
    if isinstance(value, str):
        return [value]
    if all(isinstance(item, int) for item in value):
        return [list(value)]
    return list(value)


class CompletionRequest(SamplingFields):
    # A prompt that tokenizes to nothing cannot start a generation: at least one character.
    prompt: text_or_list(  # type: ignore[valid-type]
        NonEmpty, PromptList, "a string, a list of strings, token ids or lists of token ids"
    )
    best_of: One | None = unsupported("1")
    echo: Literal[False] | None = unsupported("false")
    logprobs: integer(ge=0, le=MAX_TOP_LOGPROBS) | None = Field(
        default=None, description="Log-probabilities of each token and the N most likely ones."
    )
    max_tokens: integer(ge=1) | None = 16  # OpenAI's default for completions
    suffix: None = unsupported("null")

    def logprobs_wanted(self) -> int | None:
        return self.logprobs

    def prompts(self) -> list[str | list[int]]:
        """Each prompt, as text or as token ids."""
        return _items(self.prompt)


class EmbeddingRequest(_Body):
    input: text_or_list(  # type: ignore[valid-type]
        NonEmpty, InputList, "a string, a list of strings, token ids or lists of token ids"
    )
    model: str = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: integer(ge=1) | None = None
    user: str | None = Field(default=None, max_length=256)

    def inputs(self) -> list[str | list[int]]:
        """Each input, as text or as token ids."""
        return _items(self.input)
