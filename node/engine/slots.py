"""The slots of a context: one sequence id each and the tokens whose KV it holds, and where an
admitted prompt goes (the slot sharing the longest worthwhile prefix, KV copied from another)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import llama_cpp

from node.engine.text import DeltaStream

if TYPE_CHECKING:
    from node.engine.generation import Request

# A shared prefix this long (or half the prompt) is worth taking a slot out of id order for.
MIN_REUSE = 64


class Slot:
    """One sequence id of the context and the tokens whose KV it currently holds."""

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.cache: list[int] = []  # tokens at positions 0.. in this sequence's KV
        self.request: Request | None = None
        self.pending: list[int] = []  # prompt tokens still to decode
        self.next_token = -1  # sampled, to be decoded in the next step
        self.stream = DeltaStream()
        self.admitted_at = 0


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Slots:
    """All slots of one context, in sequence-id order."""

    def __init__(self, n: int, memory: llama_cpp.llama_memory_t) -> None:
        self._slots = [Slot(i) for i in range(n)]
        self._memory = memory

    def __iter__(self) -> Iterator[Slot]:
        return iter(self._slots)

    def place(self, prompt: list[int]) -> Slot:
        """A free slot for `prompt`, its KV trimmed to the prompt's reusable prefix: the slot
        whose KV shares a worthwhile prefix, else the lowest free one; then, if another slot
        holds a longer prefix, its KV is copied.

        Low slots first keeps the active sequence ids contiguous: llama.cpp decodes a
        non-contiguous set of sequences in several micro-batches, one per contiguous run.
        """
        # Leave at least two prompt tokens to decode: a one-token chunk takes another kernel
        # than the whole prompt would (see `Scheduler._decode_prompt_chunks`).
        reusable = max(len(prompt) - 2, 0)
        best: Slot | None = None
        best_key = (-1, 0)
        for slot in self._slots:
            if slot.request is not None:
                continue
            shared = min(_common_prefix(slot.cache, prompt), reusable)
            worth = shared if shared >= MIN_REUSE or 2 * shared >= len(prompt) else 0
            key = (worth, -slot.seq_id)
            if key > best_key:
                best, best_key = slot, key
        assert best is not None, "admitted without a free slot"
        slot = best
        keep = min(_common_prefix(slot.cache, prompt), reusable)
        if not self._copy_prefix(slot, prompt, keep, reusable):
            self.trim(slot, keep)
        return slot

    def _copy_prefix(self, slot: Slot, prompt: list[int], keep: int, reusable: int) -> bool:
        """Give `slot` the KV of another slot (busy or not) that holds a worthwhile longer
        prefix of `prompt`, e.g. a system prompt many clients share. True if it did.

        The KV is copied, not recomputed, so the prompt's logits are bit for bit those of
        computing it alone. llama.cpp copies a whole sequence stream (~24 MB for SmolLM2 at
        1024 tokens, a few ms), so the copy must save a worthwhile number of tokens.
        """
        donor, shared = None, keep
        for other in self._slots:
            if other is not slot:
                n = min(_common_prefix(other.cache, prompt), reusable)
                if n > shared:
                    donor, shared = other, n
        gain = shared - keep
        if donor is None or not (gain >= MIN_REUSE or 2 * gain >= len(prompt)):
            return False
        llama_cpp.llama_memory_seq_cp(self._memory, donor.seq_id, slot.seq_id, -1, -1)
        slot.cache = list(donor.cache)
        self.trim(slot, shared)
        return True

    def trim(self, slot: Slot, keep: int) -> None:
        """Drop the slot's KV from position `keep` on (all of it if llama.cpp cannot cut)."""
        if keep >= len(slot.cache):
            return
        if not llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1):
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            keep = 0
        del slot.cache[keep:]
