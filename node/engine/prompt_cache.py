"""Host-memory prompt cache beyond the slots: KV states of sequences that were overwritten.

When a slot's sequence is about to be replaced by another request's, its KV state is copied out
with llama.cpp's per-sequence state API into an LRU keyed by its tokens, within a byte budget.
An admitted prompt whose longest shared prefix lies here rather than in a slot gets the state
copied back into its slot and decodes only the rest (llama-server's `--cache-ram`). A
conversation whose slot another user took, or a prompt seen before, is then not recomputed.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from collections.abc import Sequence

import llama_cpp

from node.engine.interface import PromptCacheStats

MIB = 1024 * 1024


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix. Compares slices of 64 first (in C) when both are of one
    type, then token by token within the first slice that differs."""
    n = min(len(a), len(b))
    i = 0
    if type(a) is type(b):
        while i + 64 <= n and a[i : i + 64] == b[i : i + 64]:
            i += 64
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PromptCache:
    """LRU of (tokens -> sequence state bytes), at most `budget_bytes` in all.

    Used only from the scheduler thread, which owns the context: no lock.
    """

    def __init__(self, budget_bytes: int, *, min_tokens: int = 16) -> None:
        self.budget_bytes = budget_bytes
        self.min_tokens = min_tokens  # shorter sequences cost less to recompute than to keep
        self._entries: OrderedDict[tuple[int, ...], bytearray] = OrderedDict()
        self._bytes = 0
        self._lookups = 0
        self._hits = 0
        self._restored = 0
        self._evictions = 0
        self._refused = 0

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def stats(self) -> PromptCacheStats:
        return PromptCacheStats(
            lookups=self._lookups,
            hits=self._hits,
            tokens_restored=self._restored,
            bytes_held=self._bytes,
            entries=len(self._entries),
            budget_bytes=self.budget_bytes,
            evictions=self._evictions,
            refused=self._refused,
        )

    def keys(self) -> list[tuple[int, ...]]:
        """The cached token sequences, least recently used first (for tests)."""
        return list(self._entries)

    # -- saving ---------------------------------------------------------------------------------

    def save(self, ctx: llama_cpp.llama_context_p, seq_id: int, tokens: Sequence[int]) -> bool:
        """Copy sequence `seq_id`'s KV (holding exactly `tokens`) into the cache. True if kept.

        A sequence that an entry already covers (a prefix of it) is not stored twice; entries
        it covers are dropped. Least recently used entries go until the new one fits.
        """
        if not self.enabled or len(tokens) < self.min_tokens:
            return False
        key = tuple(tokens)
        for other in self._entries:
            if len(other) >= len(key) and other[: len(key)] == key:
                self._entries.move_to_end(other)
                return False
        size = llama_cpp.llama_state_seq_get_size(ctx, seq_id)
        if size == 0 or size > self.budget_bytes:
            return False
        data = bytearray(size)
        written = llama_cpp.llama_state_seq_get_data(
            ctx, (ctypes.c_uint8 * size).from_buffer(data), size, seq_id
        )
        if written == 0:
            return False
        del data[written:]
        for other in [k for k in self._entries if len(k) < len(key) and key[: len(k)] == k]:
            self._drop(other)
        while self._entries and self._bytes + len(data) > self.budget_bytes:
            self._drop(next(iter(self._entries)))
            self._evictions += 1
        self._entries[key] = data
        self._bytes += len(data)
        return True

    def _drop(self, key: tuple[int, ...]) -> None:
        self._bytes -= len(self._entries.pop(key))

    # -- restoring ------------------------------------------------------------------------------

    def longest(self, prompt: Sequence[int], limit: int) -> tuple[tuple[int, ...] | None, int]:
        """The entry sharing the longest prefix with `prompt` (at most `limit` tokens of it)."""
        self._lookups += 1
        wanted = tuple(prompt)
        best: tuple[int, ...] | None = None
        best_n = 0
        for key in self._entries:
            n = min(common_prefix(key, wanted), limit)
            if n > best_n:
                best, best_n = key, n
        return best, best_n

    def restore(
        self, ctx: llama_cpp.llama_context_p, key: tuple[int, ...], seq_id: int, used: int
    ) -> bool:
        """Load entry `key` into sequence `seq_id` (emptied first); `used` of its tokens will
        be kept. True if llama.cpp took the state; the entry then leaves the cache."""
        data = self._entries[key]
        memory = llama_cpp.llama_get_memory(ctx)
        llama_cpp.llama_memory_seq_rm(memory, seq_id, -1, -1)
        size = len(data)
        ok = llama_cpp.llama_state_seq_set_data(
            ctx, (ctypes.c_uint8 * size).from_buffer(data), size, seq_id
        )
        if not ok:
            llama_cpp.llama_memory_seq_rm(memory, seq_id, -1, -1)
            self._refused += 1
            return False
        # The slot holds it now and saves it again (longer) when it is overwritten: keeping a
        # copy would count it twice against the budget, and with more conversations than fit,
        # LRU over duplicates evicts exactly the ones that come back next.
        self._drop(key)
        self._hits += 1
        self._restored += used
        return True
