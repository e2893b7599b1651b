"""How one scheduler step decodes, in each batching mode.

Mixed (`--batching mixed`, the default): one token of every generating sequence and at most
`prefill_chunk` prompt tokens of the longest-waiting prompts go into ONE `llama_decode`, so a
running stream waits for one bounded step instead of a whole prompt (llama-server's way). Parts
are ordered by sequence id: with one KV stream per sequence llama.cpp splits a batch into
micro-batches of contiguous sequence ids with equal tokens each, so in seq-id order the step is
one micro-batch of one token per sequence (prompts' first tokens included) plus the prompts'
remaining tokens. A prompt's token in a one-token group takes other kernels than alone, so its
logits differ slightly (a few 1e-3 on SmolLM2) from decoding it alone, the trade that exact mode
avoids: there prompt chunks of equal length go first, each group in its own decode, then one
decode of one token per generating sequence, and batched output is bit-identical to alone.

A unified KV (one stream for all sequences) would make each step a single micro-batch, but then
every token attends over every used cell of every sequence: with 8 sequences of 700 tokens a
generation step took 3x as long on CPU (measured), so both modes keep one stream per sequence.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from node.engine.batch import TokenBatch
from node.engine.slots import Slot, Slots

if TYPE_CHECKING:
    from node.engine.generation import Request
    from node.engine.interface import GenerationEvent

    Events = list[tuple[Request, GenerationEvent]]


@dataclass(frozen=True)
class Part:
    """Consecutive tokens of one sequence in a step's batch."""

    slot: Slot
    tokens: list[int]
    prompt: bool  # prompt tokens (taken from `slot.pending`) or the one generated token
    samples: bool  # its last token's logits are sampled: a generated token, a prompt's end


def plan_mixed_step(slots: Iterable[Slot], prefill_chunk: int) -> list[Part]:
    """The parts of the next mixed step over the busy `slots`, in seq-id order: every
    generating sequence's token, and chunks of the longest-waiting prompts until
    `prefill_chunk` prompt tokens are in.
    """
    busy = [s for s in slots if s.request is not None]
    parts = [Part(s, [s.next_token], prompt=False, samples=True) for s in busy if not s.pending]
    budget = prefill_chunk
    for slot in sorted((s for s in busy if s.pending), key=lambda s: s.admitted_at):
        if budget <= 0:
            break
        chunk = slot.pending[:budget]
        budget -= len(chunk)
        parts.append(Part(slot, chunk, prompt=True, samples=len(chunk) == len(slot.pending)))
    return sorted(parts, key=lambda part: part.slot.seq_id)


class StepDecoder:
    """The decoding half of `Scheduler`: one step in either mode. The scheduler provides the
    slots, batches and the sampling / failure callbacks."""

    _slots: Slots
    _gen_batch: TokenBatch
    _prompt_batch: TokenBatch
    n_batch: int
    prefill_chunk: int

    def _llama_decode(self, batch: TokenBatch) -> int:
        raise NotImplementedError

    def _fail_decode(self, rc: int, slots: list[Slot], events: Events) -> None:
        raise NotImplementedError

    def _sample(self, slot: Slot, index: int, events: Events) -> None:
        raise NotImplementedError

    def _step_mixed(self, events: Events) -> None:
        parts = plan_mixed_step(self._slots, self.prefill_chunk)
        if parts:
            self._decode_parts(parts, events)

    def _step_exact(self, events: Events) -> None:
        # Prompt chunks first, longest-waiting first, about one batch worth of tokens per step:
        # a new request gets its first token this step (and its second in the decode below),
        # while streaming ones wait at most ~one batch for theirs.
        waiting = sorted(
            (s for s in self._slots if s.request is not None and s.pending),
            key=lambda s: s.admitted_at,
        )
        spent = 0
        while waiting and spent < self.n_batch:
            group = self._prompt_group(waiting)
            waiting = [s for s in waiting if s not in group]
            spent += self._decode_prompt_chunks(group, events)
        generating = [s for s in self._slots if s.request is not None and not s.pending]
        if generating:
            self._decode_generating(generating, events)

    def _chunk_size(self, slot: Slot) -> int:
        return min(len(slot.pending), self._prompt_batch.capacity)

    def _prompt_group(self, waiting: list[Slot]) -> list[Slot]:
        """The oldest waiting prompt and every other one whose next chunk has the same length,
        as many as one batch holds, in seq-id order (a contiguous run is one micro-batch)."""
        size = self._chunk_size(waiting[0])
        same = [s for s in waiting if self._chunk_size(s) == size]
        return sorted(same[: max(1, self._prompt_batch.capacity // size)], key=lambda s: s.seq_id)

    def _decode_generating(self, slots: list[Slot], events: Events) -> None:
        """One token for every generating sequence, in seq-id order, in one decode."""
        batch = self._gen_batch
        batch.clear()
        for slot in slots:
            batch.add(slot.next_token, len(slot.cache), slot.seq_id, True)
        rc = self._llama_decode(batch)
        if rc != 0:
            self._fail_decode(rc, slots, events)
            return
        for index, slot in enumerate(slots):
            slot.cache.append(slot.next_token)
            self._sample(slot, index, events)

    def _decode_prompt_chunks(self, slots: list[Slot], events: Events) -> int:
        """The next chunk of each of these prompts (all the same length), in one decode.

        Prompt chunks never share a decode with generating sequences. llama.cpp's CPU attention
        takes a different kernel for a sequence with one token in a micro-batch than for one
        with several, and a batch mixing prompts with one-token sequences is split so that a
        prompt's first token lands in a one-token group. Either way its logits change (by up to
        ~0.6 on SmolLM2) and greedy output would depend on what a request was batched with.
        Chunks of equal length decoded together are split into micro-batches of equal tokens
        per sequence, so each prompt is computed exactly as llama-cpp-python's `Llama` computes
        it alone (bit for bit, checked on Q4_0, Q4_1, Q5_K_M and Q8_0); generation steps are
        one token per sequence in both, so batched output is token-identical to unbatched.
        Returns the number of prompt tokens decoded.
        """
        batch = self._prompt_batch
        batch.clear()
        size = self._chunk_size(slots[0])
        last = [
            batch.add_run(
                slot.pending[:size], len(slot.cache), slot.seq_id, size == len(slot.pending)
            )
            for slot in slots
        ]
        rc = self._llama_decode(batch)
        if rc != 0 and len(slots) > 1:
            # Find the culprit (e.g. a token id the model lacks): each alone, so only it fails.
            return sum(self._decode_prompt_chunks([slot], events) for slot in slots)
        if rc != 0:
            self._fail_decode(rc, slots, events)
            return size
        for slot, index in zip(slots, last, strict=True):
            slot.cache.extend(slot.pending[:size])
            del slot.pending[:size]
            if not slot.pending:
                self._sample(slot, index, events)
        return size * len(slots)

    def _decode_parts(self, parts: list[Part], events: Events) -> None:
        """One mixed step: every part in one decode (see `steps`). If llama.cpp rejects the
        batch (e.g. a token id the model lacks), each part again alone, so only the culprit
        fails."""
        batch = self._prompt_batch
        batch.clear()
        last = [
            batch.add_run(part.tokens, len(part.slot.cache), part.slot.seq_id, part.samples)
            for part in parts
        ]
        rc = self._llama_decode(batch)
        if rc != 0 and len(parts) > 1:
            for part in parts:
                if part.slot.request is not None:
                    self._decode_parts([part], events)
            return
        if rc != 0:
            self._fail_decode(rc, [parts[0].slot], events)
            return
        for part, index in zip(parts, last, strict=True):
            slot = part.slot
            slot.cache.extend(part.tokens)
            if part.prompt:
                del slot.pending[: len(part.tokens)]
            if part.samples:
                self._sample(slot, index, events)
