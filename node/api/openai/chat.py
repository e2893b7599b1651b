"""`POST /v1/chat/completions`: validate, render the chat template (with tools), run, answer.

Each choice's text goes through its own output processor (`tools.OutputPlan`): reasoning and
tool calls come out as typed parts, rendered here as `message` fields or stream deltas. The
stream and the whole answer are built from the same parts, so they always agree.
"""

from __future__ import annotations

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from node.api.context import request_id_of
from node.api.errors import invalid
from node.api.lifecycle import GenerationJob, OpenAIStreamEnd, client_reason, created_now, respond
from node.api.openai.chat_protocol import ChatCompletionRequest
from node.api.openai.grammars import grammar_for
from node.api.openai.logprobs import chat_logprobs
from node.api.openai.responses import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChunkChoice,
    CompletionTokensDetails,
    Delta,
    Function,
    FunctionDelta,
    Message,
    ToolCallDelta,
    ToolCallOut,
    usage_of,
)
from node.api.openai.tools import OutputPlan, plan_output, render_prompt
from node.api.routing import authenticate, read_body
from node.engine.interface import (
    Finished,
    GenerationEngine,
    SampledLogprob,
    SamplingParams,
    TextDelta,
)
from node.output import (
    ContentText,
    Part,
    ProcessedOutput,
    ReasoningText,
    ToolCallArgs,
    ToolCallStart,
    merge_parts,
)
from node.service import Admission, MeteredGeneration, NodeService


class _Choice:
    """One choice's processor and what it has produced so far."""

    def __init__(self, plan: OutputPlan) -> None:
        self.processor = plan.processor()
        self.logprobs: list[SampledLogprob] = []
        self.reasoning_tokens = 0
        self.result: ProcessedOutput | None = None
        self.reason = "stop"


def _delta_of(parts: list[Part]) -> list[Delta]:
    """Stream deltas for parts: text joined, each tool-call part its own delta."""
    out: list[Delta] = []
    for part in merge_parts(parts):
        if isinstance(part, ContentText):
            out.append(Delta(content=part.text))
        elif isinstance(part, ReasoningText):
            out.append(Delta(reasoning_content=part.text))
        elif isinstance(part, ToolCallStart):
            call = ToolCallDelta(
                index=part.index,
                id=part.id,
                type="function",
                function=FunctionDelta(name=part.name, arguments=""),
            )
            out.append(Delta(tool_calls=[call]))
        elif isinstance(part, ToolCallArgs):
            call = ToolCallDelta(index=part.index, function=FunctionDelta(arguments=part.fragment))
            out.append(Delta(tool_calls=[call]))
    return out


class ChatRenderer(OpenAIStreamEnd):
    """`chat.completion` and `chat.completion.chunk` objects (implements `lifecycle.Renderer`)."""

    def __init__(
        self, request_id: str, model: str, plan: OutputPlan, n: int, *, include_usage: bool
    ) -> None:
        self.id = f"chatcmpl-{request_id}"
        self.model = model
        self.created = created_now()
        self.plan = plan
        self.include_usage = include_usage
        self.choices = [_Choice(plan) for _ in range(n)]

    def _chunk(self, choice: ChunkChoice) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=[choice]
        )

    def opening(self) -> list[BaseModel]:
        return [
            self._chunk(ChunkChoice(index=i, delta=Delta(role="assistant", content="")))
            for i in range(len(self.choices))
        ]

    def _chunks(
        self, index: int, parts: list[Part], logprobs: tuple[SampledLogprob, ...] | None
    ) -> list[BaseModel]:
        deltas = _delta_of(parts)
        lp = chat_logprobs(logprobs) if logprobs else None
        if lp is not None and not deltas:
            deltas = [Delta(content="")]  # logprobs of tokens that showed no text yet
        chunks: list[BaseModel] = []
        for n, delta in enumerate(deltas):
            logs = lp if n == 0 else None
            chunks.append(self._chunk(ChunkChoice(index=index, delta=delta, logprobs=logs)))
        return chunks

    def delta(self, index: int, delta: TextDelta) -> list[BaseModel]:
        choice = self.choices[index]
        was_reasoning = choice.processor.in_reasoning
        parts = choice.processor.feed(delta.text)
        if was_reasoning or choice.processor.in_reasoning:  # its closing tag counts too
            choice.reasoning_tokens += len(delta.tokens)
        if self.plan.logprobs and delta.logprobs:
            choice.logprobs.extend(delta.logprobs)
        return self._chunks(index, parts, delta.logprobs if self.plan.logprobs else None)

    def finished(self, index: int, finished: Finished) -> list[BaseModel]:
        choice = self.choices[index]
        choice.result = choice.processor.finish()
        reason = client_reason(finished)
        if choice.result.tool_calls and reason == "stop":
            reason = "tool_calls"
        choice.reason = reason
        chunks = self._chunks(index, choice.result.parts, None)
        chunks.append(self._chunk(ChunkChoice(index=index, delta=Delta(), finish_reason=reason)))
        return chunks

    def _usage(self, generation: MeteredGeneration) -> object:
        assert generation.finished is not None
        usage = usage_of(generation.finished.counts, generation.bill)
        reasoning = sum(c.reasoning_tokens for c in self.choices)
        if self.plan.think is not None:
            usage.completion_tokens_details = CompletionTokensDetails(reasoning_tokens=reasoning)
        return usage

    def closing(self, generation: MeteredGeneration) -> list[BaseModel]:
        if not self.include_usage or generation.finished is None:
            return []
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[])
        chunk.usage = self._usage(generation)  # type: ignore[assignment]
        return [chunk]

    def body(self, generation: MeteredGeneration) -> BaseModel:
        choices = []
        for i, choice in enumerate(self.choices):
            result = choice.result or choice.processor.finish()
            calls = [
                ToolCallOut(id=c.id, function=Function(name=c.name, arguments=c.arguments))
                for c in result.tool_calls
            ]
            content: str | None = result.content
            if calls and not content:
                content = None  # OpenAI: no text beside the calls
            message = Message(
                content=content,
                reasoning_content=result.reasoning or None,
                tool_calls=calls or None,
            )
            logprobs = chat_logprobs(choice.logprobs) if self.plan.logprobs else None
            choices.append(
                ChatChoice(
                    index=i,
                    message=message,
                    logprobs=logprobs,
                    finish_reason=choice.reason,
                )
            )
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=self._usage(generation),  # type: ignore[arg-type]
        )


def prepare_chat(
    service: NodeService, engine: GenerationEngine, body: ChatCompletionRequest
) -> tuple[list[int], OutputPlan, SamplingParams]:
    """A chat request's prompt tokens, output plan and sampling: what every dialect that speaks
    in messages (chat, Responses, Anthropic Messages) hands to the same metered generation."""
    problem = body.first_problem()
    if problem is not None:
        message, param = problem
        raise invalid(f"Invalid value for '{param}': {message}.", param, "invalid_value")
    prompt, plan = render_prompt(body, engine, plan_output(body, engine))
    grammar = grammar_for(body.response_format)
    if grammar is not None and plan.grammar is not None:
        raise invalid(
            "response_format cannot be combined with tool_choice 'required' or a named tool.",
            "response_format",
        )
    tokens = service.prompt_tokens(engine, prompt, "messages")
    return tokens, plan, plan.sampling(body.to_sampling_params(grammar))


async def chat_completions(request: Request) -> Response:
    service, key = authenticate(request)
    body = ChatCompletionRequest.model_validate_json(await read_body(request))
    engine = service.generator(body.model)
    prompt, plan, params = prepare_chat(service, engine, body)
    request_id = request_id_of(request.scope)
    n = body.choices()
    job = GenerationJob(
        admission=Admission(request_id, key, "chat.completions", body.user),
        prompts=[prompt],
        params=params,
        n=n,
        stream=bool(body.stream),
        prompt_param="messages",
    )
    renderer = ChatRenderer(request_id, engine.info.id, plan, n, include_usage=body.include_usage)
    return await respond(request, service, engine, job, renderer)
