"""The request lifecycle every generating endpoint of every dialect shares: start the metered
generation, then stream it as SSE or collect it into one body, cancelling (and metering what
was generated) when the client goes away.

Everything a client can get wrong is checked before `respond()`; from here on the only failures
are the engine's or the meter's. A stream's status is 200 from its first byte, so failures after
it are said in-band, as the dialect says them (`Renderer.failure`: OpenAI's `error` object, the
Responses API's `response.failed`, Anthropic's `error` event). The dialect's `Renderer` turns
events into its objects; the same renderer is fed the same events whether the client streams or
not, so both answers agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from node.api.errors import ApiError, context_overflow, to_api_error
from node.engine.interface import (
    ContextOverflow,
    Finished,
    GenerationEngine,
    SamplingParams,
    TextDelta,
)
from node.service import (
    Admission,
    MeteredGeneration,
    MeterUnavailable,
    NodeService,
    RejectedByModel,
)

PING_S = 15
log = logging.getLogger("node.api")


# What a renderer streams: a `data:` line of JSON, or a named SSE event (Responses, Anthropic).
StreamItem = BaseModel | dict[str, Any] | ServerSentEvent


class Renderer(Protocol):
    """One dialect's view of one request. Each method returns the stream objects to send now
    (ignored when the client does not stream); `body()` is the whole non-streamed answer.
    `failure()` is how the dialect says in-band that a started stream failed, `done` the data
    line that ends a stream (OpenAI's `[DONE]`; None: nothing)."""

    done: str | None

    def opening(self) -> list[StreamItem]: ...

    def delta(self, index: int, delta: TextDelta) -> list[StreamItem]: ...

    def finished(self, index: int, finished: Finished) -> list[StreamItem]: ...

    def closing(self, generation: MeteredGeneration) -> list[StreamItem]: ...

    def failure(self, error: ApiError) -> list[StreamItem]: ...

    def body(self, generation: MeteredGeneration) -> BaseModel: ...


class OpenAIStreamEnd:
    """Chat and completions streams: an error is a bare `{"error": ...}` event, then nothing;
    a complete stream ends with `data: [DONE]`."""

    done: str | None = "[DONE]"

    def failure(self, error: ApiError) -> list[StreamItem]:
        return [error.body()]


@dataclass(frozen=True)
class GenerationJob:
    """A validated request, ready to run."""

    admission: Admission
    prompts: list[list[int]]  # one or more prompts; each gets `n` choices
    params: SamplingParams
    n: int
    stream: bool
    prompt_param: str  # what a context overflow blames: "messages" or "prompt"


def created_now() -> int:
    return int(time.time())


def _json(item: BaseModel | dict[str, Any]) -> str:
    data = item.model_dump(mode="json") if isinstance(item, BaseModel) else item
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _event(item: StreamItem) -> str | ServerSentEvent:
    return item if isinstance(item, ServerSentEvent) else _json(item)


def named_event(name: str, data: BaseModel | dict[str, Any]) -> ServerSentEvent:
    """`event: <name>` with its JSON `data:` line."""
    return ServerSentEvent(data=_json(data), event=name)


def client_reason(finished: Finished) -> str:
    return finished.reason if finished.reason in ("stop", "length") else "stop"


def engine_failure(finished: Finished) -> ApiError:
    return ApiError(
        500,
        f"The model failed while generating: {finished.error or 'unknown error'}",
        type="server_error",
        code="engine_error",
    )


async def respond(
    request: Request,
    service: NodeService,
    engine: GenerationEngine,
    job: GenerationJob,
    renderer: Renderer,
) -> Response:
    if any(not prompt for prompt in job.prompts):
        raise ApiError(400, "The prompt is empty.", param=job.prompt_param)
    try:
        generation = await service.generate(job.admission, engine, job.prompts, job.params, job.n)
    except ContextOverflow as exc:
        raise context_overflow(exc, job.prompt_param) from None
    except RejectedByModel as exc:
        if exc.param is None:
            exc.param = _rejected_param(engine, job.params)
        raise
    if job.stream:
        return EventSourceResponse(_stream(generation, renderer), ping=PING_S, sep="\n")
    return await _collect(request, generation, renderer)


def _rejected_param(engine: GenerationEngine, params: SamplingParams) -> str | None:
    """The field the engine refused. Only on this error path: each part the client set is
    validated alone until one fails."""
    parts = (
        ("logit_bias", SamplingParams(logit_bias=params.logit_bias) if params.logit_bias else None),
        ("response_format", SamplingParams(grammar=params.grammar) if params.grammar else None),
    )
    for name, alone in parts:
        if alone is None:
            continue
        try:
            engine.validate(alone)
        except ValueError:
            return name
    return None


async def _stream(
    generation: MeteredGeneration, renderer: Renderer
) -> AsyncIterator[str | ServerSentEvent]:
    try:
        for item in renderer.opening():
            yield _event(item)
        async for index, event in generation.events():
            if isinstance(event, TextDelta):
                for item in renderer.delta(index, event):
                    yield _event(item)
                continue
            if event.reason == "error":
                for item in renderer.failure(engine_failure(event)):
                    yield _event(item)
                return
            for item in renderer.finished(index, event):
                yield _event(item)
        for item in renderer.closing(generation):
            yield _event(item)
        if renderer.done is not None:
            yield renderer.done
    except MeterUnavailable as exc:
        for item in renderer.failure(to_api_error(exc)):
            yield _event(item)
    except Exception as exc:  # an engine bug: the status is already 200, so say it in-band
        log.error("generation %s failed", generation.request_id, exc_info=exc)
        await generation.aclose(status="error")
        error = ApiError(500, "The server had an error while generating.", type="server_error",
                         code="engine_error")  # fmt: skip
        for item in renderer.failure(error):
            yield _event(item)
    finally:
        # The client may be gone (CancelledError): still meter what was generated.
        with anyio.CancelScope(shield=True):
            await generation.aclose()


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect(request: Request, generation: MeteredGeneration, renderer: Renderer) -> Response:
    """The whole completion as one body; a client that leaves early cancels it."""

    async def consume() -> Finished | None:
        failed: Finished | None = None
        async for index, event in generation.events():
            if isinstance(event, TextDelta):
                renderer.delta(index, event)
            elif event.reason == "error":
                failed = failed or event
            else:
                renderer.finished(index, event)
        return failed

    consumer = asyncio.ensure_future(consume())
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({consumer, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not consumer.done():
            consumer.cancel()
            with contextlib.suppress(BaseException):
                await consumer
            await generation.aclose()
        elif not consumer.cancelled() and consumer.exception() is not None:
            await generation.aclose(status="error")  # no-op once the engine said Finished
    if consumer.cancelled():
        return Response(status_code=499)  # nobody is listening any more
    failed = consumer.result()
    if failed is not None:
        raise engine_failure(failed)
    return JSONResponse(renderer.body(generation).model_dump(mode="json"))
