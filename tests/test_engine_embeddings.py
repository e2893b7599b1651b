"""Embeddings on the real model: mean pooled, normalised, deterministic, batched."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from node.config import ModelSpec
from node.engine.embeddings import EmbeddingModel
from node.engine.interface import ContextOverflow
from node.engine.model import LoadedModel

TEXTS = ["The cat sat on the mat.", "Stock markets fell sharply today.", "A kitten sleeps."]


@pytest.fixture(scope="module")
def embedder(default_gguf):
    spec = ModelSpec(
        id="embed", path=default_gguf, n_ctx=256, parallel=1, embeddings=True, n_threads=1
    )
    engine = EmbeddingModel(LoadedModel(spec))
    yield engine
    engine.close()


def embed(engine, texts):
    return asyncio.run(engine.embed(texts))


def test_vectors_are_normalised_and_counted(embedder):
    result = embed(embedder, TEXTS)
    assert len(result.vectors) == 3
    for vector in result.vectors:
        assert len(vector) == embedder.info.n_embd == 576
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)
    assert result.prompt_tokens == sum(len(embedder.tokenize(t)) for t in TEXTS)


def test_embeddings_are_deterministic_and_distinct_texts_differ(embedder):
    first = embed(embedder, TEXTS).vectors
    again = embed(embedder, TEXTS).vectors
    assert first == again
    sims = np.array(first) @ np.array(first).T
    assert sims[0, 1] < 0.999 and sims[0, 2] < 0.999
    assert sims[0, 2] > sims[0, 1]  # cat and kitten are closer than cat and stocks


def test_batched_inputs_match_inputs_embedded_alone(embedder):
    batched = embed(embedder, TEXTS).vectors
    for text, vector in zip(TEXTS, batched, strict=True):
        alone = embed(embedder, [text]).vectors[0]
        assert np.allclose(alone, vector, atol=1e-4)


def test_more_inputs_than_one_decode_holds(embedder):
    texts = [f"sentence number {i} about topic {i % 5}" for i in range(20)]
    result = embed(embedder, texts)
    assert len(result.vectors) == 20  # more than the 16 sequences one decode takes
    assert np.allclose(result.vectors[7], embed(embedder, [texts[7]]).vectors[0], atol=1e-4)


def test_over_long_input_raises_context_overflow(embedder):
    with pytest.raises(ContextOverflow) as info:
        embed(embedder, ["short", "word " * 400])
    assert info.value.n_ctx == 256 and info.value.n_prompt_tokens > 256
    assert len(embed(embedder, ["still works"]).vectors) == 1
