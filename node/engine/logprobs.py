"""Log-probabilities of a sampled token: log-softmax of the raw logits, only when asked for.

These are the model's pre-sampling values (as llama-server reports them by default): logit
bias, penalties, grammar, top-k/p and temperature do not change them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING

import llama_cpp
import numpy as np

from node.engine.interface import SampledLogprob, SamplingParams, TokenLogprob

if TYPE_CHECKING:
    from node.engine.model import LoadedModel
    from node.engine.sampling import SequenceSampler

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for top_logprobs (and completions' logprobs)


class LogSoftmax:
    """The log-softmax of one position's logits, read before its token is sampled."""

    def __init__(self, logits: ctypes.Array, n_vocab: int) -> None:
        raw = np.ctypeslib.as_array(logits, shape=(n_vocab,)).astype(np.float64)
        top = raw.max()
        self._values = raw - (top + np.log(np.exp(raw - top).sum()))

    def of(self, token: int, n_top: int, piece: Callable[[int], bytes]) -> SampledLogprob:
        """The sampled `token` and the `n_top` most likely tokens (ties: lower id first)."""
        values = self._values
        top: tuple[TokenLogprob, ...] = ()
        if n_top > 0:
            n = min(n_top, len(values))
            best = np.argpartition(-values, n - 1)[:n]
            best = best[np.lexsort((best, -values[best]))]
            top = tuple(TokenLogprob(int(t), piece(int(t)), float(values[t])) for t in best)
        return SampledLogprob(token, piece(token), float(values[token]), top)


def sample(
    model: LoadedModel,
    ctx: llama_cpp.llama_context_p,
    index: int,
    sampler: SequenceSampler,
    params: SamplingParams,
) -> tuple[int, SampledLogprob | None]:
    """Sample batch position `index`; with its logprobs when the request asks for them."""
    if params.logprobs is None:
        return sampler.sample(ctx, index), None
    # Read before sampling: the logits as the model produced them.
    dist = LogSoftmax(llama_cpp.llama_get_logits_ith(ctx, index), model.n_vocab)
    token = sampler.sample(ctx, index)
    return token, dist.of(token, params.logprobs, model.piece)
