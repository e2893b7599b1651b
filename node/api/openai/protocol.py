"""OpenAI request bodies shared by chat and completions, and embeddings, as pydantic models in
OpenAI's field names and order (the chat messages and tools: `chat_protocol`).

Pure data: no engine, no meter. Unknown fields are ignored like OpenAI does; wrong types are
rejected (strict mode: "1" is no number, 1 is no boolean). Extensions shared with llama.cpp's
server: `top_k`, `min_p`, `repeat_penalty`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
)

from node.engine.interface import SamplingParams

MAX_STOP = 16  # OpenAI allows 4; llama.cpp has no limit. Each costs a text scan per token.
MAX_N = 128  # the engine's real limit is the model's `parallel`, checked against the model
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class StreamOptions(_Body):
    include_usage: bool = False


class TextFormat(_Body):
    type: Literal["text"]


class JsonObjectFormat(_Body):
    type: Literal["json_object"]
    # llama-server's extension: a JSON object that also matches this schema.
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")


class JsonSchema(_Body):
    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
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


class SamplingFields(_Body):
    """The sampling parameters chat and completions share."""

    model: str = Field(min_length=1)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1, le=MAX_N)  # up to the model's `parallel`
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    user: str | None = Field(default=None, max_length=256)
    # llama.cpp extensions
    top_k: int | None = Field(default=None, ge=0, le=1_000_000)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, gt=0.0, le=10.0)

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        items = [stop] if isinstance(stop, str) else (stop or [])
        if len(items) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are supported")
        if any(not s for s in items):
            raise ValueError("stop sequences must not be empty")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for key, value in (bias or {}).items():
            if not key.isdigit():
                raise ValueError(f"keys must be token ids, got {key!r}")
            if not -100.0 <= value <= 100.0:
                raise ValueError(f"bias for token {key} must be between -100 and 100")
        return bias

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(
        cls, options: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        if options is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed when stream is true")
        return options

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


TokenIds = list[Annotated[int, Field(ge=0)]]
MAX_PROMPTS = 16  # prompts per completions request; each is its own generation


class CompletionRequest(SamplingFields):
    # A string, a list of strings, a list of token ids, or a list of lists of token ids.
    prompt: str | list[str] | TokenIds | list[TokenIds]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions
    echo: bool | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, prompt: Any) -> Any:
        if isinstance(prompt, list):
            if not prompt:
                raise ValueError("prompt must not be an empty list")
            if isinstance(prompt[0], list | str) and len(prompt) > MAX_PROMPTS:
                raise ValueError(f"at most {MAX_PROMPTS} prompts per request are supported")
        return prompt

    @field_validator("echo", "suffix", "best_of")
    @classmethod
    def _unsupported(cls, value: object, info: ValidationInfo) -> object:
        if value and not (info.field_name == "best_of" and value == 1):
            raise ValueError(f"{info.field_name} is not supported")
        return value

    def logprobs_wanted(self) -> int | None:
        return self.logprobs

    def prompts(self) -> list[str | list[int]]:
        """Each prompt, as text or as token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(item, int) for item in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class EmbeddingRequest(_Body):
    # A string, a list of strings, a list of token ids, or a list of lists of token ids.
    input: str | list[str] | TokenIds | list[TokenIds]
    model: str = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=256)

    @field_validator("input")
    @classmethod
    def _inputs(cls, value: Any) -> Any:
        items = _inputs_of(value)
        if not items:
            raise ValueError("input must not be an empty list")
        if len(items) > 2048:
            raise ValueError("at most 2048 inputs per request")
        if any(len(item) == 0 for item in items):
            raise ValueError("input must not contain empty strings or token lists")
        return value

    def inputs(self) -> list[str | list[int]]:
        """Each input, as text or as token ids."""
        return _inputs_of(self.input)


def _inputs_of(value: Any) -> list[str | list[int]]:
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(item, int) for item in value):
        return [list(value)]
    return list(value)
