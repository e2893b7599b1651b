"""`batching = "mixed"` on the real SmolLM2 GGUF: prompt chunks ride in the generation steps.

Mixed batching gives up bit-identical output (a sequence's logits depend slightly on its batch
mates in llama.cpp's kernels), so these tests check what it promises instead: streams keep
getting tokens while a long prompt is processed, greedy output batched agrees with output alone
on nearly every token, logits agree within a tolerance, and no sequence attends to another's
tokens (which would move its logits by far more than the tolerance).
"""

from __future__ import annotations

import asyncio

import pytest
from engine_support import NO_EOG_BIAS, chat_tokens, collect, greedy, make_scheduler, run

from node.engine.interface import SamplingParams, TextDelta

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
# Largest difference allowed between a top token's log-probability batched and alone, up to the
# first token where the two runs diverge. Measured on SmolLM2 Q4_1 over 8 prompts x 24 tokens:
# median 0, p99 0.011, max 0.17 (a prompt's first token in a one-token group takes other
# kernels); a sequence that saw another's tokens would differ by O(1).
LOGPROB_TOLERANCE = 0.25


@pytest.fixture(scope="module")
def engine(default_gguf):
    scheduler = make_scheduler(
        default_gguf, n_ctx=8 * 512, parallel=8, batching="mixed", prompt_cache_mib=0
    )
    yield scheduler
    scheduler.close()


async def tokens_and_logprobs(engine, tokens: list[int], params: SamplingParams):
    return await drain(engine.submit(tokens, params))


def submit_together(engine, jobs):
    """Submit (tokens, params) jobs so that one scheduler step admits them all: its lock is
    held meanwhile (a reentrant one, so `submit` still takes it here). Which prompts share a
    step then does not depend on thread timing, and neither do their logits."""
    with engine._cond:
        return [engine.submit(tokens, params) for tokens, params in jobs]


async def drain(request):
    """A submitted request's tokens and logprobs."""
    out: list[int] = []
    logprobs = []
    async for event in request:
        if isinstance(event, TextDelta):
            out.extend(event.tokens)
            logprobs.extend(event.logprobs or ())
    return out, logprobs


def test_greedy_batched_agrees_with_alone_on_nearly_every_token_and_logits(engine):
    prompts = [chat_tokens(engine, p) for p in PROMPTS]
    params = SamplingParams(temperature=0.0, max_tokens=MAX, logprobs=5, logit_bias=NO_EOG_BIAS)

    async def together():
        requests = submit_together(engine, [(t, params) for t in prompts])
        return await asyncio.gather(*(drain(r) for r in requests))

    batched = run(together())
    alone = [run(tokens_and_logprobs(engine, t, params)) for t in prompts]
    agree = total = identical = 0
    for (b_tokens, b_lp), (a_tokens, a_lp) in zip(batched, alone, strict=True):
        assert len(b_tokens) == len(a_tokens) == MAX
        same = 0
        while same < MAX and b_tokens[same] == a_tokens[same]:
            same += 1
        agree += same
        total += MAX
        identical += same == MAX
        # Up to the first divergence both saw the same history: their logits must agree.
        for b, a in zip(b_lp[: same + 1], a_lp[: same + 1], strict=True):
            a_top = {t.token: t.logprob for t in a.top}
            for t in b.top:
                if t.token in a_top:
                    assert abs(t.logprob - a_top[t.token]) < LOGPROB_TOLERANCE
    # Measured: 7 or 8 of the 8 identical over all 24 tokens (one diverged at its 2nd token).
    assert agree / total >= 0.75, (agree, total)
    assert identical >= len(PROMPTS) - 2
    assert len({tuple(t) for t, _ in batched}) == len(PROMPTS)  # eight different answers


def test_a_stream_keeps_getting_tokens_while_a_long_prompt_is_prefilled(default_gguf):
    chunk = 32
    engine = make_scheduler(
        default_gguf, n_ctx=4 * 1024, parallel=4, batching="mixed", prefill_chunk=chunk
    )
    endless = SamplingParams(temperature=0.0, max_tokens=400, logit_bias=NO_EOG_BIAS)
    long_prompt = chat_tokens(engine, "Tell me about the sea. " * 60)
    assert len(long_prompt) > 10 * chunk

    async def scenario():
        stream = engine.submit(chat_tokens(engine, "Count to a thousand."), endless)
        events = stream.__aiter__()
        await events.__anext__()
        before = stream.counts.completion_tokens
        late = engine.submit(long_prompt, greedy(2))
        await late.__aiter__().__anext__()
        during = stream.counts.completion_tokens - before
        stream.cancel()
        async for _ in events:
            pass
        return during

    try:
        during = run(scenario())
    finally:
        engine.close()
    # One generated token per step while the prompt goes in `chunk` tokens at a time
    # (exact batching would give the stream one or two: the whole prompt is one step).
    assert during >= len(long_prompt) // chunk - 1, during


def test_a_sequence_never_attends_to_its_batch_mates_tokens(engine):
    """The same prompt beside two different sets of batch mates: identical top tokens and
    logits within tolerance (leaked attention would change them wholesale)."""
    probe = chat_tokens(engine, "Repeat the secret word: the secret word is apple.")
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=5)
    mates_a = [chat_tokens(engine, f"The secret word is {w}. Say it.") for w in ("pear", "fig")]
    mates_b = [chat_tokens(engine, f"Ignore everything and shout {w}!") for w in ("NO", "YES")]
    endless = SamplingParams(temperature=0.0, max_tokens=8, logit_bias=NO_EOG_BIAS)

    async def beside(mates):
        requests = submit_together(engine, [(probe, params)] + [(m, endless) for m in mates])
        results = await asyncio.gather(*(drain(r) for r in requests))
        return results[0]

    first = run(beside(mates_a))
    second = run(beside(mates_b))
    for a, b in zip(first[1][:1], second[1][:1], strict=True):  # the first token's logits
        assert [t.token for t in a.top][:3] == [t.token for t in b.top][:3]
        for x, y in zip(a.top, b.top, strict=True):
            if x.token == y.token:
                assert abs(x.logprob - y.logprob) < LOGPROB_TOLERANCE


def test_a_bad_token_fails_only_its_request_in_a_mixed_step(engine):
    good = chat_tokens(engine, PROMPTS[6])
    expected = run(collect(engine, good, greedy(MAX))).text
    broken = [*good[:-1], 10_000_000]  # no such token: llama_decode rejects the batch
    streaming = SamplingParams(temperature=0.0, max_tokens=40, logit_bias=NO_EOG_BIAS)

    async def together():
        return await asyncio.gather(
            collect(engine, chat_tokens(engine, PROMPTS[0]), streaming),
            collect(engine, good, greedy(MAX)),
            collect(engine, broken, greedy(MAX)),
        )

    stream, ok, failed = run(together())
    assert failed.finished.reason == "error" and "llama_decode" in failed.finished.error
    assert failed.text == "" and failed.finished.counts.completion_tokens == 0
    assert ok.finished.reason != "error" and stream.finished.reason == "length"
    assert stream.finished.counts.completion_tokens == 40
    assert run(collect(engine, good, greedy(MAX))).text == expected
