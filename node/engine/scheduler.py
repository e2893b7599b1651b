"""Continuous batching: one thread per model owns the llama context and its `parallel` slots.

Each step admits waiting requests into free slots (restoring the longest known prefix of their
prompt from a slot or the host-memory prompt cache), decodes, samples every sequence with its
own sampler chain, and hands the text back to the event loop. How a step decodes is the
model's `batching`:

- "mixed" (default): one `llama_decode` of one token of every generating sequence plus at most
  `prefill_chunk` prompt tokens (`steps.plan_mixed_step`): streams never stall for a whole
  prompt.
- "exact": prompt chunks of newly admitted sequences first (about one batch of tokens per
  step; chunks of equal length together), then one token of every generating sequence in ONE
  `llama_decode`: output is bit-identical to each request decoded alone, streams wait for
  prompts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Sequence

import llama_cpp

from node.engine.batch import TokenBatch
from node.engine.generation import Request, deliver
from node.engine.grammar_cache import GrammarCache
from node.engine.interface import (
    ContextOverflow,
    EngineBusy,
    Finished,
    GenerationEvent,
    PromptCacheStats,
    SampledLogprob,
    SamplingParams,
    StopType,
)
from node.engine.kv_room import KvRoom
from node.engine.logprobs import sample
from node.engine.model import LoadedModel
from node.engine.prompt_cache import MIB, PromptCache
from node.engine.sampling import SequenceSampler
from node.engine.slots import Slot, Slots
from node.engine.steps import StepDecoder
from node.engine.text import DeltaStream

log = logging.getLogger(__name__)

Events = list[tuple[Request, GenerationEvent]]


class Scheduler(StepDecoder):
    """Implements `interface.GenerationEngine` for one loaded model."""

    def __init__(self, model: LoadedModel, *, max_queue: int | None = None) -> None:
        spec = model.spec
        self.model = model
        self.parallel = spec.parallel
        self._room = KvRoom(spec.n_ctx, spec.parallel, unified=spec.kv_unified)
        self.n_ctx_per_seq = self._room.per_request
        self.mixed = spec.batching == "mixed"
        self.prefill_chunk = spec.prefill_chunk
        # room for one token per sequence (and, mixed, a prompt chunk beside them)
        extra = self.prefill_chunk if self.mixed else 0
        self.n_batch = max(spec.n_batch, spec.parallel + extra)
        self.max_queue = max_queue if max_queue is not None else 4 * spec.parallel
        self._ctx = model.new_context(
            model.context_params(
                n_ctx=self._room.n_cells,
                n_seq_max=self.parallel,
                n_batch=self.n_batch,
                unified=spec.kv_unified,
            )
        )
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._grammars = GrammarCache(model.vocab)  # parsed once in validate, cloned in submit
        self._gen_batch = TokenBatch(self.parallel)
        self._prompt_batch = TokenBatch(self.n_batch)
        self._prompt_cache = PromptCache(spec.prompt_cache_mib * MIB)
        self._slots = Slots(
            self.parallel, self._ctx, self._prompt_cache, min_left=1 if self.mixed else 2
        )
        self._waiting: deque[Request] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._admissions = 0
        self.decode_calls = 0  # llama_decode calls so far (llama-server's n_decode_total)
        self.busy_slot_decodes = 0  # busy slots summed over decode calls (n_busy_slots_total)
        self.n_tokens_max = 0  # the most tokens one sequence held (llama-server's n_tokens_max)
        self.info = model.model_info(
            embeddings=False,
            n_ctx=self._room.n_cells,
            n_ctx_per_seq=self.n_ctx_per_seq,
            parallel=self.parallel,
        )
        self.chat_template = model.chat_template
        self.render_chat = model.render_chat  # the template needs no context: no thread hop
        self._thread = threading.Thread(target=self._run, name=f"engine-{spec.id}", daemon=True)
        self._thread.start()

    # -- caller side (event loop) ---------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.model.tokenize(text, add_special)

    def piece(self, token: int, special: bool = True) -> bytes:
        return self.model.piece(token, special)

    def detokenize(self, tokens: Sequence[int], special: bool = True) -> str:
        return self.model.detokenize(tokens, special)

    def check_fits(self, n_prompt_tokens: int, max_tokens: int | None) -> None:
        if not self._room.fits(n_prompt_tokens, max_tokens):
            raise ContextOverflow(n_prompt_tokens, self.n_ctx_per_seq)

    def validate(self, params: SamplingParams) -> None:
        # Raises ValueError as submit would; the parsed grammar stays cached for submit.
        SequenceSampler(self.model, params, self._grammars).close()

    def submit(self, prompt_tokens: list[int], params: SamplingParams) -> Request:
        if not prompt_tokens:
            raise ValueError("the prompt is empty")
        self.check_fits(len(prompt_tokens), params.max_tokens)
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._stopping:
                raise RuntimeError(f"model {self.info.id} is shut down")
            if len(self._waiting) >= self.max_queue:
                raise EngineBusy()
        sampler = SequenceSampler(self.model, params, self._grammars)  # ValueError: bad params
        sampler.accept_prompt(prompt_tokens)
        request = Request(list(prompt_tokens), params, sampler, loop)
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                sampler.close()
                raise EngineBusy()
            self._waiting.append(request)
            self._cond.notify()
        return request

    def slot_tokens(self) -> list[int]:
        """KV tokens held per slot (a snapshot, for metrics and tests)."""
        return [len(slot.cache) for slot in self._slots]

    def prompt_cache_stats(self) -> PromptCacheStats:
        """A snapshot of the host-memory prompt cache's counters (read without the thread)."""
        return self._prompt_cache.stats()

    def busy_slots(self) -> int:
        return sum(slot.request is not None for slot in self._slots)

    def queued(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        self._grammars.close()
        llama_cpp.llama_free(self._ctx)
        self._ctx = None
        self.model.close()

    # -- scheduler thread -----------------------------------------------------------------------

    def _active(self) -> bool:
        return any(slot.request is not None for slot in self._slots)

    def _run(self) -> None:
        while True:
            events: Events = []
            with self._cond:
                while not self._stopping and not self._waiting and not self._active():
                    self._cond.wait()
                if self._stopping:
                    break
                admitted = self._take_waiting(events)
            try:
                self._step(admitted, events)
            except Exception as exc:  # a bug must fail requests, not kill the thread
                log.exception("engine step failed for model %s", self.info.id)
                self._fail_everything(admitted, events, f"engine error: {exc}")
            deliver(events)
        self._shutdown()

    def _fail_everything(self, admitted: list[Request], events: Events, error: str) -> None:
        placed = set()
        for slot in self._slots:
            if slot.request is not None:
                placed.add(id(slot.request))
                self._finish(slot, "error", events, drop_kv=True, error=error)
        for request in admitted:
            if id(request) not in placed and not any(r is request for r, _ in events):
                request.sampler.close()
                events.append((request, Finished("error", request.counts, error=error)))

    def _take_waiting(self, events: Events) -> list[Request]:
        """Drop cancelled waiters; pop as many as there are free slots. Holds the lock."""
        if any(r.cancelled for r in self._waiting):
            for r in [r for r in self._waiting if r.cancelled]:
                self._waiting.remove(r)
                r.sampler.close()
                events.append((r, Finished("cancelled", r.counts)))
        # First come, first served: the oldest request waits for a slot and, in a unified
        # KV, for room beside the running ones' reservations; the rest wait behind it.
        reserved = self._reserved()
        wanted = (self._reservation(r) for r in self._waiting)
        n = self._room.admissible(reserved, wanted, self.parallel - len(reserved))
        return [self._waiting.popleft() for _ in range(n)]

    def _reservation(self, request: Request) -> int:
        return self._room.reservation(len(request.prompt), request.params.max_tokens)

    def _reserved(self) -> list[int]:
        """The KV cells each running request may hold."""
        return [slot.limit for slot in self._slots if slot.request is not None]

    def _step(self, admitted: list[Request], events: Events) -> None:
        for slot in self._slots:
            if slot.request is not None and slot.request.cancelled:
                self._finish(slot, "cancelled", events, drop_kv=True)
        for request in admitted:
            self._admit(request)
        if self.mixed:
            self._step_mixed(events)
        else:
            self._step_exact(events)
        self.n_tokens_max = max(self.n_tokens_max, *(len(s.cache) for s in self._slots))

    def _llama_decode(self, batch: TokenBatch) -> int:
        self.decode_calls += 1
        self.busy_slot_decodes += self.busy_slots()
        return batch.decode(self._ctx)

    def _fail_decode(self, rc: int, slots: list[Slot], events: Events) -> None:
        """Finish the slots of a failed `llama_decode` with an error."""
        reason = f"llama_decode failed with status {rc}"
        log.error("model %s: %s", self.info.id, reason)
        for slot in slots:
            self._finish(slot, "error", events, drop_kv=True, error=reason)

    def _admit(self, request: Request) -> None:
        limit = self._reservation(request)
        self._slots.evict_idle(self._room.idle_room([*self._reserved(), limit]), request.prompt)
        slot = self._slots.place(request.prompt)
        slot.limit = limit
        keep = len(slot.cache)
        request.live_counts.cached_tokens = keep
        slot.request = request
        slot.pending = request.prompt[keep:]
        slot.next_token = -1
        slot.stream = DeltaStream(request.params)
        self._admissions += 1
        slot.admitted_at = self._admissions

    def _sample(self, slot: Slot, index: int, events: Events) -> None:
        """Sample the slot's next token (with its logprobs when asked for); a sampler failure
        or an id llama.cpp would abort on (e.g. from NaN logits) fails this request alone."""
        request = slot.request
        assert request is not None
        try:
            token, logprob = sample(self.model, self._ctx, index, request.sampler, request.params)
        except Exception as exc:
            log.exception("model %s: sampling failed", self.info.id)
            self._finish(slot, "error", events, drop_kv=True, error=f"sampling failed: {exc}")
            return
        if not 0 <= token < self.model.n_vocab:
            error = f"sampling produced token id {token}, outside the vocabulary"
            log.error("model %s: %s", self.info.id, error)
            self._finish(slot, "error", events, drop_kv=True, error=error)
            return
        if self.model.is_eog(token):
            self._finish(slot, "eos", events)
            return
        self._on_token(slot, token, events, logprob)

    def _on_token(
        self, slot: Slot, token: int, events: Events, logprob: SampledLogprob | None
    ) -> None:
        request = slot.request
        assert request is not None
        request.live_counts.completion_tokens += 1
        piece = self.model.piece(token, request.params.special_tokens)
        delta = slot.stream.feed(token, piece, logprob)
        if delta is not None:
            events.append((request, delta))
        if slot.stream.stopped:
            self._finish(slot, "word", events)
        elif self._out_of_room(slot):
            self._finish(slot, "length", events)
        else:
            slot.next_token = token

    def _out_of_room(self, slot: Slot) -> bool:
        """max_tokens reached, or no room left in the sequence's cells to decode the token."""
        assert slot.request is not None
        limit = slot.request.params.max_tokens
        generated = slot.request.live_counts.completion_tokens
        return (limit is not None and generated >= limit) or len(slot.cache) >= slot.limit

    def _finish(
        self,
        slot: Slot,
        stop: StopType,
        events: Events,
        *,
        drop_kv: bool = False,
        error: str | None = None,
    ) -> None:
        request = slot.request
        assert request is not None
        if stop in ("eos", "word", "length"):
            tail = slot.stream.flush()
            if tail is not None:
                events.append((request, tail))
        stop_word = slot.stream.stop_word if stop == "word" else None
        events.append((request, Finished(stop, request.counts, error=error, stop_word=stop_word)))
        request.sampler.close()
        slot.request = None
        slot.pending = []
        slot.next_token = -1
        if drop_kv:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.cache = []

    def _shutdown(self) -> None:
        events: Events = []
        for slot in self._slots:
            if slot.request is not None:
                self._finish(slot, "error", events, drop_kv=True, error="the model was unloaded")
        with self._cond:
            while self._waiting:
                request = self._waiting.popleft()
                request.sampler.close()
                gone = Finished("error", request.counts, "the model was unloaded")
                events.append((request, gone))
        deliver(events)
