"""A submitted generation tied to its meter row: the one place a request's lifecycle lives.

The row is opened before this object exists; here it is checkpointed while tokens flow and
finished with the engine's exact counts, also when the client goes away (`aclose`). A request
with `n` choices is one row: the prompt is billed once, the completions summed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from typing import Protocol, TypeVar

from node.admission import Admitted
from node.engine.interface import Finished, Generation, GenerationEvent, TextDelta, TokenCounts
from node.meter import Bill, Meter, MeterUnavailable, Usage
from node.service.admission import Admission, UsageObserver

log = logging.getLogger("node.service")
T = TypeVar("T")

CHECKPOINT_EVERY = 16  # SPEC §4: a killed node loses at most this many counted tokens
DRAIN_TIMEOUT_S = 10.0  # how long a cancelled generation may take to report its final counts
_STATUS = {"stop": "ok", "length": "ok", "cancelled": "cancelled", "error": "error"}

ChoiceEvent = tuple[int, GenerationEvent]  # (choice index, event)
_Item = tuple[int, GenerationEvent] | BaseException


async def wait_meter(future: Future[T]) -> T:
    """Await a meter future; our caller being cancelled must not cancel a queued write."""
    return await asyncio.shield(asyncio.wrap_future(future))


def usage_of(counts: TokenCounts) -> Usage:
    return Usage(counts.prompt_tokens, counts.cached_tokens, counts.completion_tokens)


class MeterHost(Protocol):
    """What a metered generation needs from the service."""

    meter: Meter
    observer: UsageObserver

    def keep(self, task: asyncio.Task[None]) -> None: ...


def _status(finals: Sequence[Finished]) -> str:
    statuses = {_STATUS[f.reason] for f in finals}
    for status in ("error", "cancelled"):
        if status in statuses:
            return status
    return "ok"


class MeteredGeneration:
    """Iterate `events()` for `(choice index, event)`; each choice ends with its `Finished`.
    When the last one has, `finished` (with the request's total counts) and `bill` are set.

    Stopping early (client gone, error) must go through `aclose()`, which cancels the engine,
    waits for its final counts and finishes the row as `cancelled`. Choices after the first are
    submitted once the first has its prompt decoded, so the engine copies that prompt's KV
    instead of decoding it again.
    """

    def __init__(
        self,
        host: MeterHost,
        admission: Admission,
        model: str,
        admitted: Admitted,
        started: dict[int, Generation],
        deferred: dict[int, tuple[int, Callable[[], Generation]]],
        n: int,
    ) -> None:
        self._host = host
        self._admission = admission
        self.model = model
        self._admitted = admitted
        self.price = admitted.price
        self.n = n
        self.bill: Bill | None = None
        self.finished: Finished | None = None
        self._generations: dict[int, Generation] = dict(started)
        self._billed = frozenset(started)  # one choice per prompt bills its prompt tokens
        self._deferred = dict(deferred)  # index -> (the choice it waits for, its submit)
        self._finals: dict[int, Finished] = {}
        # The engine's iterators are drained by their own tasks into a queue, so cancelling our
        # caller never tears an iterator down: `aclose()` can still read the final counts.
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._held: _Item | None = None  # read, not yet returned
        self._pumps = [asyncio.ensure_future(self._drain(i, g)) for i, g in started.items()]
        self._checkpointed = 0
        self._cached_written = False  # the row learns the cached count at the first token
        self._meter_error: BaseException | None = None
        self._began = time.perf_counter()
        self._first_token_s: float | None = None
        self._closing: asyncio.Task[None] | None = None
        host.observer.started(model)

    @property
    def request_id(self) -> str:
        return self._admission.request_id

    @property
    def counts(self) -> TokenCounts:
        """The request's counts so far: each prompt once, every choice's tokens."""
        live = {i: g.counts for i, g in self._generations.items()}
        billed = [c for i, c in live.items() if i in self._billed]
        return TokenCounts(
            prompt_tokens=sum(c.prompt_tokens for c in billed),
            cached_tokens=sum(c.cached_tokens for c in billed),
            completion_tokens=sum(c.completion_tokens for c in live.values()),
        )

    # -- engine side ------------------------------------------------------------------------

    async def _drain(self, index: int, generation: Generation) -> None:
        try:
            async for event in generation:
                if self._deferred:
                    self._submit_after(index)
                self._queue.put_nowait((index, event))
                if isinstance(event, Finished):
                    return
            self._queue.put_nowait(RuntimeError("the engine ended without Finished"))
        except Exception as exc:
            self._queue.put_nowait(exc)

    def _submit_after(self, parent: int) -> None:
        """The choices waiting for `parent`, now that its prompt's KV exists to be copied."""
        ready = [(i, submit) for i, (p, submit) in self._deferred.items() if p == parent]
        for index, submit in ready:
            del self._deferred[index]
            try:
                generation = submit()
            except Exception as exc:  # e.g. the queue filled up meanwhile
                log.warning("request %s: choice %d not started: %s", self.request_id, index, exc)
                self._queue.put_nowait((index, Finished("error", TokenCounts(), str(exc))))
                continue
            self._generations[index] = generation
            self._pumps.append(asyncio.ensure_future(self._drain(index, generation)))

    async def _next(self) -> tuple[int, GenerationEvent]:
        if self._held is not None:
            item, self._held = self._held, None
        else:
            item = await self._queue.get()
        if isinstance(item, BaseException):
            self._held = item  # every later read fails the same way
            raise item
        return item

    def _join_ready(self, index: int, delta: TextDelta) -> TextDelta:
        """Text of the same choice already waiting behind `delta` goes out with it: when the
        event loop lags behind the engine, fewer and larger chunks cost less per token."""
        joined = [delta]
        while self._held is None and not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, tuple) and item[0] == index and isinstance(item[1], TextDelta):
                joined.append(item[1])
            else:
                self._held = item
        return delta if len(joined) == 1 else _concat(joined)

    # -- caller side ------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[ChoiceEvent]:
        while self.finished is None:
            if self._meter_error is not None:
                await self.aclose(status="error")
                raise MeterUnavailable(f"meter checkpoint failed: {self._meter_error}")
            index, event = await self._next()
            if isinstance(event, TextDelta):
                event = self._join_ready(index, event)
                if self._first_token_s is None:
                    self._first_token_s = time.perf_counter() - self._began
                    self._host.observer.first_token(self.model, self._first_token_s)
                self._maybe_checkpoint()
                yield index, event
                continue
            self._finals[index] = event
            if len(self._finals) == self.n:
                finals = [self._finals[i] for i in range(self.n)]
                total = self.counts
                self.finished = Finished(finals[0].stop, total, finals[0].error)
                self.bill = await self._finish(total, _status(finals))
            yield index, event

    def _maybe_checkpoint(self) -> None:
        counts = self.counts
        # The engine learns the cached count at slot admission, after the row was opened: the
        # first token writes it, so a kill before the 16th token still bills the cache right.
        cached_news = counts.cached_tokens > 0 and not self._cached_written
        if counts.completion_tokens - self._checkpointed < CHECKPOINT_EVERY and not cached_news:
            return
        self._checkpointed = counts.completion_tokens
        self._cached_written = True
        future = self._host.meter.checkpoint(self.request_id, usage_of(counts))

        def done(f: Future[None]) -> None:
            if not f.cancelled() and f.exception() is not None:
                self._meter_error = f.exception()
                log.error("meter: checkpoint of %s failed: %s", self.request_id, f.exception())

        future.add_done_callback(done)

    async def _finish(self, counts: TokenCounts, status: str) -> Bill:
        ad = self._admission
        self._admitted.settle(counts.prompt_tokens + counts.completion_tokens)
        self._host.observer.finished(
            model=self.model,
            key_id=ad.key.id,
            endpoint=ad.endpoint,
            status=status,
            counts=counts,
            seconds=time.perf_counter() - self._began,
            prefill_seconds=self._first_token_s,
        )
        return await wait_meter(self._host.meter.finish(self.request_id, usage_of(counts), status))

    async def aclose(self, status: str = "cancelled") -> None:
        """Cancel if still running and meter what was generated; safe to call repeatedly."""
        if self.finished is not None:
            return
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._cancel_and_finish(status))
            self._host.keep(self._closing)
        await asyncio.shield(self._closing)

    async def _cancel_and_finish(self, status: str) -> None:
        for index in self._deferred:  # never submitted
            self._finals[index] = Finished("cancelled", TokenCounts())
        self._deferred = {}
        for generation in self._generations.values():
            generation.cancel()
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                while len(self._finals) < self.n:
                    index, event = await self._next()
                    if isinstance(event, Finished):
                        self._finals[index] = event
        except TimeoutError:
            log.error("engine did not finish cancelled request %s in time", self.request_id)
        except Exception:
            log.exception("engine failed while cancelling request %s", self.request_id)
        counts = self.counts
        self.finished = Finished("cancelled", counts)
        try:
            self.bill = await self._finish(counts, status)
        except Exception:
            log.exception("meter: cannot finish request %s as %s", self.request_id, status)


def _concat(deltas: list[TextDelta]) -> TextDelta:
    logprobs = None
    if deltas[0].logprobs is not None:
        logprobs = tuple(lp for d in deltas for lp in d.logprobs or ())
    return TextDelta(
        "".join(d.text for d in deltas),
        tuple(t for d in deltas for t in d.tokens),
        logprobs,
    )
