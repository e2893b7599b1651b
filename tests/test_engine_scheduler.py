"""The scheduler on the real SmolLM2 GGUF: batching, admission, cancellation, stops, limits."""

from __future__ import annotations

import asyncio

import llama_cpp
import pytest
from engine_support import (
    NO_EOG_BIAS,
    TEST_THREADS,
    chat_tokens,
    collect,
    greedy,
    make_scheduler,
    run,
)
from llama_cpp import Llama

from node.engine.interface import (
    ChatMessage,
    ContextOverflow,
    EngineBusy,
    Finished,
    SamplingParams,
    TextDelta,
)

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Who wrote Hamlet?",
    "Explain photosynthesis in one sentence.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 12?",
    "Name a famous painter.",
]
MAX = 24


@pytest.fixture(scope="module")
def engine(default_gguf):
    scheduler = make_scheduler(default_gguf, n_ctx=8 * 512, parallel=8)
    yield scheduler
    scheduler.close()


@pytest.fixture(scope="module")
def reference(default_gguf):
    """llama-cpp-python's own high-level `Llama` on the same file: the peer to agree with."""
    llm = Llama(str(default_gguf), n_ctx=512, n_batch=512, n_threads=TEST_THREADS, verbose=False)
    yield llm
    llm.close()


def reference_greedy(
    llm: Llama, tokens: list[int], max_tokens: int, logit_bias: dict[int, float] | None = None
) -> tuple[str, int]:
    out: list[int] = []
    processor = None
    if logit_bias:
        bias = logit_bias

        def processor(_ids, scores):  # the same bias as the engine's sampler applies
            for token, value in bias.items():
                scores[token] += value
            return scores

    for token in llm.generate(tokens, temp=0.0, top_k=1, reset=True, logits_processor=processor):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            break
        out.append(token)
        if len(out) == max_tokens:
            break
    return llm.detokenize(out).decode("utf-8", errors="replace"), len(out)


def test_greedy_batch_of_eight_matches_each_alone_and_high_level_llama(engine, reference):
    prompts = [chat_tokens(engine, p) for p in PROMPTS]

    async def together():
        return await asyncio.gather(*(collect(engine, t, greedy(MAX)) for t in prompts))

    batched = run(together())
    alone = [run(collect(engine, t, greedy(MAX))) for t in prompts]
    for tokens, b, a in zip(prompts, batched, alone, strict=True):
        ref_text, ref_count = reference_greedy(reference, tokens, MAX)
        assert b.text == a.text == ref_text
        assert b.finished.counts.completion_tokens == a.finished.counts.completion_tokens
        assert b.finished.counts.completion_tokens == ref_count
        assert b.finished.reason == ("length" if ref_count == MAX else "stop")
    assert len({r.text for r in batched}) == len(PROMPTS)  # really eight different answers


def test_equal_length_prompts_arriving_together_share_one_decode_and_stay_exact(
    default_gguf, reference
):
    engine = make_scheduler(default_gguf, n_ctx=4 * 512, parallel=4)  # empty KV: no reuse
    prompts = [chat_tokens(engine, f"Name a {thing}.") for thing in ("color", "fruit", "bird")]
    assert len({len(t) for t in prompts}) == 1  # same length: one group

    async def together():
        # Holding the scheduler's (reentrant) lock while submitting: all three are admitted in
        # the same step, as a burst of requests is.
        with engine._cond:
            runs = [asyncio.ensure_future(collect(engine, t, greedy(MAX))) for t in prompts]
            await asyncio.sleep(0)  # each task submits up to its first wait
        return await asyncio.gather(*runs)

    try:
        batched = run(together())
        # One decode of the three prompts gives each its first sampled token, then one decode
        # per step for all that still generate; an end-of-generation token is sampled too.
        sampled = [r.finished.counts.completion_tokens + (r.finished.reason == "stop")
                   for r in batched]  # fmt: skip
        assert engine.decode_calls == max(sampled)
        for tokens, result in zip(prompts, batched, strict=True):
            ref_text, ref_count = reference_greedy(reference, tokens, MAX)
            assert result.text == ref_text
            assert result.finished.counts.completion_tokens == ref_count
        assert len({r.text for r in batched}) == 3
    finally:
        engine.close()


def test_prompt_tokens_equal_the_tokenizer_count_of_the_rendered_template(engine, reference):
    rendered = engine.render_chat([ChatMessage("user", "Count my tokens, please.")])
    assert rendered.startswith("<|im_start|>") and rendered.endswith("<|im_start|>assistant\n")
    tokens = engine.tokenize(rendered)
    expected = reference.tokenize(rendered.encode(), add_bos=False, special=True)
    assert tokens == expected
    result = run(collect(engine, tokens, greedy(4)))
    assert result.finished.counts.prompt_tokens == len(expected)


def test_late_request_gets_its_first_token_while_seven_others_still_stream(engine):
    long = SamplingParams(temperature=0.0, max_tokens=120, logit_bias=NO_EOG_BIAS)

    async def scenario():
        generations = [engine.submit(chat_tokens(engine, p), long) for p in PROMPTS[:7]]
        iterators = [g.__aiter__() for g in generations]
        for it in iterators:  # every one of the seven is streaming
            assert isinstance(await it.__anext__(), TextDelta)
        late = engine.submit(chat_tokens(engine, PROMPTS[7]), greedy(4))
        first = await late.__aiter__().__anext__()
        progress = [g.counts.completion_tokens for g in generations]
        for g in generations:
            g.cancel()
        for it in iterators:
            async for _ in it:
                pass
        return first, progress

    first, progress = run(scenario())
    assert isinstance(first, TextDelta)
    assert all(0 < n < 120 for n in progress), progress


def test_cancel_stops_production_frees_the_slot_and_its_kv(default_gguf):
    engine = make_scheduler(default_gguf, n_ctx=2 * 256, parallel=2)
    try:
        tokens = chat_tokens(engine, "Tell me a very long story.")
        endless = SamplingParams(temperature=0.0, logit_bias=NO_EOG_BIAS)

        async def scenario():
            generation = engine.submit(tokens, endless)
            seen = 0
            events = generation.__aiter__()
            while seen < 3:
                if isinstance(await events.__anext__(), TextDelta):
                    seen += 1
            generation.cancel()
            last = None
            async for event in events:
                last = event
            at_end = generation.counts.completion_tokens
            await asyncio.sleep(0.3)
            return last, at_end, generation.counts.completion_tokens

        last, at_end, later = run(scenario())
        assert isinstance(last, Finished) and last.reason == "cancelled"
        assert 3 <= last.counts.completion_tokens < 40
        assert later == at_end == last.counts.completion_tokens  # production stopped
        assert engine.busy_slots() == 0
        assert engine.slot_tokens() == [0, 0]  # the cancelled sequence's KV is gone
        again = run(collect(engine, tokens, greedy(2)))
        assert again.finished.counts.cached_tokens == 0  # nothing left to reuse
    finally:
        engine.close()


def test_stop_string_is_never_emitted_even_partially(engine):
    tokens = chat_tokens(engine, PROMPTS[4])
    full = run(collect(engine, tokens, greedy(MAX))).text
    words = full.split()
    assert len(words) > 4
    stop = f"{words[2]} {words[3][:2]}"  # spans a word boundary, so likely several tokens
    result = run(collect(engine, tokens, greedy(MAX, stop=(stop,))))
    assert result.finished.reason == "stop"
    assert result.text == full[: full.index(stop)]
    emitted = ""
    for delta in result.deltas:
        emitted += delta
        assert stop not in emitted
    assert not any(emitted.endswith(stop[:k]) for k in range(1, len(stop)) if emitted)


def test_max_tokens_finishes_with_length(engine):
    tokens = chat_tokens(engine, "Count from one to one hundred.")
    result = run(collect(engine, tokens, greedy(5)))
    assert result.finished.reason == "length"
    assert result.finished.counts.completion_tokens == 5


def test_context_full_finishes_with_length(default_gguf):
    engine = make_scheduler(default_gguf, n_ctx=2 * 64, parallel=2)
    try:
        tokens = chat_tokens(engine, "Hi")
        endless = SamplingParams(temperature=0.0, logit_bias=NO_EOG_BIAS)
        result = run(collect(engine, tokens, endless))
        assert result.finished.reason == "length"
        counts = result.finished.counts
        assert counts.prompt_tokens + counts.completion_tokens == 64 + 1  # last one not decoded
    finally:
        engine.close()


def test_context_overflow_raises_before_any_decode(engine):
    n_ctx = engine.info.n_ctx_per_seq
    with pytest.raises(ContextOverflow) as info:
        engine.check_fits(n_ctx - 10, 11)
    assert info.value.n_prompt_tokens == n_ctx - 10 and info.value.n_ctx == n_ctx
    engine.check_fits(n_ctx - 10, 10)
    too_long = [198] * (n_ctx + 1)

    async def submit():
        return engine.submit(too_long, SamplingParams(temperature=0.0))

    with pytest.raises(ContextOverflow):
        run(submit())
    assert engine.queued() == 0 and engine.busy_slots() == 0


def test_prefix_reuse_reports_cached_tokens_and_same_output(engine):
    tokens = chat_tokens(engine, "Describe a cat in five words, exactly.")
    first = run(collect(engine, tokens, greedy(12)))
    second = run(collect(engine, tokens, greedy(12)))
    assert first.finished.counts.cached_tokens == 0 or first.text == second.text
    assert second.finished.counts.cached_tokens == len(tokens) - 2  # two left to decode
    assert second.text == first.text
    longer = tokens + engine.tokenize("Add one more word.")
    third = run(collect(engine, longer, greedy(4)))
    assert third.finished.counts.cached_tokens >= len(tokens)


def test_a_prefix_another_busy_slot_holds_is_copied_not_recomputed(default_gguf, reference):
    engine = make_scheduler(default_gguf, n_ctx=2 * 512, parallel=2)
    tokens = chat_tokens(engine, "Describe a lighthouse keeper's day during a winter storm.")
    endless = SamplingParams(temperature=0.0, max_tokens=200, logit_bias=NO_EOG_BIAS)

    async def scenario():
        first = engine.submit(tokens, endless)
        events = first.__aiter__()  # kept: a dropped iterator cancels its generation
        await events.__anext__()  # its prompt is in slot 0's KV; it keeps going
        second = await collect(engine, tokens, greedy(MAX))  # slot 1 borrows the prefix
        first.cancel()
        async for _ in events:
            pass
        return second

    try:
        second = run(scenario())
    finally:
        engine.close()
    assert second.finished.counts.cached_tokens == len(tokens) - 2  # two left to decode
    ref_text, ref_count = reference_greedy(reference, tokens, MAX)
    assert second.text == ref_text
    assert second.finished.counts.completion_tokens == ref_count


def test_full_queue_raises_engine_busy(default_gguf):
    engine = make_scheduler(default_gguf, n_ctx=256, parallel=1, max_queue=1)
    try:
        tokens = chat_tokens(engine, "Hello")
        endless = SamplingParams(temperature=0.0, max_tokens=200, logit_bias=NO_EOG_BIAS)

        async def scenario():
            running = engine.submit(tokens, endless)
            await running.__aiter__().__anext__()  # admitted and streaming
            queued = engine.submit(tokens, endless)
            with pytest.raises(EngineBusy):
                engine.submit(tokens, endless)
            running.cancel()
            queued.cancel()
            reasons = []
            for g in (running, queued):
                async for event in g:
                    if isinstance(event, Finished):
                        reasons.append(event.reason)
            return reasons

        assert run(scenario()) == ["cancelled", "cancelled"]
    finally:
        engine.close()


def test_empty_prompt_and_bad_grammar_are_rejected_at_submit(engine):
    async def submit(tokens, params):
        return engine.submit(tokens, params)

    with pytest.raises(ValueError, match="empty"):
        run(submit([], SamplingParams()))
    with pytest.raises(ValueError, match="grammar"):
        run(submit([1, 2, 3], SamplingParams(grammar="root ::= nonsense-rule")))
    with pytest.raises(ValueError, match="logit_bias"):
        run(submit([1, 2, 3], SamplingParams(logit_bias={10**9: 1.0})))


def test_decode_failure_fails_that_request_only_and_the_engine_keeps_serving(engine):
    good = chat_tokens(engine, PROMPTS[6])
    expected = run(collect(engine, good, greedy(MAX))).text
    broken = [*good[:-1], 10_000_000]  # no such token: llama_decode rejects the batch

    async def together():
        return await asyncio.gather(
            collect(engine, good, greedy(MAX)), collect(engine, broken, greedy(MAX))
        )

    ok, failed = run(together())
    assert failed.finished.reason == "error" and "llama_decode" in failed.finished.error
    assert failed.text == "" and failed.finished.counts.completion_tokens == 0
    assert ok.finished.reason != "error" and ok.text == expected
    assert run(collect(engine, good, greedy(MAX))).text == expected
