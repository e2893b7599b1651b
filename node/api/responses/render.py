"""`POST /v1/responses`: the request runs as a chat request (same template, tools, output
processor and metered generation); its parts are rendered as Responses output items.

Streamed, each item is announced (`response.output_item.added`), filled by deltas and closed
(`...done`); whole, the same items are the `output`. Whitespace between tool calls opens no
message item (it is held until text follows).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from node.api.context import request_id_of
from node.api.errors import ApiError, from_validation, invalid
from node.api.lifecycle import GenerationJob, StreamItem, created_now, named_event, respond
from node.api.openai.chat import prepare_chat
from node.api.openai.chat_protocol import ChatCompletionRequest
from node.api.openai.tools import OutputPlan
from node.api.output_feed import OutputFeed
from node.api.responses.objects import (
    FunctionCallOut,
    IncompleteDetails,
    MessageOut,
    OutputItem,
    OutputTextPart,
    ReasoningOut,
    ReasoningTextPart,
    ResponseError,
    ResponseObject,
    usage_of,
)
from node.api.responses.protocol import ResponsesRequest
from node.api.routing import authenticate, read_body
from node.engine.interface import Finished, TextDelta
from node.output import (
    ContentText,
    Part,
    ReasoningText,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    merge_parts,
)
from node.service import Admission, MeteredGeneration


class ResponsesRenderer:
    """Implements `lifecycle.Renderer` for the Responses API (one choice)."""

    done: str | None = None  # the stream ends with response.completed, no [DONE]

    def __init__(self, request_id: str, model: str, plan: OutputPlan, body: ResponsesRequest):
        self.id = f"resp_{request_id}"
        self._rid = request_id
        self.model = model
        self.created = created_now()
        self.request = body
        self.feed = OutputFeed(plan)
        self.items: list[OutputItem] = []
        self._open: OutputItem | None = None
        self._call_items: dict[int, FunctionCallOut] = {}
        self._held_space = ""
        self._sequence = 0
        self.status = "completed"

    # -- events ---------------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> StreamItem:
        data = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        return named_event(kind, data)

    def _dump(self, item: OutputItem) -> dict[str, Any]:
        return item.model_dump(mode="json")

    def _add(self, item: OutputItem) -> list[StreamItem]:
        self.items.append(item)
        self._open = item
        index = len(self.items) - 1
        events = [self._event("response.output_item.added", output_index=index,
                              item=self._dump(item))]  # fmt: skip
        if isinstance(item, MessageOut):
            item.content.append(OutputTextPart(text=""))
            part = OutputTextPart(text="").model_dump(mode="json")
            events.append(self._event("response.content_part.added", item_id=item.id,
                                      output_index=index, content_index=0, part=part))  # fmt: skip
        elif isinstance(item, ReasoningOut):
            item.content.append(ReasoningTextPart(text=""))
        return events

    def _close(self, status: str = "completed") -> list[StreamItem]:
        item, self._open = self._open, None
        if item is None:
            return []
        index = self.items.index(item)
        item.status = status  # type: ignore[assignment]
        events: list[StreamItem] = []
        if isinstance(item, MessageOut):
            part = item.content[0]
            events.append(self._event("response.output_text.done", item_id=item.id,
                                      output_index=index, content_index=0, text=part.text,
                                      logprobs=[]))  # fmt: skip
            events.append(self._event("response.content_part.done", item_id=item.id,
                                      output_index=index, content_index=0,
                                      part=part.model_dump(mode="json")))  # fmt: skip
        elif isinstance(item, ReasoningOut):
            events.append(self._event("response.reasoning_text.done", item_id=item.id,
                                      output_index=index, content_index=0,
                                      text=item.content[0].text))  # fmt: skip
        else:
            events.append(self._event("response.function_call_arguments.done", item_id=item.id,
                                      output_index=index, name=item.name,
                                      arguments=item.arguments))  # fmt: skip
        events.append(self._event("response.output_item.done", output_index=index,
                                  item=self._dump(item)))  # fmt: skip
        return events

    def _item_id(self, prefix: str) -> str:
        return f"{prefix}_{self._rid}_{len(self.items)}"

    def _text(self, text: str) -> list[StreamItem]:
        events: list[StreamItem] = []
        if not isinstance(self._open, MessageOut):
            if not text.strip():
                self._held_space += text
                return []
            events += self._close()
            events += self._add(MessageOut(id=self._item_id("msg"), status="in_progress",
                                           content=[]))  # fmt: skip
            text, self._held_space = self._held_space + text, ""
        item = self._open
        assert isinstance(item, MessageOut)
        item.content[0].text += text
        events.append(self._event("response.output_text.delta", item_id=item.id,
                                  output_index=len(self.items) - 1, content_index=0, delta=text,
                                  logprobs=[]))  # fmt: skip
        return events

    def _reasoning(self, text: str) -> list[StreamItem]:
        events: list[StreamItem] = []
        if not isinstance(self._open, ReasoningOut):
            events += self._close()
            events += self._add(ReasoningOut(id=self._item_id("rs"), status="in_progress",
                                             content=[]))  # fmt: skip
        item = self._open
        assert isinstance(item, ReasoningOut)
        item.content[0].text += text
        events.append(self._event("response.reasoning_text.delta", item_id=item.id,
                                  output_index=len(self.items) - 1, content_index=0,
                                  delta=text))  # fmt: skip
        return events

    def _parts(self, parts: list[Part]) -> list[StreamItem]:
        events: list[StreamItem] = []
        for part in merge_parts(parts):
            if isinstance(part, ContentText):
                events += self._text(part.text)
            elif isinstance(part, ReasoningText):
                events += self._reasoning(part.text)
            elif isinstance(part, ToolCallStart):
                events += self._close()
                self._held_space = ""
                call = FunctionCallOut(id=self._item_id("fc"), call_id=part.id, name=part.name,
                                       arguments="", status="in_progress")  # fmt: skip
                self._call_items[part.index] = call
                events += self._add(call)
            elif isinstance(part, ToolCallArgs):
                call = self._call_items[part.index]
                call.arguments += part.fragment
                events.append(self._event("response.function_call_arguments.delta",
                                          item_id=call.id, output_index=self.items.index(call),
                                          delta=part.fragment))  # fmt: skip
            elif isinstance(part, ToolCallEnd) and self._open is self._call_items.get(part.index):
                events += self._close("completed" if part.complete else "incomplete")
        return events

    # -- Renderer -------------------------------------------------------------------------------

    def _object(self, status: str, generation: MeteredGeneration | None = None) -> ResponseObject:
        req = self.request
        fmt = req.text.format if req.text and req.text.format else None
        choice: Any = req.tool_choice or "auto"
        if not isinstance(choice, str):
            choice = choice.model_dump()
        text_format = fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}
        usage = None
        if generation is not None and generation.finished is not None:
            usage = usage_of(generation.finished.counts, generation.bill,
                             self.feed.reasoning_tokens)  # fmt: skip
        return ResponseObject(
            id=self.id,
            created_at=self.created,
            status=status,  # type: ignore[arg-type]
            incomplete_details=(
                IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None
            ),
            instructions=req.instructions,
            max_output_tokens=req.max_output_tokens,
            model=self.model,
            output=list(self.items) if status != "in_progress" else [],
            parallel_tool_calls=req.parallel_tool_calls is not False,
            temperature=1.0 if req.temperature is None else req.temperature,
            text={"format": text_format},
            tool_choice=choice,
            tools=[t.model_dump(exclude_none=True) for t in req.tools or ()],
            top_p=1.0 if req.top_p is None else req.top_p,
            usage=usage,
            user=req.user,
            metadata=dict(req.metadata or {}),
        )

    def opening(self) -> list[StreamItem]:
        snapshot = self._object("in_progress").model_dump(mode="json")
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def delta(self, index: int, delta: TextDelta) -> list[StreamItem]:
        return self._parts(self.feed.feed(delta))

    def finished(self, index: int, finished: Finished) -> list[StreamItem]:
        result = self.feed.finish()
        events = self._parts(result.parts)
        self.status = "incomplete" if finished.reason == "length" else "completed"
        return events + self._close(self.status)

    def closing(self, generation: MeteredGeneration) -> list[StreamItem]:
        kind = "response.incomplete" if self.status == "incomplete" else "response.completed"
        response = self._object(self.status, generation).model_dump(mode="json")
        return [self._event(kind, response=response)]

    def failure(self, error: ApiError) -> list[StreamItem]:
        code = error.code if error.code == "context_length_exceeded" else None
        code = code or ("rate_limit_exceeded" if error.status == 429 else "server_error")
        failed = self._object("failed")
        failed.error = ResponseError(code=code, message=error.message)
        return [self._event("response.failed", response=failed.model_dump(mode="json"))]

    def body(self, generation: MeteredGeneration) -> ResponseObject:
        return self._object(self.status, generation)


def _as_chat(body: ResponsesRequest) -> ChatCompletionRequest:
    """The chat request it runs as; a problem the conversion finds blames `input`."""
    try:
        return ChatCompletionRequest.model_validate(body.to_chat())
    except ValidationError as exc:
        error = from_validation(exc)
    raise ApiError(400, error.message.replace("'messages", "'input"), param="input",
                   code=error.code)  # fmt: skip


async def responses(request: Request) -> Response:
    service, key = authenticate(request)
    body = ResponsesRequest.model_validate_json(await read_body(request))
    problem = body.first_problem()
    if problem is not None:
        message, param = problem
        raise invalid(f"Invalid value for '{param}': {message}.", param, "invalid_value")
    engine = service.generator(body.model)
    chat = _as_chat(body)
    try:
        prompt, plan, params = prepare_chat(service, engine, chat)
    except ApiError as exc:
        if exc.param and exc.param.startswith("messages"):
            exc.param = "input"
        elif exc.param == "response_format":
            exc.param = "text.format"
        raise
    request_id = request_id_of(request.scope)
    job = GenerationJob(
        admission=Admission(request_id, key, "responses", body.user),
        prompts=[prompt],
        params=params,
        n=1,
        stream=bool(body.stream),
        prompt_param="input",
    )
    renderer = ResponsesRenderer(request_id, engine.info.id, plan, body)
    return await respond(request, service, engine, job, renderer)
