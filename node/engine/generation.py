"""One submitted request as the caller sees it: live counts, cancel, async event iteration."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from node.engine.interface import (
    Finished,
    GenerationEvent,
    SamplingParams,
    TokenCounts,
)
from node.engine.sampling import SequenceSampler


class Request:
    """Implements `interface.Generation`. Created on the event loop, driven by the scheduler."""

    def __init__(
        self,
        prompt: list[int],
        params: SamplingParams,
        sampler: SequenceSampler,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.prompt = prompt
        self.params = params
        self.sampler = sampler
        self.loop = loop
        self.cancelled = False  # set from any thread, read by the scheduler every step
        self._counts = TokenCounts(prompt_tokens=len(prompt))
        self._events: asyncio.Queue[GenerationEvent] = asyncio.Queue()
        self._done = False

    @property
    def counts(self) -> TokenCounts:
        """A snapshot; the scheduler thread keeps updating the live counts."""
        return self._counts.copy()

    @property
    def live_counts(self) -> TokenCounts:
        return self._counts

    @property
    def seed(self) -> int:
        return self.sampler.seed

    def cancel(self) -> None:
        self.cancelled = True

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[GenerationEvent]:
        try:
            while True:
                event = await self._events.get()
                if isinstance(event, Finished):
                    self._done = True
                yield event
                if self._done:
                    return
        finally:
            # A consumer that stops listening (closed stream) must not keep its slot busy.
            if not self._done:
                self.cancel()

    def put(self, event: GenerationEvent) -> None:
        """Called on the event loop only."""
        self._events.put_nowait(event)


def _deliver(items: list[tuple[Request, GenerationEvent]]) -> None:
    for request, event in items:
        request.put(event)


def deliver(items: Iterable[tuple[Request, GenerationEvent]]) -> None:
    """Hand events from the scheduler thread to their event loops, one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Request, GenerationEvent]]] = {}
    for request, event in items:
        by_loop.setdefault(request.loop, []).append((request, event))
    for loop, batch in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, batch)
        except RuntimeError:  # the loop is closed: nobody listens any more
            for request, _ in batch:
                request.cancel()
