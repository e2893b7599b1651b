"""Mean-pooled, L2-normalised embeddings; several inputs share one decode, each its own sequence."""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import llama_cpp
import numpy as np

from node.engine.batch import TokenBatch
from node.engine.interface import ContextOverflow, Embeddings
from node.engine.model import LoadedModel

MAX_SEQS_PER_DECODE = 16


class EmbeddingModel:
    """Implements `interface.EmbeddingEngine`; decodes on its own worker thread."""

    def __init__(self, model: LoadedModel) -> None:
        spec = model.spec
        self.model = model
        self.n_ctx = spec.n_ctx
        # Pooling needs a whole input inside one micro-batch, so the batch is the full context.
        self._n_seqs = MAX_SEQS_PER_DECODE
        self.decode_calls = 0
        self._ctx = model.new_context(
            model.context_params(
                n_ctx=self.n_ctx, n_seq_max=self._n_seqs, n_batch=self.n_ctx, embeddings=True
            )
        )
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = TokenBatch(self.n_ctx)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{spec.id}")
        self.info = model.model_info(
            embeddings=True, n_ctx=self.n_ctx, n_ctx_per_seq=self.n_ctx, parallel=spec.parallel
        )

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text)

    async def embed(self, texts: Sequence[str | Sequence[int]]) -> Embeddings:
        inputs = [self.tokenize(t) if isinstance(t, str) else list(t) for t in texts]
        for tokens in inputs:
            if any(not 0 <= t < self.model.n_vocab for t in tokens):
                raise ValueError(f"token ids must be between 0 and {self.model.n_vocab - 1}")
            if len(tokens) > self.n_ctx:
                raise ContextOverflow(
                    len(tokens),
                    self.n_ctx,
                    f"This model's maximum context length is {self.n_ctx} tokens, but an input "
                    f"has {len(tokens)} tokens.",
                )
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._worker, self._embed_all, inputs)
        return Embeddings(vectors=vectors, prompt_tokens=sum(len(t) for t in inputs))

    def _embed_all(self, inputs: list[list[int]]) -> list[list[float]]:
        vectors: list[list[float]] = []
        group: list[list[int]] = []
        used = 0
        for tokens in inputs:
            if group and (used + len(tokens) > self.n_ctx or len(group) == self._n_seqs):
                vectors.extend(self._embed_group(group))
                group, used = [], 0
            group.append(tokens)
            used += len(tokens)
        if group:
            vectors.extend(self._embed_group(group))
        return vectors

    def _embed_group(self, group: list[list[int]]) -> list[list[float]]:
        llama_cpp.llama_memory_clear(self._memory, True)
        batch = self._batch
        batch.clear()
        for seq_id, tokens in enumerate(group):
            if tokens:
                batch.add_run(tokens, 0, seq_id, True)
                batch.output[batch.n - len(tokens) : batch.n] = 1  # pooling reads every token
        if batch.n:
            self.decode_calls += 1
            rc = batch.decode(self._ctx)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed with status {rc}")
        n_embd = self.model.n_embd
        out: list[list[float]] = []
        for seq_id, tokens in enumerate(group):
            if not tokens:  # an empty input has no meaning to pool: a zero vector
                out.append([0.0] * n_embd)
                continue
            pointer = llama_cpp.llama_get_embeddings_seq(self._ctx, seq_id)
            if not pointer:
                raise RuntimeError("the model produced no pooled embedding")
            raw = np.ctypeslib.as_array(
                ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(n_embd,)
            ).astype(np.float64)
            norm = float(np.linalg.norm(raw))
            out.append((raw / norm if norm > 0 else raw).tolist())
        llama_cpp.llama_memory_clear(self._memory, True)
        return out

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
            self.model.close()
