"""GBNF grammars checked in Python, parsed by llama.cpp once, cloned for every request.

llama.cpp's grammar parser recurses once per nested group and expands `{m,n}` repetitions into
rules, so a deep or huge grammar overflows the C stack or eats memory before it can answer. The
bounds below are checked on the text first. `validate` and `submit` both need the parsed
grammar; the parse is kept by text, and each sequence gets a clone (its own parse state).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict

import llama_cpp

MAX_GRAMMAR_CHARS = 256 * 1024
MAX_GROUP_DEPTH = 64  # nested ( ) groups
MAX_REPETITION = 1000  # the largest m or n of a `{m,n}` repetition (llama.cpp stops at 2000)
CACHED_GRAMMARS = 32

_REPETITION = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")


def check_grammar_text(text: str) -> None:
    """ValueError unless `text` is within the bounds llama.cpp's parser copes with."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the grammar is empty")
    if len(text) > MAX_GRAMMAR_CHARS:
        raise ValueError(f"the grammar is longer than {MAX_GRAMMAR_CHARS} characters")
    if "\x00" in text:
        raise ValueError("the grammar contains a NUL character")
    depth = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in '"[':  # a literal or a character class: skip to its unescaped end
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and text[i] != close:
                i += 2 if text[i] == "\\" else 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c == "(":
            depth += 1
            if depth > MAX_GROUP_DEPTH:
                raise ValueError(f"the grammar nests groups deeper than {MAX_GROUP_DEPTH}")
        elif c == ")":
            depth -= 1
        elif c == "{":
            match = _REPETITION.match(text, i)
            if match is None:
                raise ValueError("the grammar has a malformed {m,n} repetition")
            digits = [g for g in match.groups() if g]
            # Length first: int() of a huge digit run is slow (and refused past 4,300 digits).
            if any(len(g) > 6 or int(g) > MAX_REPETITION for g in digits):
                raise ValueError(f"the grammar repeats something more than {MAX_REPETITION} times")
            i = match.end() - 1
        i += 1


def parse_grammar(vocab: llama_cpp.llama_vocab_p, text: str) -> llama_cpp.llama_sampler_p:
    """A fresh grammar sampler for `text` (checked first); the caller owns it."""
    check_grammar_text(text)
    grammar = llama_cpp.llama_sampler_init_grammar(vocab, text.encode("utf-8"), b"root")
    if not grammar:
        raise ValueError("the grammar could not be parsed")
    return grammar


class GrammarCache:
    """Parsed grammars of one vocabulary, by text, least recently used dropped first."""

    def __init__(self, vocab: llama_cpp.llama_vocab_p, capacity: int = CACHED_GRAMMARS) -> None:
        self._vocab = vocab
        self._capacity = capacity
        self._parsed: OrderedDict[str, llama_cpp.llama_sampler_p] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, text: str) -> None:
        """Parse `text` (once) so that a later `sampler` for it costs a clone."""
        self._template(text)

    def sampler(self, text: str) -> llama_cpp.llama_sampler_p:
        """A new grammar sampler in its start state; the caller owns (and frees) it."""
        with self._lock:
            clone = llama_cpp.llama_sampler_clone(self._template_locked(text))
        if not clone:
            raise ValueError("the grammar could not be parsed")
        return clone

    def _template(self, text: str) -> llama_cpp.llama_sampler_p:
        with self._lock:
            return self._template_locked(text)

    def _template_locked(self, text: str) -> llama_cpp.llama_sampler_p:
        template = self._parsed.get(text)
        if template is not None:
            self._parsed.move_to_end(text)
            return template
        template = parse_grammar(self._vocab, text)
        self._parsed[text] = template
        while len(self._parsed) > self._capacity:
            _, old = self._parsed.popitem(last=False)
            llama_cpp.llama_sampler_free(old)
        return template

    def close(self) -> None:
        with self._lock:
            while self._parsed:
                _, old = self._parsed.popitem()
                llama_cpp.llama_sampler_free(old)

    def __len__(self) -> int:
        return len(self._parsed)
