"""`POST /v1/completions`: validate, tokenize the prompt, run, answer."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from node.api.context import request_id_of
from node.api.generation import GenerationJob, created_now, respond, tokenize
from node.api.protocol import CompletionRequest
from node.api.routing import authenticate, read_body
from node.service import Admission


class CompletionShape:
    """`text_completion` objects, streamed or whole."""

    def __init__(self, request_id: str, model: str) -> None:
        self.id = f"cmpl-{request_id}"
        self.model = model
        self.created = created_now()

    def _object(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }

    def start_chunk(self) -> None:
        return None

    def delta_chunk(self, text: str) -> dict[str, Any]:
        return self._object([{"index": 0, "text": text, "logprobs": None, "finish_reason": None}])

    def finish_chunk(self, reason: str) -> dict[str, Any]:
        return self._object([{"index": 0, "text": "", "logprobs": None, "finish_reason": reason}])

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {**self._object([]), "usage": usage}

    def full(self, text: str, reason: str, usage: dict[str, Any]) -> dict[str, Any]:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return {**self._object([choice]), "usage": usage}


async def completions(request: Request) -> Response:
    service, key = authenticate(request)
    body = CompletionRequest.model_validate_json(await read_body(request))
    engine = service.generator(body.model)
    request_id = request_id_of(request.scope)
    job = GenerationJob(
        admission=Admission(request_id, key, "completions", body.user),
        prompt_tokens=tokenize(engine, body.prompt_text(), "prompt"),
        params=body.to_sampling_params(),
        stream=bool(body.stream),
        include_usage=body.include_usage,
        prompt_param="prompt",
        shape=CompletionShape(request_id, engine.info.id),
    )
    return await respond(request, service, engine, job)
