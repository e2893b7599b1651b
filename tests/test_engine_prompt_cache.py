"""The host-memory prompt cache on the real SmolLM2 GGUF: a prompt whose slot was taken by
another request gets its KV back from host memory, reports exactly those tokens as cached, and
(exact batching) generates what recomputing it would; the cache stays within its budget."""

from __future__ import annotations

import pytest
from engine_support import chat_tokens, collect, greedy, make_scheduler, run

STORY = (
    "Here is a story about a lighthouse keeper named Ada who lived alone on a rocky island far "
    "out at sea. Every night she climbed the spiral stairs, trimmed the wick, polished the "
    "great lens and watched the beam sweep across the black water. One winter a storm came that "
    "was worse than any she had seen, and a small fishing boat lost its way in the dark. "
)
OTHER = (
    "A recipe for bread: mix flour, water, salt and yeast, knead the dough for ten minutes, "
    "let it rise in a warm place until it doubles, shape it into a loaf, let it rise again and "
    "bake it in a hot oven until the crust is brown and it sounds hollow when tapped. "
)


def long_prompt(engine, text: str, question: str) -> list[int]:
    return chat_tokens(engine, text * 2 + question)


@pytest.mark.parametrize("batching", ["exact", "mixed"])
def test_a_prompt_whose_slot_was_taken_is_restored_with_exact_cached_tokens(default_gguf, batching):
    # One slot: the second prompt overwrites the first one's KV, which goes to the cache.
    engine = make_scheduler(default_gguf, n_ctx=2048, parallel=1, batching=batching)
    recompute = make_scheduler(
        default_gguf, n_ctx=2048, parallel=1, batching=batching, prompt_cache_mib=0
    )
    try:
        story = long_prompt(engine, STORY, "What happened to the boat?")
        other = long_prompt(engine, OTHER, "How long is the dough kneaded?")
        left = 2 if batching == "exact" else 1  # prompt tokens always decoded again

        first = run(collect(engine, story, greedy(16)))
        run(collect(engine, other, greedy(8)))
        again = run(collect(engine, story, greedy(16)))

        assert first.finished.counts.cached_tokens == 0
        assert again.finished.counts.cached_tokens == len(story) - left
        assert again.finished.counts.prompt_tokens == len(story)
        stats = engine.prompt_cache_stats()
        assert stats.hits == 1 and stats.tokens_restored == len(story) - left
        assert stats.lookups >= 2 and 0 < stats.bytes_held <= stats.budget_bytes

        # The same requests without the cache recompute the story's prompt.
        run(collect(recompute, story, greedy(16)))
        run(collect(recompute, other, greedy(8)))
        recomputed = run(collect(recompute, story, greedy(16)))
        assert recomputed.finished.counts.cached_tokens < 64  # at most the chat template's head
        assert recompute.prompt_cache_stats().hits == 0
        if batching == "exact":  # bit-identical: restoring is recomputing, only faster
            assert again.text == recomputed.text == first.text
    finally:
        engine.close()
        recompute.close()


def test_a_returning_conversation_restores_its_history_and_decodes_only_the_new_turn(
    default_gguf,
):
    engine = make_scheduler(default_gguf, n_ctx=2048, parallel=1, batching="mixed")
    try:
        turn1 = long_prompt(engine, STORY, "Who is the keeper?")
        reply = run(collect(engine, turn1, greedy(12)))
        run(collect(engine, long_prompt(engine, OTHER, "What is baked?"), greedy(8)))
        turn2 = turn1 + engine.tokenize(reply.text + "<|im_end|>\n<|im_start|>user\nAnd then?")
        second = run(collect(engine, turn2, greedy(8)))
        # Everything the first turn decoded that turn 2 repeats came back from host memory.
        assert second.finished.counts.cached_tokens >= len(turn1)
        assert engine.prompt_cache_stats().hits == 1
    finally:
        engine.close()


def test_the_cache_stays_within_its_budget_evicting_least_recently_used(default_gguf):
    budget_mib = 2  # SmolLM2 keeps ~23 KB of KV per token: ~90 tokens fit
    engine = make_scheduler(
        default_gguf, n_ctx=2048, parallel=1, batching="mixed", prompt_cache_mib=budget_mib
    )
    try:
        topics = ["cats", "ships", "rain", "bread", "maps", "bells"]
        prompts = [chat_tokens(engine, f"Write one line about {t}.") for t in topics]
        for tokens in prompts:
            run(collect(engine, tokens, greedy(4)))
            stats = engine.prompt_cache_stats()
            assert stats.bytes_held <= budget_mib * 1024 * 1024
        stats = engine.prompt_cache_stats()
        assert stats.evictions > 0 and 0 < stats.entries < len(prompts) - 1
        keys = engine._prompt_cache.keys()
        # The most recent overwritten sequence (the fifth prompt and its answer) is kept, the
        # first one went; each key starts with its prompt.
        assert keys[-1][: len(prompts[-2])] == tuple(prompts[-2])
        assert all(k[: len(prompts[0])] != tuple(prompts[0]) for k in keys)
        # A prompt longer than the whole budget is never stored.
        huge = long_prompt(engine, STORY * 2, "Summarise.")
        run(collect(engine, huge, greedy(2)))
        run(collect(engine, prompts[0], greedy(2)))
        assert engine.prompt_cache_stats().bytes_held <= budget_mib * 1024 * 1024
        assert all(len(k) < len(huge) for k in engine._prompt_cache.keys())  # noqa: SIM118
    finally:
        engine.close()
