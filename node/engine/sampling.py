"""A per-sequence llama.cpp sampler chain built from `SamplingParams`."""

from __future__ import annotations

import secrets

import llama_cpp

from node.engine.interface import SamplingParams
from node.engine.model import LoadedModel

PENALTY_LAST_N = 64  # tokens looked back for repeat / frequency / presence penalties
_MAX_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED means "random": never pass it through


def resolve_seed(seed: int | None) -> int:
    """A 32-bit seed for llama.cpp's RNG; a fresh random one when the client gave none."""
    if seed is None:
        return secrets.randbelow(_MAX_SEED)
    return seed % _MAX_SEED


class SequenceSampler:
    """logit bias → penalties → grammar → top-k → top-p → min-p → temperature → dist(seed).

    Greedy (argmax after bias, penalties and grammar) when temperature is 0. Owned by one
    sequence; `sample` both picks the token and feeds it back to the penalties and grammar.
    """

    def __init__(self, model: LoadedModel, params: SamplingParams) -> None:
        self.seed = resolve_seed(params.seed)
        self._chain = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params()
        )
        try:
            self._build(model, params)
        except BaseException:
            self.close()
            raise

    def _add(self, sampler: llama_cpp.llama_sampler_p | None, what: str) -> None:
        if not sampler:
            raise ValueError(f"invalid sampling parameters: {what}")
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def _build(self, model: LoadedModel, p: SamplingParams) -> None:
        n_vocab = model.n_vocab
        if p.logit_bias:
            for token in p.logit_bias:
                if not 0 <= int(token) < n_vocab:
                    raise ValueError(f"logit_bias token {token} is not in the vocabulary")
            biases = (llama_cpp.llama_logit_bias * len(p.logit_bias))()
            for slot, (token, bias) in zip(biases, p.logit_bias.items(), strict=True):
                slot.token = int(token)
                slot.bias = float(bias)
            self._add(
                llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(p.logit_bias), biases),
                "logit_bias",
            )
        if p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0:
            if p.repeat_penalty <= 0.0:
                raise ValueError("repeat_penalty must be greater than 0")
            self._add(
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab,
                    PENALTY_LAST_N,
                    p.repeat_penalty,
                    p.frequency_penalty,
                    p.presence_penalty,
                ),
                "penalties",
            )
        if p.grammar:
            grammar = llama_cpp.llama_sampler_init_grammar(
                model.vocab, p.grammar.encode("utf-8"), b"root"
            )
            if not grammar:
                raise ValueError("the grammar could not be parsed")
            llama_cpp.llama_sampler_chain_add(self._chain, grammar)
        if p.temperature <= 0.0:
            self._add(llama_cpp.llama_sampler_init_greedy(), "greedy")
            return
        if p.top_k > 0:
            self._add(llama_cpp.llama_sampler_init_top_k(p.top_k), "top_k")
        if p.top_p < 1.0:
            self._add(llama_cpp.llama_sampler_init_top_p(p.top_p, 1), "top_p")
        if p.min_p > 0.0:
            self._add(llama_cpp.llama_sampler_init_min_p(p.min_p, 1), "min_p")
        self._add(llama_cpp.llama_sampler_init_temp(p.temperature), "temperature")
        self._add(llama_cpp.llama_sampler_init_dist(self.seed), "seed")

    def sample(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        """Pick a token from the logits of batch position `index` and accept it."""
        return llama_cpp.llama_sampler_sample(self._chain, ctx, index)

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
