"""`SoftmaxDraw`: the full-vocabulary draw behind OpenAI's default sampling."""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest

from node.engine.softmax_draw import SoftmaxDraw

N_VOCAB = 49152  # SmolLM2's vocabulary: 192 blocks of 256


def as_logits(values: np.ndarray) -> ctypes.Array:
    return (ctypes.c_float * len(values))(*values.astype(np.float32))


def peaked_logits() -> np.ndarray:
    """Five likely tokens in different blocks, the rest far below but not impossible."""
    logits = np.full(N_VOCAB, -30.0)
    logits[[3, 700, 701, 30_000, N_VOCAB - 1]] = [1.0, 2.0, 0.5, 1.5, 0.0]
    return logits


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    p = np.exp(z - z.max())
    return p / p.sum()


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_frequencies_follow_the_softmax_at_the_temperature(temperature):
    logits = peaked_logits()
    draw = SoftmaxDraw(N_VOCAB, temperature, {}, seed=7)
    pointer = as_logits(logits)
    n = 10_000
    counts = np.bincount([draw(pointer) for _ in range(n)], minlength=N_VOCAB)
    expected = softmax(logits, temperature)
    for token in (3, 700, 701, 30_000, N_VOCAB - 1):
        sigma = math.sqrt(n * expected[token] * (1 - expected[token]))
        assert abs(counts[token] - n * expected[token]) < 5 * sigma, token
    assert counts.sum() == n


def test_logit_bias_bans_and_forces_tokens_as_llama_cpp_adds_it():
    pointer = as_logits(peaked_logits())
    banned = SoftmaxDraw(N_VOCAB, 0.7, {700: -100.0, 30_000: -100.0}, seed=1)
    drawn = {banned(pointer) for _ in range(2000)}
    assert drawn == {3, 701, N_VOCAB - 1}  # the other three likely ones; the rest ~e-13 each
    forced = SoftmaxDraw(N_VOCAB, 1.5, {12_345: 100.0}, seed=1)
    assert {forced(pointer) for _ in range(200)} == {12_345}


def test_same_seed_same_tokens_and_different_seeds_differ():
    pointer = as_logits(np.random.default_rng(0).normal(0.0, 2.0, N_VOCAB))

    def tokens(seed: int) -> list[int]:
        draw = SoftmaxDraw(N_VOCAB, 1.0, {}, seed=seed)
        return [draw(pointer) for _ in range(50)]

    assert tokens(42) == tokens(42)
    assert tokens(42) != tokens(43)


class _FixedRandom:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize("value", [0.0, 1.0 - 2**-53])
def test_the_extreme_random_values_still_pick_a_token_with_weight(value):
    logits = np.full(1000, -1e4)  # a vocabulary that is not a multiple of the block size
    logits[[5, 998]] = [0.0, 0.0]
    draw = SoftmaxDraw(1000, 1.0, {}, seed=0)
    draw._rng = _FixedRandom(value)  # type: ignore[assignment]
    assert draw(as_logits(logits)) == (5 if value == 0.0 else 998)


def test_zero_temperature_is_refused():
    with pytest.raises(ValueError, match="temperature"):
        SoftmaxDraw(N_VOCAB, 0.0, {}, seed=0)
