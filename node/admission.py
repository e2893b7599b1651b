"""Admission of a metered request: the key's rate limits, then its and its org's budgets.

The service calls `Gate.admit` where it used to open the meter row. Rate limits are checked
first (in memory); the budgets inside the meter's write transaction that opens the row. A
request refused by either leaves a `rejected` row with 0 tokens, and nothing is generated.
Whatever was reserved is given back by `Admitted.settle` with the real token count.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, TypeVar

from node.meter import Budget, Limits, Meter, Price, Refusal, RequestStart, Usage
from node.meter.limits import RateLimited, RateLimiter, Ticket

__all__ = ["Admitted", "BudgetExceeded", "Gate", "RateLimited"]

T = TypeVar("T")


class BudgetExceeded(Exception):
    """The request's maximum cost would overrun a budget: HTTP 429 `insufficient_quota`."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message())
        self.refusal = refusal


@dataclass
class Admitted:
    price: Price | None
    ticket: Ticket | None

    def settle(self, tokens: int) -> None:
        """The request ended having used `tokens` (prompt + completion); safe to repeat."""
        if self.ticket is not None:
            self.ticket.settle(tokens)


async def _wait(future: Future[T]) -> T:
    return await asyncio.shield(asyncio.wrap_future(future))


class FleetReservations(Protocol):
    """Fleet mode: budgets checked and held in the fleet database (`node.fleet.budgets`)."""

    def reserve(
        self, start: RequestStart, budgets: list[tuple[str, str, Budget]], units: int, now_us: int
    ) -> tuple[bool, Refusal | None]: ...

    def release(self, request_id: str) -> None: ...


class Gate:
    def __init__(self, meter: Meter, limiter: RateLimiter) -> None:
        self.meter = meter
        self.limiter = limiter
        self.fleet: FleetReservations | None = None  # set in fleet mode

    async def admit(
        self, start: RequestStart, limits: Limits, prompt_tokens: int, max_completion_tokens: int
    ) -> Admitted:
        """Raises RateLimited or BudgetExceeded (after writing the `rejected` row)."""
        ticket = None
        if limits:
            try:
                ticket = self.limiter.admit(
                    start.key_id, limits, prompt_tokens + max_completion_tokens
                )
            except RateLimited:
                await _wait(self.meter.reject(start))  # the operator sees refusals too
                raise
        ceiling = Usage(prompt_tokens=prompt_tokens, completion_tokens=max_completion_tokens)
        held = False
        try:
            if self.fleet is not None:
                held = await self._reserve_in_fleet(start, ceiling)
            opened = await _wait(self.meter.admit(start, ceiling, budgets_checked=held))
        except BaseException:
            if ticket is not None:
                ticket.settle(0)
            if held and self.fleet is not None:
                await asyncio.to_thread(self.fleet.release, start.id)
            raise
        if opened.refusal is not None:
            if ticket is not None:
                ticket.settle(0)
            raise BudgetExceeded(opened.refusal)
        return Admitted(opened.price, ticket)

    async def _reserve_in_fleet(self, start: RequestStart, ceiling: Usage) -> bool:
        """Hold the request's maximum cost in the fleet database; True once held. Raises
        BudgetExceeded (after the `rejected` row) when a budget refuses it."""
        fleet = self.fleet
        assert fleet is not None

        def reserve() -> tuple[bool, Refusal | None]:
            budgets, units = self.meter.max_cost(start, ceiling)
            if not budgets or units == 0:  # nothing to hold: no budget, or no price (cost 0)
                return False, None
            return fleet.reserve(start, budgets, units, self.meter.now_us())

        held, refusal = await asyncio.to_thread(reserve)
        if refusal is None:
            return held
        await _wait(self.meter.reject(start))
        raise BudgetExceeded(refusal)

    def headers(self, key_id: str, limits: Limits) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*` headers of a limited key, as things stand now."""
        return self.limiter.headers(key_id, limits) if limits else {}
