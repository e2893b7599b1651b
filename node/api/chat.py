"""`POST /v1/chat/completions`: validate, render the chat template, run, answer."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from node.api.context import request_id_of
from node.api.errors import invalid
from node.api.generation import GenerationJob, created_now, respond, tokenize
from node.api.grammars import grammar_for
from node.api.protocol import ChatCompletionRequest
from node.api.routing import authenticate, read_body
from node.service import Admission


class ChatShape:
    """`chat.completion` and `chat.completion.chunk` objects."""

    def __init__(self, request_id: str, model: str) -> None:
        self.id = f"chatcmpl-{request_id}"
        self.model = model
        self.created = created_now()

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }

    def start_chunk(self) -> dict[str, Any]:
        delta = {"role": "assistant", "content": ""}
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    def delta_chunk(self, text: str) -> dict[str, Any]:
        delta = {"content": text}
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    def finish_chunk(self, reason: str) -> dict[str, Any]:
        return self._chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}])

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {**self._chunk([]), "usage": usage}

    def full(self, text: str, reason: str, usage: dict[str, Any]) -> dict[str, Any]:
        message = {"role": "assistant", "content": text, "refusal": None}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
            ],
            "usage": usage,
        }


async def chat_completions(request: Request) -> Response:
    service, key = authenticate(request)
    body = ChatCompletionRequest.model_validate_json(await read_body(request))
    engine = service.generator(body.model)
    grammar = grammar_for(body.response_format)
    try:
        prompt = engine.render_chat(body.template_messages())
    except ValueError as exc:
        raise invalid(
            f"The messages cannot be formatted for this model: {exc}", "messages"
        ) from None
    request_id = request_id_of(request.scope)
    job = GenerationJob(
        admission=Admission(request_id, key, "chat.completions", body.user),
        prompt_tokens=tokenize(engine, prompt, "messages"),
        params=body.to_sampling_params(grammar),
        stream=bool(body.stream),
        include_usage=body.include_usage,
        prompt_param="messages",
        shape=ChatShape(request_id, engine.info.id),
    )
    return await respond(request, service, engine, job)
