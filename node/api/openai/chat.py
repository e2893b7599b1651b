"""`POST /v1/chat/completions`: validate, render the chat template, run, answer.

The stream and the whole answer are built from the same events, so they always agree.
"""

from __future__ import annotations

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from node.api.context import request_id_of
from node.api.errors import invalid
from node.api.lifecycle import GenerationJob, client_reason, created_now, respond
from node.api.openai.chat_protocol import ChatCompletionRequest
from node.api.openai.grammars import grammar_for
from node.api.openai.logprobs import chat_logprobs
from node.api.openai.responses import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChunkChoice,
    Delta,
    Message,
    Usage,
    usage_of,
)
from node.api.routing import authenticate, read_body
from node.engine.interface import Finished, SampledLogprob, TextDelta
from node.service import Admission, MeteredGeneration


class _Choice:
    """What one choice has produced so far."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.logprobs: list[SampledLogprob] = []
        self.reason = "stop"


class ChatRenderer:
    """`chat.completion` and `chat.completion.chunk` objects (implements `lifecycle.Renderer`)."""

    def __init__(
        self, request_id: str, model: str, n: int, *, logprobs: bool, include_usage: bool
    ) -> None:
        self.id = f"chatcmpl-{request_id}"
        self.model = model
        self.created = created_now()
        self.with_logprobs = logprobs
        self.include_usage = include_usage
        self.choices = [_Choice() for _ in range(n)]

    def _chunk(self, choice: ChunkChoice) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[choice]
        )

    def opening(self) -> list[BaseModel]:
        return [
            self._chunk(ChunkChoice(index=i, delta=Delta(role="assistant", content="")))
            for i in range(len(self.choices))
        ]

    def delta(self, index: int, delta: TextDelta) -> list[BaseModel]:
        choice = self.choices[index]
        choice.text.append(delta.text)
        logprobs = None
        if self.with_logprobs and delta.logprobs:
            choice.logprobs.extend(delta.logprobs)
            logprobs = chat_logprobs(delta.logprobs)
        if not delta.text and logprobs is None:
            return []
        choice_delta = ChunkChoice(index=index, delta=Delta(content=delta.text), logprobs=logprobs)
        return [self._chunk(choice_delta)]

    def finished(self, index: int, finished: Finished) -> list[BaseModel]:
        reason = client_reason(finished)
        self.choices[index].reason = reason
        return [self._chunk(ChunkChoice(index=index, delta=Delta(), finish_reason=reason))]

    def _usage(self, generation: MeteredGeneration) -> Usage:
        assert generation.finished is not None
        return usage_of(generation.finished.counts, generation.bill)

    def closing(self, generation: MeteredGeneration) -> list[BaseModel]:
        if not self.include_usage or generation.finished is None:
            return []
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[])
        chunk.usage = self._usage(generation)
        return [chunk]

    def body(self, generation: MeteredGeneration) -> BaseModel:
        choices = [
            ChatChoice(
                index=i,
                message=Message(content="".join(choice.text)),
                logprobs=chat_logprobs(choice.logprobs) if self.with_logprobs else None,
                finish_reason=choice.reason,
            )
            for i, choice in enumerate(self.choices)
        ]
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=self._usage(generation),
        )


async def chat_completions(request: Request) -> Response:
    service, key = authenticate(request)
    body = ChatCompletionRequest.model_validate_json(await read_body(request))
    engine = service.generator(body.model)
    problem = body.first_problem()
    if problem is not None:
        message, param = problem
        code = "unsupported" if "image" in message else "invalid_value"
        raise invalid(f"Invalid value for '{param}': {message}.", param, code)
    try:
        prompt = engine.render_chat(
            body.engine_messages(),
            tools=body.engine_tools(),
            template_kwargs=body.chat_template_kwargs,
        )
    except ValueError as exc:
        param = "chat_template_kwargs" if "template variable" in str(exc) else "messages"
        raise invalid(f"The messages cannot be formatted for this model: {exc}", param) from None
    if body.tools and body.tool_choice != "none":
        raise invalid("tools are not supported yet.", "tools", "unsupported")
    grammar = grammar_for(body.response_format)
    request_id = request_id_of(request.scope)
    n = body.choices()
    job = GenerationJob(
        admission=Admission(request_id, key, "chat.completions", body.user),
        prompts=[service.prompt_tokens(engine, prompt, "messages")],
        params=body.to_sampling_params(grammar),
        n=n,
        stream=bool(body.stream),
        prompt_param="messages",
    )
    renderer = ChatRenderer(
        request_id,
        engine.info.id,
        n,
        logprobs=bool(body.logprobs),
        include_usage=body.include_usage,
    )
    return await respond(request, service, engine, job, renderer)
