"""ModelPool: loads generation and embedding models, finds them by id or alias."""

from __future__ import annotations

import asyncio

from engine_support import chat_tokens, collect, greedy

from node.config import ModelSpec
from node.engine import ModelPool
from node.engine.embeddings import EmbeddingModel
from node.engine.scheduler import Scheduler


def test_pool_loads_both_kinds_reports_progress_and_closes(default_gguf):
    specs = [
        ModelSpec(id="chat", path=default_gguf, n_ctx=1024, parallel=2, alias=("smol",)),
        ModelSpec(id="embed", path=default_gguf, n_ctx=256, parallel=1, embeddings=True),
    ]
    progress: list[tuple[str, float]] = []
    pool = ModelPool()
    assert not pool.ready and pool.infos() == []
    pool.load(specs, lambda name, pct: progress.append((name, pct)))
    try:
        assert pool.ready
        assert ("chat", 100.0) in progress and ("embed", 100.0) in progress
        chat = pool.generator("chat")
        assert isinstance(chat, Scheduler) and pool.generator("smol") is chat
        assert isinstance(pool.embedder("embed"), EmbeddingModel)
        assert pool.generator("embed") is None and pool.embedder("chat") is None
        assert pool.generator("nope") is None and pool.info("nope") is None
        assert pool.info("smol") is chat.info
        infos = {info.id: info for info in pool.infos()}
        assert infos["chat"].n_ctx == 1024 and infos["chat"].n_ctx_per_seq == 512
        assert infos["chat"].aliases == ("smol",) and not infos["chat"].embeddings
        assert infos["embed"].embeddings and infos["embed"].quant_type == "Q4_1"
        result = asyncio.run(collect(chat, chat_tokens(chat, "Hi!"), greedy(3)))
        assert result.finished.counts.completion_tokens > 0
    finally:
        pool.close()
    assert not pool.ready and pool.generator("chat") is None
