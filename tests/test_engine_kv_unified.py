"""A unified KV (`kv_unified`): one request may use more than n_ctx / parallel while the others
leave room, admission stays first come first served, idle slots give their cells back."""

from __future__ import annotations

import asyncio

import pytest

from node.engine.interface import ContextOverflow, Finished, SamplingParams, TextDelta
from node.engine.kv_room import KvRoom
from tests.engine_support import NO_EOG_BIAS, chat_tokens, collect, make_scheduler, run

N_CTX, PARALLEL = 512, 4  # a slot's share: 128 cells


def endless(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, logit_bias=NO_EOG_BIAS)


@pytest.fixture(scope="module")
def unified(default_gguf):
    engine = make_scheduler(
        default_gguf, n_ctx=N_CTX, parallel=PARALLEL, batching="mixed", kv_unified=True
    )
    yield engine
    engine.close()


def long_prompt(engine, n_words: int) -> list[int]:
    words = " ".join(f"w{i}" for i in range(n_words))
    return chat_tokens(engine, f"Repeat these words: {words}")


def test_a_request_may_use_more_than_one_slots_share(unified, default_gguf):
    tokens = long_prompt(unified, 40)
    assert N_CTX // PARALLEL < len(tokens) + 200 < N_CTX
    assert unified.info.n_ctx == N_CTX and unified.info.n_ctx_per_seq == N_CTX
    result = run(collect(unified, tokens, endless(200)))
    assert result.finished.reason == "length"
    assert result.finished.counts.completion_tokens == 200
    per_slot = make_scheduler(default_gguf, n_ctx=N_CTX, parallel=PARALLEL, batching="mixed")
    try:
        assert per_slot.info.n_ctx_per_seq == N_CTX // PARALLEL
        with pytest.raises(ContextOverflow):
            per_slot.check_fits(len(tokens), 200)
    finally:
        per_slot.close()


def test_without_max_tokens_a_request_stops_at_its_prompt_plus_one_share(unified):
    tokens = chat_tokens(unified, "Count to a thousand.")
    result = run(collect(unified, tokens, SamplingParams(temperature=0.0, logit_bias=NO_EOG_BIAS)))
    counts = result.finished.counts
    assert result.finished.reason == "length"
    assert counts.prompt_tokens + counts.completion_tokens == len(tokens) + N_CTX // PARALLEL + 1


def test_a_request_without_room_waits_and_nobody_overtakes_it(unified):
    """A reserves most of the pool; B does not fit beside it and waits; C would fit but came
    after B, so it waits behind B. Both are deferred (queued) until A is done."""
    order: list[str] = []

    async def scenario() -> None:
        a_tokens = chat_tokens(unified, "Tell me a long story about a lighthouse.")
        a = unified.submit(a_tokens, endless(N_CTX - len(a_tokens) - 100))
        a_started = asyncio.Event()

        async def drain(name: str, generation) -> Finished:
            async for event in generation:
                if isinstance(event, TextDelta):
                    if name != "A" and f"{name} first" not in order:
                        order.append(f"{name} first")
                    a_started.set()
                elif isinstance(event, Finished):
                    order.append(f"{name} done")
                    return event
            raise AssertionError("no Finished")

        a_task = asyncio.create_task(drain("A", a))
        await a_started.wait()
        b = unified.submit(chat_tokens(unified, "Name three rivers."), endless(200))
        c = unified.submit(chat_tokens(unified, "Say hi."), endless(5))
        assert unified.queued() == 2  # neither can have been admitted: A holds their room
        finished = await asyncio.gather(a_task, drain("B", b), drain("C", c))
        assert [f.reason for f in finished] == ["length", "length", "length"]

    run(scenario())
    assert order.index("A done") < order.index("B first")
    assert order.index("A done") < order.index("C first")
    assert unified.queued() == 0


def test_idle_slots_give_their_cells_to_a_long_request(unified):
    """Four finished conversations fill the pool; a long request still fits: their KV is
    saved to the prompt cache and emptied, and one of them is later restored from there."""
    prompts = [chat_tokens(unified, f"Describe the colour number {i} in detail.") for i in range(4)]

    async def fill() -> list:
        return await asyncio.gather(*(collect(unified, p, endless(100)) for p in prompts))

    run(fill())
    assert sum(unified.slot_tokens()) > N_CTX // 2  # what the four left behind
    saved_before = unified.prompt_cache_stats().entries
    tokens = long_prompt(unified, 60)
    result = run(collect(unified, tokens, endless(N_CTX - len(tokens) - 10)))
    assert result.finished.reason == "length" and result.finished.error is None
    assert unified.prompt_cache_stats().entries > saved_before
    again = run(collect(unified, prompts[0], endless(4)))
    assert again.finished.counts.cached_tokens >= len(prompts[0]) - 1


def test_room_accounting():
    per_slot = KvRoom(1000, 4, unified=False)
    assert per_slot.n_cells == 1000 and per_slot.per_request == 250
    assert per_slot.admissible([250, 250], [250, 250, 250], free_slots=2) == 2
    pool = KvRoom(1000, 4, unified=True)
    assert pool.reservation(100, None) == 350 and pool.reservation(900, 500) == 1000
    assert pool.fits(900, 100) and not pool.fits(900, 101)
    # FIFO: the 500 does not fit beside 600 reserved, and the 50 behind it waits too
    assert pool.admissible([600], [500, 50], free_slots=3) == 0
    assert pool.admissible([300], [500, 50, 300], free_slots=3) == 2
    assert pool.idle_room([600, 300]) == 100
