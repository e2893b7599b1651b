"""Hostile sampling values on the real model: each generates or fails alone, never the process.

A tiny temperature once made `1/T` overflow into NaN weights and an id of `n_vocab`, on which
llama.cpp aborts the whole process; huge grammars overflowed the C stack. Each case here runs
beside a long ordinary request that must finish as if nothing happened.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from engine_support import NO_EOG_BIAS, chat_tokens, collect, greedy, make_scheduler, run

from node.engine import scheduler as scheduler_module
from node.engine.grammar import JSON_OBJECT_GRAMMAR, json_schema_grammar
from node.engine.interface import SamplingParams
from node.engine.sampling import SequenceSampler

TINY = [1e-38, 1.4e-45, 5e-324, 1e-6]
PATHS = {  # softmax draw, llama.cpp chain, chain with penalties, grammar
    "softmax": {},
    "chain": {"top_k": 40, "top_p": 0.9, "min_p": 0.05},
    "penalties": {"repeat_penalty": 1.3, "presence_penalty": 0.5},
    "grammar": {"grammar": JSON_OBJECT_GRAMMAR, "top_k": 40},
}
LONG = 40


@pytest.fixture(scope="module")
def engine(default_gguf):
    scheduler = make_scheduler(default_gguf, n_ctx=8 * 256, parallel=8, max_queue=64)
    yield scheduler
    scheduler.close()


def long_request(engine):
    tokens = chat_tokens(engine, "Count from one to one hundred.")
    return collect(engine, tokens, greedy(LONG, logit_bias=NO_EOG_BIAS))


def test_tiny_temperatures_are_greedy_on_every_path(engine):
    tokens = chat_tokens(engine, "Return a JSON object about a dog.")

    async def scenario():
        jobs = [long_request(engine)]
        for extra in PATHS.values():
            jobs.append(
                collect(engine, tokens, SamplingParams(temperature=0.0, max_tokens=12, **extra))
            )
            for t in TINY:
                params = SamplingParams(temperature=t, seed=3, max_tokens=12, **extra)
                jobs.append(collect(engine, tokens, params))
        return await asyncio.gather(*jobs)

    long, *rest = run(scenario())
    assert long.finished.reason == "length" and long.finished.counts.completion_tokens == LONG
    per_path = len(TINY) + 1
    for i, name in enumerate(PATHS):
        reference, *tiny = rest[i * per_path : (i + 1) * per_path]
        assert reference.finished.reason in ("stop", "length"), name
        for t, result in zip(TINY, tiny, strict=True):
            assert result.finished.reason == reference.finished.reason, (name, t)
            assert result.text == reference.text, (name, t)


class _OffTheEnd(SequenceSampler):
    """A real sampler whose answer is pushed past the vocabulary, as NaN weights once did."""

    def sample(self, ctx, index):
        return super().sample(ctx, index) + 49152


class _Raising(SequenceSampler):
    def sample(self, ctx, index):
        super().sample(ctx, index)
        raise FloatingPointError("the softmax over the logits is not finite")


@pytest.mark.parametrize(
    "sampler, message", [(_OffTheEnd, "outside the vocabulary"), (_Raising, "not finite")]
)
def test_a_bad_sample_fails_only_its_request(engine, monkeypatch, sampler, message):
    tokens = chat_tokens(engine, "Say hello.")

    async def scenario():
        long = asyncio.ensure_future(long_request(engine))
        await asyncio.sleep(0)  # submitted first, so it is already generating
        with monkeypatch.context() as patch:
            patch.setattr(scheduler_module, "SequenceSampler", sampler)
            bad = engine.submit(tokens, SamplingParams(temperature=0.7, max_tokens=8))
        events = [event async for event in bad]
        return events, await long

    events, long = run(scenario())
    assert [type(e).__name__ for e in events] == ["Finished"]
    assert events[0].reason == "error" and message in events[0].error
    assert long.finished.reason == "length" and long.finished.counts.completion_tokens == LONG
    after = run(collect(engine, tokens, greedy(4)))
    assert after.finished.reason in ("stop", "length") and after.text


@pytest.mark.parametrize(
    "bias",
    [
        {-1: 1.0},
        {49152: 1.0},
        {2**70: 1.0},
        {5: math.nan},
        {5: math.inf},
        {5: -math.inf},
        {5: 1e30},
        {"5": 1.0},
        {5.0: 1.0},
        {True: 1.0},
    ],
)
def test_hostile_logit_bias_is_a_value_error(engine, bias):
    for params in (
        SamplingParams(logit_bias=bias),
        SamplingParams(temperature=0.0, logit_bias=bias),
    ):
        with pytest.raises(ValueError, match="logit_bias"):
            engine.validate(params)

    async def submit():
        engine.submit([1, 2, 3], SamplingParams(logit_bias=bias))

    with pytest.raises(ValueError, match="logit_bias"):
        run(submit())


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("temperature", -1.0),
        ("top_p", math.nan),
        ("min_p", math.inf),
        ("repeat_penalty", 0.0),
        ("repeat_penalty", math.nan),
        ("presence_penalty", math.nan),
        ("frequency_penalty", -math.inf),
    ],
)
def test_non_finite_sampling_values_are_value_errors(engine, field, value):
    with pytest.raises(ValueError, match=field):
        engine.validate(SamplingParams(**{field: value}))


@pytest.mark.parametrize(
    "grammar, reason",
    [
        ("root ::= " + "(" * 100_000 + '"a"' + ")" * 100_000, "deeper"),
        ('root ::= "a"{0,100000}', "repeats"),
        ('root ::= "a"{' + "9" * 5000 + "}", "repeats"),
        ('root ::= "a" ' + "x" * 300_000, "longer"),
        ("root ::= (", "parsed"),
        ("  \n ", "empty"),
    ],
)
def test_hostile_grammar_text_is_refused_before_llama_cpp(engine, grammar, reason):
    with pytest.raises(ValueError, match=reason):
        engine.validate(SamplingParams(grammar=grammar))


def test_the_largest_allowed_schema_bound_parses_and_generates(engine):
    with pytest.raises(ValueError, match=r"response_format.*maxLength 100000"):
        json_schema_grammar({"type": "string", "maxLength": 100_000})
    grammar = json_schema_grammar({"type": "string", "minLength": 1, "maxLength": 1000})
    params = SamplingParams(temperature=0.0, max_tokens=6, grammar=grammar)
    engine.validate(params)
    result = run(collect(engine, chat_tokens(engine, "Say a word in quotes."), params))
    assert result.finished.reason in ("stop", "length") and result.text.startswith('"')
