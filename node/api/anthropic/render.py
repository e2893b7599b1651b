"""`POST /v1/messages` and `/v1/messages/count_tokens`: the conversation runs as a chat request
(same template, tools, output processor and metered generation); its parts are rendered as
Anthropic content blocks.

Usage follows Anthropic's meaning: `input_tokens` are the prompt tokens decoded, beside
`cache_read_input_tokens` (the cached prefix), so their sum is the meter row's prompt tokens.
`count_tokens` renders and tokenizes only: free and unmetered (no row), like Anthropic's.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from node.api.anthropic.objects import AnthropicMessage, TokenCount
from node.api.anthropic.protocol import CountTokensRequest, MessagesRequest, _Conversation
from node.api.context import request_id_of
from node.api.envelopes import anthropic_body
from node.api.errors import ApiError, from_validation, invalid
from node.api.lifecycle import GenerationJob, StreamItem, named_event, respond
from node.api.openai.chat import prepare_chat
from node.api.openai.chat_protocol import ChatCompletionRequest
from node.api.openai.tools import OutputPlan, plan_output, render_prompt
from node.api.output_feed import OutputFeed
from node.api.routing import authenticate, read_body
from node.engine.interface import Finished, GenerationEngine, TextDelta
from node.output import (
    ContentText,
    Part,
    ReasoningText,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    merge_parts,
)
from node.service import Admission, MeteredGeneration, NodeService


def _usage(generation: MeteredGeneration) -> dict[str, Any]:
    assert generation.finished is not None
    counts = generation.finished.counts
    usage: dict[str, Any] = {
        "input_tokens": counts.prompt_tokens - counts.cached_tokens,
        "output_tokens": counts.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": counts.cached_tokens,
    }
    bill = generation.bill
    if bill is not None and bill.priced:
        usage["cost"], usage["currency"] = format(bill.cost, "f"), bill.currency
    return usage


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}  # a call cut off by max_tokens
    return value if isinstance(value, dict) else {"value": value}


class MessagesRenderer:
    """Implements `lifecycle.Renderer` for Anthropic Messages (one choice)."""

    done: str | None = None

    def __init__(self, request_id: str, model: str, plan: OutputPlan, n_prompt: int) -> None:
        self.id = f"msg_{request_id}"
        self.model = model
        self.n_prompt = n_prompt
        self.feed = OutputFeed(plan)
        self.blocks: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None
        self._calls: dict[int, dict[str, Any]] = {}
        self._args: dict[int, str] = {}
        self._held_space = ""
        self.stop_reason = "end_turn"
        self.stop_sequence: str | None = None

    def _start(self, block: dict[str, Any]) -> list[StreamItem]:
        events = self._stop()
        self.blocks.append(block)
        self._open = block
        start = dict(block, input={}) if block["type"] == "tool_use" else dict(block)
        data = {
            "type": "content_block_start",
            "index": len(self.blocks) - 1,
            "content_block": start,
        }
        return [*events, named_event("content_block_start", data)]

    def _stop(self) -> list[StreamItem]:
        if self._open is None:
            return []
        self._open = None
        index = len(self.blocks) - 1
        return [named_event("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _delta(self, delta: dict[str, Any]) -> StreamItem:
        data = {"type": "content_block_delta", "index": len(self.blocks) - 1, "delta": delta}
        return named_event("content_block_delta", data)

    def _parts(self, parts: list[Part]) -> list[StreamItem]:
        events: list[StreamItem] = []
        for part in merge_parts(parts):
            block = self._open
            if isinstance(part, ContentText):
                if block is None or block["type"] != "text":
                    if not part.text.strip():
                        self._held_space += part.text
                        continue
                    events += self._start({"type": "text", "text": ""})
                    block = self._open
                assert block is not None
                text, self._held_space = self._held_space + part.text, ""
                block["text"] += text
                events.append(self._delta({"type": "text_delta", "text": text}))
            elif isinstance(part, ReasoningText):
                if block is None or block["type"] != "thinking":
                    events += self._start({"type": "thinking", "thinking": "", "signature": ""})
                    block = self._open
                assert block is not None
                block["thinking"] += part.text
                events.append(self._delta({"type": "thinking_delta", "thinking": part.text}))
            elif isinstance(part, ToolCallStart):
                self._held_space = ""
                call = {"type": "tool_use", "id": part.id, "name": part.name, "input": {}}
                self._calls[part.index], self._args[part.index] = call, ""
                events += self._start(call)
            elif isinstance(part, ToolCallArgs):
                self._args[part.index] += part.fragment
                events.append(self._delta({"type": "input_json_delta",
                                           "partial_json": part.fragment}))  # fmt: skip
            elif isinstance(part, ToolCallEnd) and block is self._calls.get(part.index):
                block["input"] = _arguments(self._args[part.index])
                events += self._stop()
        return events

    def _message(self, content: list[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }

    def opening(self) -> list[StreamItem]:
        usage = {"input_tokens": self.n_prompt, "output_tokens": 0,
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}  # fmt: skip
        start = {"type": "message_start", "message": self._message([], usage)}
        return [named_event("message_start", start), named_event("ping", {"type": "ping"})]

    def delta(self, index: int, delta: TextDelta) -> list[StreamItem]:
        return self._parts(self.feed.feed(delta))

    def finished(self, index: int, finished: Finished) -> list[StreamItem]:
        result = self.feed.finish()
        events = self._parts(result.parts)
        for i, call in self._calls.items():
            call["input"] = _arguments(self._args[i])
        if finished.reason == "length":
            self.stop_reason = "max_tokens"
        elif result.tool_calls:
            self.stop_reason = "tool_use"
        elif finished.stop == "word":
            self.stop_reason, self.stop_sequence = "stop_sequence", finished.stop_word
        return events + self._stop()

    def closing(self, generation: MeteredGeneration) -> list[StreamItem]:
        delta = {"type": "message_delta",
                 "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
                 "usage": _usage(generation)}  # fmt: skip
        return [named_event("message_delta", delta),
                named_event("message_stop", {"type": "message_stop"})]  # fmt: skip

    def failure(self, error: ApiError) -> list[StreamItem]:
        return [named_event("error", anthropic_body(error.status, str(error)))]

    def body(self, generation: MeteredGeneration) -> AnthropicMessage:
        message = self._message(self.blocks, _usage(generation))
        message["stop_reason"], message["stop_sequence"] = self.stop_reason, self.stop_sequence
        return AnthropicMessage.model_validate(message)


def _as_chat(conversation: _Conversation, engine: GenerationEngine) -> ChatCompletionRequest:
    problem = conversation.problem()
    if problem is not None:
        message, param = problem
        raise invalid(f"Invalid value for '{param}': {message}.", param, "invalid_value")
    body = conversation.to_chat()
    thinking = conversation.thinking
    template = engine.chat_template or ""
    if thinking is not None and "enable_thinking" in template:
        body["chat_template_kwargs"] = {"enable_thinking": thinking.type != "disabled"}
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        error = from_validation(exc)
    raise ApiError(400, str(error), param=error.param, code=error.code)


async def messages(request: Request) -> Response:
    service, key = authenticate(request)
    body = MessagesRequest.model_validate_json(await read_body(request))
    engine = service.generator(body.model)
    prompt, plan, params = prepare_chat(service, engine, _as_chat(body, engine))
    request_id = request_id_of(request.scope)
    user = body.metadata.user_id if body.metadata else None
    job = GenerationJob(
        admission=Admission(request_id, key, "messages", user),
        prompts=[prompt],
        params=params,
        n=1,
        stream=bool(body.stream),
        prompt_param="messages",
    )
    renderer = MessagesRenderer(request_id, engine.info.id, plan, len(prompt))
    return await respond(request, service, engine, job, renderer)


def count(service: NodeService, engine: GenerationEngine, chat: ChatCompletionRequest) -> int:
    prompt, _plan = render_prompt(chat, engine, plan_output(chat, engine))
    return len(service.prompt_tokens(engine, prompt, "messages"))


async def count_tokens(request: Request) -> Response:
    service, _key = authenticate(request)
    body = CountTokensRequest.model_validate_json(await read_body(request))
    engine = service.generator(body.model)
    counted = TokenCount(input_tokens=count(service, engine, _as_chat(body, engine)))
    return JSONResponse(counted.model_dump(mode="json"))
