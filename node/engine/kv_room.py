"""How many KV cells one request may hold, and whether the next waiting request has room.

Per-slot KV (the default): each slot owns `n_ctx / parallel` cells, so that is every request's
context, and a free slot is all a request waits for.

Unified KV (`kv_unified`): one pool of `n_ctx` cells every sequence draws from, so one request
may use more than `n_ctx / parallel` while the others leave room (llama-server's unified mode).
Each admitted request reserves the cells it may come to hold: its prompt plus `max_tokens`, or
plus the per-slot share `n_ctx / parallel` when it sets none, at most `n_ctx`; it stops with
`length` there. A request is admitted only while the running requests' reservations leave room
for its own. Admission is strictly first come, first served: when the oldest waiting request
does not fit, the ones behind it wait too, so a long request is never starved by short ones.
Idle slots keep their KV for returning conversations until an admission needs their cells.
Counting every sequence's cells on its own overstates what a shared prefix takes, so the pool
never runs out under a running request.
"""

from __future__ import annotations

from collections.abc import Iterable


class KvRoom:
    """The cell budget of one context's sequences."""

    def __init__(self, n_ctx: int, parallel: int, *, unified: bool) -> None:
        self.unified = unified
        self.share = n_ctx // parallel  # one slot's cells when each owns a stream
        self.n_cells = n_ctx if unified else self.share * parallel
        self.per_request = self.n_cells if unified else self.share  # the most one may use

    def fits(self, n_prompt: int, max_tokens: int | None) -> bool:
        """Whether a request could ever run (else it is a context overflow)."""
        return n_prompt + (max_tokens or 0) <= self.per_request

    def reservation(self, n_prompt: int, max_tokens: int | None) -> int:
        """The cells a request may hold once admitted: where it stops with `length`."""
        if not self.unified:
            return self.share
        wanted = n_prompt + (max_tokens if max_tokens is not None else self.share)
        return min(self.n_cells, wanted)

    def admissible(self, reserved: Iterable[int], wanted: Iterable[int], free_slots: int) -> int:
        """How many of the oldest waiting requests (their reservations `wanted`, oldest first)
        to admit now, beside running requests holding `reserved` cells."""
        left = self.n_cells - sum(reserved)
        n = 0
        for cells in wanted:
            if n == free_slots or cells > left:
                break
            left -= cells
            n += 1
        return n

    def idle_room(self, reserved: Iterable[int]) -> int:
        """Cells idle slots may keep beside running requests holding `reserved` cells."""
        return self.n_cells - sum(reserved) if self.unified else self.n_cells
