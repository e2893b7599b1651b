"""The slots of a context: one sequence id each and the tokens whose KV it holds, and where an
admitted prompt goes (the slot sharing the longest worthwhile prefix, KV copied from another
slot or restored from the host-memory prompt cache; what a slot loses is saved there first)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import llama_cpp

from node.engine.prompt_cache import PromptCache, common_prefix
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
        self.limit = 0  # KV cells the request may hold (`kv_room`)


def _worthwhile(gain: int, n_prompt: int) -> bool:
    return gain >= MIN_REUSE or 2 * gain >= n_prompt


class Slots:
    """All slots of one context, in sequence-id order."""

    def __init__(
        self,
        n: int,
        ctx: llama_cpp.llama_context_p,
        cache: PromptCache | None = None,
        *,
        min_left: int = 2,
    ) -> None:
        self._slots = [Slot(i) for i in range(n)]
        self._ctx = ctx
        self._memory = llama_cpp.llama_get_memory(ctx)
        self.prompt_cache = cache if cache is not None else PromptCache(0)
        # Prompt tokens always left to decode: one gives the logits to sample from; exact
        # batching needs two (see `Scheduler._decode_prompt_chunks`).
        self.min_left = min_left

    def __iter__(self) -> Iterator[Slot]:
        return iter(self._slots)

    def place(self, prompt: list[int]) -> Slot:
        """A free slot for `prompt`, its KV trimmed to the prompt's reusable prefix: the slot
        whose KV shares a worthwhile prefix, else the lowest free one. What that slot held
        beyond the shared prefix is saved to the prompt cache first; then, if another slot or
        the prompt cache holds a worthwhile longer prefix, its KV is copied or restored.

        Low slots first keeps the active sequence ids contiguous: llama.cpp decodes a
        non-contiguous set of sequences in several micro-batches, one per contiguous run.
        """
        reusable = max(len(prompt) - self.min_left, 0)
        best: Slot | None = None
        best_key = (-1, 0)
        keep = 0  # the chosen slot's own reusable prefix
        for slot in self._slots:
            if slot.request is not None:
                continue
            shared = min(common_prefix(slot.cache, prompt), reusable)
            worth = shared if _worthwhile(shared, len(prompt)) else 0
            key = (worth, -slot.seq_id)
            if key > best_key:
                best, best_key, keep = slot, key, shared
        assert best is not None, "admitted without a free slot"
        slot = best
        if keep < len(slot.cache):
            # What this slot held is about to go: keep it in host memory for a later prompt.
            self.prompt_cache.save(self._ctx, slot.seq_id, slot.cache)
        donor, from_donor = self._donor(slot, prompt, keep, reusable)
        key, from_cache = (None, 0)
        if self.prompt_cache.enabled:
            key, from_cache = self.prompt_cache.longest(prompt, reusable)
        # The longest worthwhile prefix wins; a slot's copy when it ties (no host copy needed).
        n = len(prompt)
        if key is not None and from_cache > from_donor and _worthwhile(from_cache - keep, n):
            if self._restore(slot, key, from_cache):
                return slot
            keep = 0
        elif donor is not None and _worthwhile(from_donor - keep, n):
            # Empty first: in a unified KV the copy would add this sequence to the donor's
            # cells and leave this slot's own cells beside them (one stream each: replaced).
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            llama_cpp.llama_memory_seq_cp(self._memory, donor.seq_id, slot.seq_id, -1, -1)
            slot.cache = list(donor.cache)
            keep = from_donor
        self.trim(slot, keep)
        return slot

    def evict_idle(self, room: int, prompt: list[int]) -> None:
        """Empty idle slots, their KV saved to the prompt cache first, until the idle ones hold
        at most `room` cells: those sharing least with `prompt` first, then the oldest."""
        idle = [s for s in self._slots if s.request is None and s.cache]
        held = sum(len(s.cache) for s in idle)
        if held <= room:
            return  # always so with one stream per slot: no prefix comparisons per admission
        idle.sort(key=lambda s: (common_prefix(s.cache, prompt), s.admitted_at))
        for slot in idle:
            if held <= room:
                return
            held -= len(slot.cache)
            self.prompt_cache.save(self._ctx, slot.seq_id, slot.cache)
            self.trim(slot, 0)

    def _restore(self, slot: Slot, key: tuple[int, ...], shared: int) -> bool:
        """Load the cached KV of `key` into `slot`, keeping its first `shared` tokens."""
        if not self.prompt_cache.restore(self._ctx, key, slot.seq_id, shared):
            slot.cache = []  # llama.cpp refused it: the sequence is empty now
            return False
        slot.cache = list(key)
        self.trim(slot, shared)
        return True

    def _donor(
        self, slot: Slot, prompt: list[int], keep: int, reusable: int
    ) -> tuple[Slot | None, int]:
        """Another slot (busy or not) holding a longer prefix of `prompt` than `keep`, e.g. a
        system prompt many clients share, and how many tokens of it are usable.

        Its KV is copied, not recomputed, so the prompt's logits are bit for bit those of
        computing it alone. llama.cpp copies a whole sequence stream (~24 MB for SmolLM2 at
        1024 tokens, a few ms), so the copy must save a worthwhile number of tokens.
        """
        donor, shared = None, keep
        for other in self._slots:
            if other is not slot:
                n = min(common_prefix(other.cache, prompt), reusable)
                if n > shared:
                    donor, shared = other, n
        return donor, shared

    def trim(self, slot: Slot, keep: int) -> None:
        """Drop the slot's KV from position `keep` on (all of it if llama.cpp cannot cut)."""
        if keep >= len(slot.cache):
            return
        if not llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1):
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            keep = 0
        del slot.cache[keep:]
