"""OpenAI request bodies as pydantic models, in OpenAI's field names and order.

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


def _format_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"<{kind}>" if kind in ("text", "json_object", "json_schema") else None


# Tags in angle brackets: not identifiers, so error locations skip them (see errors.param_path).
ResponseFormat = Annotated[
    Annotated[TextFormat, Tag("<text>")]
    | Annotated[JsonObjectFormat, Tag("<json_object>")]
    | Annotated[JsonSchemaFormat, Tag("<json_schema>")],
    Discriminator(
        _format_tag,
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
    n: One | None = unsupported("1")
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
        )


class TextPart(_Body):
    type: Literal["text"] = Field(description="Only text parts: no images, audio or files.")
    text: str


Content = text_or_list(
    str, Annotated[list[TextPart], Field(min_length=1)], "a string or a list of text parts"
)


class _Message(_Body):
    def text(self) -> str:
        content: str | list[TextPart] | None = getattr(self, "content", None)
        if isinstance(content, list):
            return "".join(part.text for part in content)
        return content or ""


class SystemMessage(_Message):
    role: Literal["system"]
    content: Content
    name: str | None = None


class DeveloperMessage(_Message):
    role: Literal["developer"]
    content: Content
    name: str | None = None


class UserMessage(_Message):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(_Message):
    role: Literal["assistant"]
    content: Content | None = None
    name: str | None = None


class ToolMessage(_Message):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


# OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512.
Metadata = Annotated[
    dict[Annotated[str, StringConstraints(max_length=64)], Annotated[str, Field(max_length=512)]],
    Field(max_length=16),
]
ROLES = ("system", "developer", "user", "assistant", "tool")


def _role_tag(value: Any) -> str | None:
    role = value.get("role") if isinstance(value, dict) else getattr(value, "role", None)
    return f"<{role}>" if role in ROLES else None


ChatMessage = Annotated[
    Annotated[SystemMessage, Tag("<system>")]
    | Annotated[DeveloperMessage, Tag("<developer>")]
    | Annotated[UserMessage, Tag("<user>")]
    | Annotated[AssistantMessage, Tag("<assistant>")]
    | Annotated[ToolMessage, Tag("<tool>")],
    Discriminator(
        _role_tag,
        custom_error_type="invalid_role",
        custom_error_message="role must be one of " + ", ".join(f"'{r}'" for r in ROLES),
    ),
]


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    audio: None = unsupported("null")
    function_call: None = unsupported("null")
    functions: None = unsupported("null")
    logprobs: Literal[False] | None = unsupported("false")
    max_completion_tokens: integer(ge=1) | None = None
    metadata: Metadata | None = Field(default=None, description="Accepted and ignored.")
    modalities: Annotated[list[Literal["text"]], Field(min_length=1)] | None = unsupported(
        '["text"]'
    )
    parallel_tool_calls: None = unsupported("null")
    prediction: None = unsupported("null")
    prompt_cache_key: str | None = Field(default=None, description="Accepted and ignored.")
    reasoning_effort: None = unsupported("null")
    response_format: ResponseFormat | None = None
    safety_identifier: str | None = Field(
        default=None, max_length=256, description="Accepted and ignored."
    )
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = Field(
        default=None, description="Accepted and ignored."
    )
    store: bool | None = Field(default=None, description="Accepted and ignored: nothing is stored.")
    tool_choice: None = unsupported("null")
    tools: None = unsupported("null")
    top_logprobs: None = unsupported("null")
    verbosity: None = unsupported("null")
    web_search_options: None = unsupported("null")

    def completion_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def template_messages(self) -> list[dict[str, str]]:
        """Messages as the chat template takes them (text parts joined)."""
        out = []
        for m in self.messages:
            item = {"role": m.role, "content": m.text()}
            name = getattr(m, "name", None)
            if name:
                item["name"] = name
            out.append(item)
        return out


class CompletionRequest(SamplingFields):
    # A prompt that tokenizes to nothing cannot start a generation: at least one character.
    prompt: text_or_list(  # type: ignore[valid-type]
        NonEmpty,
        Annotated[list[NonEmpty], Field(min_length=1, max_length=1)],
        "a string or a list of one",
    )
    best_of: One | None = unsupported("1")
    echo: Literal[False] | None = unsupported("false")
    logprobs: None = unsupported("null")
    max_tokens: integer(ge=1) | None = 16  # OpenAI's default for completions
    suffix: None = unsupported("null")

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class EmbeddingRequest(_Body):
    input: text_or_list(  # type: ignore[valid-type]
        NonEmpty,
        Annotated[list[NonEmpty], Field(min_length=1, max_length=MAX_EMBED_INPUTS)],
        "a string or a list of strings",
    )
    model: str = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: integer(ge=1) | None = None
    user: str | None = Field(default=None, max_length=256)

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


REQUEST_MODELS: dict[str, type[_Body]] = {
    m.__name__: m for m in (ChatCompletionRequest, CompletionRequest, EmbeddingRequest)
}
