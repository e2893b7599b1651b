"""`POST /v1/completions`: validate, tokenize the prompts, run, answer."""

from __future__ import annotations

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from node.api.context import request_id_of
from node.api.lifecycle import GenerationJob, OpenAIStreamEnd, client_reason, created_now, respond
from node.api.openai.logprobs import CompletionLogprobsBuilder, merge_completion
from node.api.openai.protocol import CompletionRequest
from node.api.openai.responses import CompletionLogprobs, TextChoice, TextCompletion, usage_of
from node.api.routing import authenticate, read_body
from node.engine.interface import Finished, TextDelta
from node.service import Admission, MeteredGeneration


class _Choice:
    def __init__(self) -> None:
        self.text: list[str] = []
        self.logprobs: list[CompletionLogprobs] = []
        self.offsets = CompletionLogprobsBuilder()
        self.reason: str | None = None


class CompletionRenderer(OpenAIStreamEnd):
    """`text_completion` objects, streamed or whole (implements `lifecycle.Renderer`)."""

    def __init__(
        self, request_id: str, model: str, n: int, *, logprobs: bool, include_usage: bool
    ) -> None:
        self.id = f"cmpl-{request_id}"
        self.model = model
        self.created = created_now()
        self.with_logprobs = logprobs
        self.include_usage = include_usage
        self.choices = [_Choice() for _ in range(n)]

    def _object(self, choices: list[TextChoice]) -> TextCompletion:
        return TextCompletion(id=self.id, created=self.created, model=self.model, choices=choices)

    def opening(self) -> list[BaseModel]:
        return []

    def delta(self, index: int, delta: TextDelta) -> list[BaseModel]:
        choice = self.choices[index]
        choice.text.append(delta.text)
        logprobs = None
        if self.with_logprobs and delta.logprobs:
            logprobs = choice.offsets.build(delta.logprobs)
            choice.logprobs.append(logprobs)
        if not delta.text and logprobs is None:
            return []
        return [
            self._object(
                [TextChoice(index=index, text=delta.text, logprobs=logprobs, finish_reason=None)]
            )
        ]

    def finished(self, index: int, finished: Finished) -> list[BaseModel]:
        reason = client_reason(finished)
        self.choices[index].reason = reason
        return [self._object([TextChoice(index=index, text="", finish_reason=reason)])]

    def closing(self, generation: MeteredGeneration) -> list[BaseModel]:
        if not self.include_usage or generation.finished is None:
            return []
        usage = usage_of(generation.finished.counts, generation.bill)
        return [TextCompletion(id=self.id, created=self.created, model=self.model, choices=[],
                               usage=usage)]  # fmt: skip

    def body(self, generation: MeteredGeneration) -> BaseModel:
        assert generation.finished is not None
        choices = [
            TextChoice(
                index=i,
                text="".join(c.text),
                logprobs=merge_completion(c.logprobs) if self.with_logprobs else None,
                finish_reason=c.reason or "stop",
            )
            for i, c in enumerate(self.choices)
        ]
        completion = self._object(choices)
        completion.usage = usage_of(generation.finished.counts, generation.bill)
        return completion


async def completions(request: Request) -> Response:
    service, key = authenticate(request)
    body = CompletionRequest.model_validate_json(await read_body(request))
    engine = service.generator(body.model)
    request_id = request_id_of(request.scope)
    prompts = [service.prompt_tokens(engine, p, "prompt") for p in body.prompts()]
    n = body.choices()
    job = GenerationJob(
        admission=Admission(request_id, key, "completions", body.user),
        prompts=prompts,
        params=body.to_sampling_params(),
        n=n,
        stream=bool(body.stream),
        prompt_param="prompt",
    )
    renderer = CompletionRenderer(
        request_id,
        engine.info.id,
        len(prompts) * n,
        logprobs=body.logprobs is not None,
        include_usage=body.include_usage,
    )
    return await respond(request, service, engine, job, renderer)
