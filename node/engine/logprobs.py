"""Log-probabilities of a sampled token: log-softmax of the raw logits, only when asked for.

These are the model's pre-sampling values (as llama-server reports them by default): logit
bias, penalties, grammar, top-k/p and temperature do not change them.
"""

from __future__ import annotations

import ctypes
import math
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
    """The log-softmax of one position's logits, read before its token is sampled.

    Only the normaliser is computed over the vocabulary (float32 exp, float64 sum); the
    log-probabilities of the few tokens reported are `logit - normaliser`.
    """

    def __init__(self, logits: ctypes.Array, n_vocab: int) -> None:
        self._raw = np.ctypeslib.as_array(logits, shape=(n_vocab,))  # valid until next decode
        top = float(self._raw.max())
        self._lse = top + math.log(float(np.exp(self._raw - top).sum(dtype=np.float64)))

    def _value(self, token: int) -> float:
        return float(self._raw[token]) - self._lse

    def of(self, token: int, n_top: int, piece: Callable[[int], bytes]) -> SampledLogprob:
        """The sampled `token` and the `n_top` most likely tokens (ties: lower id first)."""
        raw = self._raw
        top: tuple[TokenLogprob, ...] = ()
        if n_top > 0:
            # A few argmax passes beat a partition of the whole vocabulary ~10x for n <= 20;
            # argmax takes the lowest id among equals.
            rest = raw.copy()
            best = []
            for _ in range(min(n_top, len(raw))):
                t = int(rest.argmax())
                best.append(t)
                rest[t] = -np.inf
            top = tuple(TokenLogprob(t, piece(t), self._value(t)) for t in best)
        return SampledLogprob(token, piece(token), self._value(token), top)


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
