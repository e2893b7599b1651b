"""Token-level engine events on the real SmolLM2 GGUF: deltas carry their token ids (and
logprobs when asked), `Finished` says why it stopped, and the lazy grammar stays out of the way
until its trigger."""

from __future__ import annotations

import math

import pytest
from engine_support import NO_EOG_BIAS, chat_tokens, collect, greedy, make_scheduler, run

from node.engine.interface import SamplingParams, TextDelta


@pytest.fixture(scope="module")
def engine(default_gguf):
    scheduler = make_scheduler(default_gguf, n_ctx=2 * 1024, parallel=2)
    yield scheduler
    scheduler.close()


async def _events(engine, tokens, params):
    deltas: list[TextDelta] = []
    async for event in engine.submit(tokens, params):
        if isinstance(event, TextDelta):
            deltas.append(event)
        else:
            return deltas, event
    raise AssertionError("no Finished")


def test_deltas_carry_every_generated_token_and_finished_says_length(engine):
    tokens = chat_tokens(engine, "Tell me about the moon.")
    deltas, finished = run(_events(engine, tokens, greedy(20, logit_bias=NO_EOG_BIAS)))
    ids = [t for d in deltas for t in d.tokens]
    assert finished.stop == "length" and finished.reason == "length"
    assert len(ids) == finished.counts.completion_tokens == 20
    assert engine.model.detokenize(ids) == "".join(d.text for d in deltas)
    assert all(d.logprobs is None for d in deltas)  # not asked for: none computed


def test_a_natural_end_is_eos_and_a_stop_string_is_word(engine):
    tokens = chat_tokens(engine, "Say hello.")
    ended = run(collect(engine, tokens, greedy(200)))
    assert ended.finished.stop == "eos" and ended.finished.stop_word is None
    words = ended.text.split()
    assert len(words) >= 2, ended.text
    stop = words[1]
    stopped = run(collect(engine, tokens, greedy(200, stop=(stop,))))
    assert stopped.finished.stop == "word" and stopped.finished.stop_word == stop
    assert stopped.finished.reason == "stop"
    assert stop not in stopped.text and ended.text.startswith(stopped.text)


def test_logprobs_greedy_token_is_top_one_sorted_and_at_most_one(engine):
    tokens = chat_tokens(engine, "Tell me about the moon.")
    params = greedy(12, logprobs=5)  # no bias: the greedy pick is the raw logits' argmax
    deltas, finished = run(_events(engine, tokens, params))
    entries = [lp for d in deltas for lp in d.logprobs or ()]
    assert len(entries) == finished.counts.completion_tokens == 12
    for d in deltas:
        assert d.logprobs is not None and [lp.token for lp in d.logprobs] == list(d.tokens)
    for lp in entries:
        assert len(lp.top) == 5
        assert lp.top[0].token == lp.token and lp.top[0].logprob == lp.logprob
        values = [t.logprob for t in lp.top]
        assert values == sorted(values, reverse=True)
        assert all(math.exp(v) <= 1.0 for v in values)
        assert lp.piece == engine.model.piece(lp.token)
    # The same request without logprobs generates the same tokens.
    plain, _ = run(_events(engine, tokens, greedy(12)))
    assert [t for d in plain for t in d.tokens] == [lp.token for lp in entries]


def test_sampled_logprobs_are_pre_sampling_values_and_zero_top_means_the_token_only(engine):
    tokens = chat_tokens(engine, "Name a fruit.")
    params = SamplingParams(temperature=0.9, seed=3, max_tokens=8, logprobs=0)
    deltas, _ = run(_events(engine, tokens, params))
    entries = [lp for d in deltas for lp in d.logprobs or ()]
    assert entries and all(lp.top == () and lp.logprob <= 0.0 for lp in entries)


def test_lazy_grammar_is_free_before_its_trigger_and_binding_after(engine):
    tokens = chat_tokens(engine, "Tell me about the moon.")
    free = run(collect(engine, tokens, greedy(30, logit_bias=NO_EOG_BIAS)))
    words = free.text.split()
    assert len(words) > 4, free.text
    never = "<never-in-this-output>"
    grammar = f'root ::= "{never}" " zebra"'
    untriggered = greedy(30, logit_bias=NO_EOG_BIAS, grammar=grammar, grammar_triggers=(never,))
    assert run(collect(engine, tokens, untriggered)).text == free.text  # nothing masked
    trigger = words[3]
    lazy = greedy(30, grammar=f'root ::= "{trigger}" " zebra"', grammar_triggers=(trigger,))
    result = run(collect(engine, tokens, lazy))
    head = free.text[: free.text.index(trigger) + len(trigger)]
    assert result.text == head + " zebra", result.text  # after it, only what the grammar allows
    assert result.finished.stop == "eos"


def test_a_choice_submitted_after_the_first_token_copies_the_prompt_kv(engine):
    """What `n` > 1 relies on: the service submits the other choices once the first choice has
    its first token, so the engine copies the decoded prompt instead of decoding it again."""
    tokens = chat_tokens(engine, "Tell me a story about a dragon and a knight.")
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=6)

    async def two_choices():
        first = engine.submit(tokens, params)
        second = None
        async for _event in first:
            if second is None:
                second = engine.submit(tokens, SamplingParams(temperature=1.0, seed=4,
                                                              max_tokens=6))  # fmt: skip
        assert second is not None
        async for _event in second:
            pass
        return first.counts, second.counts

    first, second = run(two_choices())
    assert first.prompt_tokens == second.prompt_tokens == len(tokens)
    assert second.cached_tokens == len(tokens) - 2  # all but the last two prompt tokens


def test_special_tokens_show_as_text_only_when_asked(engine):
    im_start = engine.tokenize("<|im_start|>")[-1]
    assert engine.model.piece(im_start) == b""
    assert engine.model.piece(im_start, special=True) == b"<|im_start|>"
    assert engine.model.piece(im_start) == b""  # both cached apart
