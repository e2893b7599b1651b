"""A per-sequence llama.cpp sampler chain built from `SamplingParams`."""

from __future__ import annotations

import ctypes
import math
import numbers
import secrets
from collections.abc import Mapping

import llama_cpp
import numpy as np

from node.engine.grammar_cache import GrammarCache, parse_grammar
from node.engine.interface import SamplingParams
from node.engine.model import LoadedModel
from node.engine.softmax_draw import SoftmaxDraw

PENALTY_LAST_N = 64  # tokens looked back for repeat / frequency / presence penalties
_MAX_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED means "random": never pass it through
# Below this a temperature is greedy: 1/T overflows float32 near 1e-38, and long before that
# the draw is an argmax anyway (logits differ by far more than T). llama.cpp does the same.
GREEDY_BELOW = 1e-4
MAX_ABS_BIAS = 100.0  # OpenAI's range; larger values only push logits towards inf


def resolve_seed(seed: int | None) -> int:
    """A 32-bit seed for llama.cpp's RNG; a fresh random one when the client gave none."""
    if seed is None:
        return secrets.randbelow(_MAX_SEED)
    return seed % _MAX_SEED


class SequenceSampler:
    """logit bias → penalties → grammar → top-k → top-p → min-p → temperature → dist(seed).

    Greedy (argmax after bias, penalties and grammar) when temperature is 0. OpenAI's default
    (a temperature and at most a logit bias) is a plain softmax draw, done by `SoftmaxDraw`;
    everything else is a llama.cpp sampler chain. Owned by one sequence; `sample` both picks
    the token and feeds it back to the penalties and grammar.
    """

    def __init__(
        self, model: LoadedModel, params: SamplingParams, grammars: GrammarCache | None = None
    ) -> None:
        check_params(params, model.n_vocab)
        self.seed = resolve_seed(params.seed)
        self._penalties: llama_cpp.llama_sampler_p | None = None  # owned by the chain
        self._grammar: llama_cpp.llama_sampler_p | None = None  # owned by this object
        self._candidates: _Candidates | None = None
        self._draw: SoftmaxDraw | None = None
        self._chain = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params()
        )
        try:
            self._build(model, params, grammars)
        except BaseException:
            self.close()
            raise

    def _add(self, sampler: llama_cpp.llama_sampler_p | None, what: str) -> None:
        if not sampler:
            raise ValueError(f"invalid sampling parameters: {what}")
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def _build(self, model: LoadedModel, p: SamplingParams, grammars: GrammarCache | None) -> None:
        n_vocab = model.n_vocab
        if _plain_softmax(p):
            self._draw = SoftmaxDraw(n_vocab, p.temperature, p.logit_bias or {}, self.seed)
            return
        if p.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(p.logit_bias))()
            for slot, (token, bias) in zip(biases, p.logit_bias.items(), strict=True):
                slot.token = int(token)
                slot.bias = float(bias)
            self._add(
                llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(p.logit_bias), biases),
                "logit_bias",
            )
        if p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0:
            penalties = llama_cpp.llama_sampler_init_penalties(
                n_vocab,
                PENALTY_LAST_N,
                p.repeat_penalty,
                p.frequency_penalty,
                p.presence_penalty,
            )
            self._add(penalties, "penalties")
            self._penalties = penalties
        if p.grammar:
            if grammars is not None:
                grammar = grammars.sampler(p.grammar)
            else:
                grammar = parse_grammar(model.vocab, p.grammar)
            self._grammar = grammar  # kept out of the chain: see `_sample_constrained`
            self._candidates = _Candidates(n_vocab)
        if p.temperature < GREEDY_BELOW:
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

    def accept_prompt(self, tokens: list[int]) -> None:
        """Let the penalties see the prompt's last tokens (as llama.cpp's server does); the
        grammar must not see them, so they go to the penalties sampler alone."""
        if self._penalties is not None:
            for token in tokens[-PENALTY_LAST_N:]:
                llama_cpp.llama_sampler_accept(self._penalties, token)

    def sample(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        """Pick a token from the logits of batch position `index` and accept it."""
        if self._draw is not None:
            return self._draw(llama_cpp.llama_get_logits_ith(ctx, index))
        if self._grammar is not None:
            return self._sample_constrained(ctx, index)
        return llama_cpp.llama_sampler_sample(self._chain, ctx, index)

    def _sample_constrained(self, ctx: llama_cpp.llama_context_p, index: int) -> int:
        """Sample freely, keep the token if the grammar allows it, else resample constrained.

        Applying a grammar to all 49k candidates costs ~0.2 s a token on a 2-core CPU; checking
        one candidate is nearly free, and a small model usually follows the grammar anyway.
        (llama.cpp's own common sampler does the same.)
        """
        grammar, candidates = self._grammar, self._candidates
        assert grammar is not None and candidates is not None
        logits = llama_cpp.llama_get_logits_ith(ctx, index)
        candidates.load(logits)
        llama_cpp.llama_sampler_apply(self._chain, candidates.ref)
        token = candidates.selected()
        if not candidates.allowed(grammar, token):
            candidates.load(logits)
            llama_cpp.llama_sampler_apply(grammar, candidates.ref)
            llama_cpp.llama_sampler_apply(self._chain, candidates.ref)
            token = candidates.selected()
        llama_cpp.llama_sampler_accept(grammar, token)
        llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar is not None:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None


def check_params(p: SamplingParams, n_vocab: int) -> None:
    """ValueError for values llama.cpp would turn into NaN logits, a bad id or an abort."""
    for name in (
        "temperature",
        "top_p",
        "min_p",
        "presence_penalty",
        "frequency_penalty",
        "repeat_penalty",
    ):
        value = getattr(p, name)
        if not _is_finite_number(value):
            raise ValueError(f"{name} must be a finite number")
    if p.temperature < 0.0:
        raise ValueError("temperature must not be negative")
    if p.repeat_penalty <= 0.0:
        raise ValueError("repeat_penalty must be greater than 0")
    if isinstance(p.top_k, bool) or not isinstance(p.top_k, numbers.Integral):
        raise ValueError("top_k must be an integer")
    _check_logit_bias(p.logit_bias, n_vocab)


def _check_logit_bias(bias: Mapping[int, float] | None, n_vocab: int) -> None:
    for token, value in (bias or {}).items():
        # bool is an int, and int("3") or int(3.7) would silently pick a token: ints only.
        if isinstance(token, bool) or not isinstance(token, numbers.Integral):
            raise ValueError(f"logit_bias keys must be integer token ids, got {token!r}")
        if not 0 <= token < n_vocab:
            raise ValueError(f"logit_bias token {token} is not in the vocabulary")
        if not _is_finite_number(value) or abs(value) > MAX_ABS_BIAS:
            raise ValueError(f"logit_bias for token {token} must be a number between -100 and 100")


def _is_finite_number(value: object) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _plain_softmax(p: SamplingParams) -> bool:
    """A temperature and nothing that needs llama.cpp's samplers (a bias is fine)."""
    return (
        p.temperature >= GREEDY_BELOW
        and not p.grammar
        and p.top_k <= 0
        and p.top_p >= 1.0
        and p.min_p <= 0.0
        and p.repeat_penalty == 1.0
        and p.frequency_penalty == 0.0
        and p.presence_penalty == 0.0
    )


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class _Candidates:
    """A reusable `llama_token_data_array` over the whole vocabulary, and a one-token one."""

    def __init__(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self.data = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self.array = self._wrap(self.data)
        self.ref = ctypes.byref(self.array)
        self._one = np.zeros(1, dtype=_TOKEN_DATA)
        self._one_array = self._wrap(self._one)
        self._one_ref = ctypes.byref(self._one_array)

    @staticmethod
    def _wrap(data: np.ndarray) -> llama_cpp.llama_token_data_array:
        return llama_cpp.llama_token_data_array(
            data=data.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=len(data),
            selected=-1,
            sorted=False,
        )

    def load(self, logits: ctypes.Array) -> None:
        self.data["id"] = self._ids
        self.data["logit"] = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        self.data["p"] = 0.0
        self.array.size = self.n_vocab
        self.array.selected = -1
        self.array.sorted = False

    def selected(self) -> int:
        index = self.array.selected
        if not 0 <= index < self.array.size:  # e.g. NaN logits, or a grammar that allows nothing
            raise ValueError("the sampler selected no token")
        return int(self.data["id"][index])

    def allowed(self, grammar: llama_cpp.llama_sampler_p, token: int) -> bool:
        self._one["id"] = token
        self._one["logit"] = 0.0
        self._one["p"] = 0.0
        self._one_array.size = 1
        self._one_array.selected = -1
        self._one_array.sorted = False
        llama_cpp.llama_sampler_apply(grammar, self._one_ref)
        return bool(np.isfinite(self._one["logit"][0]))
