"""Serving for chat and completions: run a metered generation, as SSE or as one JSON body.

Everything a client can get wrong is checked by the caller before `respond()`; from here on the
only failures are the engine's or the meter's. A stream's status is 200 from its first byte, so
failures after it become an `error` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from node.api.errors import ApiError, context_overflow, invalid, to_api_error
from node.engine.interface import ContextOverflow, Finished, SamplingParams, TextDelta, TokenCounts
from node.meter import Bill
from node.service import (
    Admission,
    MeteredGeneration,
    MeterUnavailable,
    NodeService,
    RejectedByModel,
)

PING_S = 15
log = logging.getLogger("node.api")


def usage_body(counts: TokenCounts, bill: Bill | None) -> dict[str, Any]:
    """OpenAI's usage object; `cost` (exact decimal string) and `currency` when priced."""
    usage: dict[str, Any] = {
        "prompt_tokens": counts.prompt_tokens,
        "completion_tokens": counts.completion_tokens,
        "total_tokens": counts.prompt_tokens + counts.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": counts.cached_tokens},
    }
    if bill is not None and bill.priced:
        usage["cost"] = format(bill.cost, "f")
        usage["currency"] = bill.currency
    return usage


class ResponseShape(Protocol):
    """How one endpoint words its chunks and its full response."""

    def start_chunk(self) -> dict[str, Any] | None: ...

    def delta_chunk(self, text: str) -> dict[str, Any]: ...

    def finish_chunk(self, reason: str) -> dict[str, Any]: ...

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]: ...

    def full(self, text: str, reason: str, usage: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class GenerationJob:
    """A validated request, ready to run."""

    admission: Admission
    prompt_tokens: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool
    shape: ResponseShape
    prompt_param: str  # what a context overflow blames: "messages" or "prompt"


def tokenize(engine: Any, text: str, param: str) -> list[int]:
    try:
        return engine.tokenize(text)
    except ValueError as exc:
        raise invalid(f"The {param} cannot be tokenized: {exc}", param) from None


def _event(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _client_reason(finished: Finished) -> str:
    return finished.reason if finished.reason in ("stop", "length") else "stop"


async def respond(
    request: Request, service: NodeService, engine: Any, job: GenerationJob
) -> Response:
    if not job.prompt_tokens:
        raise invalid("The prompt is empty.", job.prompt_param)
    try:
        generation = await service.generate(job.admission, engine, job.prompt_tokens, job.params)
    except ContextOverflow as exc:
        raise context_overflow(exc, job.prompt_param) from None
    except RejectedByModel as exc:
        raise _rejected(engine, job.params, exc) from None
    if job.stream:
        return EventSourceResponse(_stream(generation, job), ping=PING_S, sep="\n")
    return await _collect(request, generation, job)


def _rejected(engine: Any, params: SamplingParams, exc: RejectedByModel) -> ApiError:
    """The engine's refusal, naming the field it refused. Only on this error path: each part
    the client set is validated alone until one fails."""
    parts = (
        ("logit_bias", SamplingParams(logit_bias=params.logit_bias) if params.logit_bias else None),
        ("response_format", SamplingParams(grammar=params.grammar) if params.grammar else None),
    )
    param = None
    for name, alone in parts:
        if alone is None:
            continue
        try:
            engine.validate(alone)
        except ValueError:
            param = name
            break
    return ApiError(
        400, f"The model cannot run this request: {exc}", param=param, code="invalid_value"
    )


async def _stream(generation: MeteredGeneration, job: GenerationJob):  # type: ignore[no-untyped-def]
    shape = job.shape
    try:
        start = shape.start_chunk()
        if start is not None:
            yield _event(start)
        async for event in generation.events():
            if isinstance(event, TextDelta):
                if event.text:
                    yield _event(shape.delta_chunk(event.text))
                continue
            if event.reason == "error":
                yield _event(_engine_failure(event).body())
                return
            yield _event(shape.finish_chunk(_client_reason(event)))
            if job.include_usage:
                yield _event(shape.usage_chunk(usage_body(event.counts, generation.bill)))
        yield "[DONE]"
    except MeterUnavailable as exc:
        yield _event(to_api_error(exc).body())
    except Exception as exc:  # an engine bug: the status is already 200, so say it in-band
        log.error("generation %s failed", generation.request_id, exc_info=exc)
        await generation.aclose(status="error")
        yield _event(ApiError(500, "The server had an error while generating.",
                              type="server_error", code="engine_error").body())  # fmt: skip
    finally:
        # The client may be gone (CancelledError): still meter what was generated.
        with anyio.CancelScope(shield=True):
            await generation.aclose()


def _engine_failure(finished: Finished) -> ApiError:
    return ApiError(
        500,
        f"The model failed while generating: {finished.error or 'unknown error'}",
        type="server_error",
        code="engine_error",
    )


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect(request: Request, generation: MeteredGeneration, job: GenerationJob) -> Response:
    """The whole completion as one body; a client that leaves early cancels it."""

    async def consume() -> tuple[str, Finished]:
        parts: list[str] = []
        async for event in generation.events():
            if isinstance(event, TextDelta):
                parts.append(event.text)
            else:
                return "".join(parts), event
        raise RuntimeError("generation ended without Finished")

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
    text, finished = consumer.result()
    if finished.reason == "error":
        raise _engine_failure(finished)
    usage = usage_body(finished.counts, generation.bill)
    return JSONResponse(job.shape.full(text, _client_reason(finished), usage))


def created_now() -> int:
    return int(time.time())
