"""Each format's call grammar, run by llama.cpp's own grammar sampler over the real SmolLM2
vocabulary (loaded vocab-only): it accepts the format's calls (which the parser reads back),
rejects calls the tools do not allow, and its lazy triggers start it exactly at the call."""

from __future__ import annotations

import ctypes
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest

from node.output import get_format, process_text

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
TOOLS = [WEATHER, TIME]

# Per format: a call as its grammar writes it, and one the tools do not allow (bad argument
# type, or an unknown function).
CALLS: dict[str, tuple[str, str]] = {
    "hermes": (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n'
        "</tool_call>",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": 3}}\n</tool_call>',
    ),
    "qwen-xml": (
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\nthree\n</parameter>\n</function>\n</tool_call>",
    ),
    "llama3": (
        '{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}',
        '{"name": "get_weather", "parameters": {"days": "3"}}',
    ),
    "mistral": (
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 3}',
        '[TOOL_CALLS]get_weather[ARGS]{"town": "Paris"}',
    ),
    "mistral-list": (
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}, '
        '"id": "a1b2c3d4e"}]',
        '[TOOL_CALLS][{"name": "get_forecast", "arguments": {}, "id": "a1b2c3d4e"}]',
    ),
    "harmony": (
        "<|channel|>analysis<|message|>Weather, so call it.<|end|><|start|>assistant"
        "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
        '{"city": "Paris", "days": 3}',
        '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"days": 3}',
    ),
    "generic": (
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]}',
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": null}}]}',
    ),
}


@pytest.fixture(scope="module")
def vocab(default_gguf: Path) -> Iterator[Any]:
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(default_gguf).encode(), params)
    assert model
    yield llama_cpp.llama_model_get_vocab(model)
    llama_cpp.llama_model_free(model)


def _tokens(vocab: Any, text: str) -> list[int]:
    data = text.encode()
    buf = (llama_cpp.llama_token * (len(data) + 8))()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), False, False)
    assert n >= 0
    return list(buf[:n])


class Sampler:
    """A grammar sampler asked about one candidate token at a time."""

    def __init__(self, vocab: Any, grammar: str, triggers: tuple[str, ...] = ()) -> None:
        self.vocab = vocab
        if triggers:
            pats = (ctypes.c_char_p * len(triggers))(*[t.encode() for t in triggers])
            self.ptr = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
                vocab, grammar.encode(), b"root", pats, len(triggers), None, 0
            )
        else:
            self.ptr = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        assert self.ptr, "llama.cpp could not parse the grammar"
        self.one = np.zeros(1, dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)])
        self.arr = llama_cpp.llama_token_data_array(
            data=self.one.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=1,
            selected=-1,
            sorted=False,
        )

    def allowed(self, token: int) -> bool:
        self.one["id"], self.one["logit"], self.one["p"] = token, 0.0, 0.0
        self.arr.size, self.arr.selected = 1, -1
        llama_cpp.llama_sampler_apply(self.ptr, ctypes.byref(self.arr))
        return bool(np.isfinite(self.one["logit"][0]))

    def feed(self, text: str) -> bool:
        """Accept `text` token by token while allowed; False at the first token refused."""
        for token in _tokens(self.vocab, text):
            if not self.allowed(token):
                return False
            llama_cpp.llama_sampler_accept(self.ptr, token)
        return True

    def can_end(self) -> bool:
        return self.allowed(llama_cpp.llama_vocab_eos(self.vocab))

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self.ptr)


def _accepts(vocab: Any, grammar: str, text: str) -> bool:
    sampler = Sampler(vocab, grammar)
    try:
        return sampler.feed(text) and sampler.can_end()
    finally:
        sampler.close()


@pytest.mark.parametrize("name", sorted(CALLS))
def test_grammar_accepts_a_call_the_parser_reads_back(vocab: Any, name: str) -> None:
    fmt = get_format(name)
    good, _bad = CALLS[name]
    assert _accepts(vocab, fmt.grammar(TOOLS, "required", True), good)
    result = process_text(good, tool_format=fmt, tools=TOOLS)
    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == [
        ("get_weather", {"city": "Paris", "days": 3})
    ]


@pytest.mark.parametrize("name", sorted(CALLS))
def test_grammar_refuses_what_the_tools_do_not_allow(vocab: Any, name: str) -> None:
    fmt = get_format(name)
    good, bad = CALLS[name]
    assert not _accepts(vocab, fmt.grammar(TOOLS, "required", True), bad)
    # a named tool_choice allows that function only
    assert not _accepts(vocab, fmt.grammar(TOOLS, "get_time", True), good)


@pytest.mark.parametrize("name", ["hermes", "mistral", "generic"])
def test_parallel_grammar_allows_several_calls_and_single_allows_one(vocab: Any, name: str) -> None:
    fmt = get_format(name)
    good = CALLS[name][0]
    if name == "generic":
        two = good[:-2] + ", " + good[len('{"tool_calls": [') : -2] + "]}"
        single = '{"tool_call": ' + good[len('{"tool_calls": [') : -2] + "}"
        assert _accepts(vocab, fmt.grammar(TOOLS, "required", False), single)
    else:
        two = good + "\n" + good if name == "hermes" else good + good
    assert _accepts(vocab, fmt.grammar(TOOLS, "required", True), two)
    assert not _accepts(vocab, fmt.grammar(TOOLS, "required", False), two)
    assert len(process_text(two, tool_format=fmt, tools=TOOLS).tool_calls) == 2


@pytest.mark.parametrize("name", sorted(n for n in CALLS if get_format(n).triggers))
def test_lazy_grammar_is_free_before_its_trigger_and_strict_after(vocab: Any, name: str) -> None:
    fmt = get_format(name)
    good, _ = CALLS[name]
    if name == "harmony":  # the call message, after a free analysis message
        good = good[good.index("<|channel|>commentary") :]
    lead = "" if name == "llama3" else "Sure, I will check that for you. "
    text = lead + good
    match = next(m for t in fmt.triggers if (m := re.search(t, text)))
    start = match.start(1) if match.groups() else match.start()
    assert start == len(lead)  # the grammar takes over exactly where the call begins
    sampler = Sampler(vocab, fmt.grammar(TOOLS, "auto", True), fmt.triggers)
    try:
        # before the trigger nothing is masked: even text the grammar could never produce
        assert all(sampler.allowed(t) for t in _tokens(vocab, "Zebra ~ 42 «»"))
        assert sampler.feed(text)
        assert sampler.can_end()
    finally:
        sampler.close()
    sampler = Sampler(vocab, fmt.grammar(TOOLS, "auto", True), fmt.triggers)
    try:  # after the trigger, a wrong continuation is refused
        assert not sampler.feed(text[: match.end()] + " Zebra ~ not a call")
    finally:
        sampler.close()


def test_xml_grammar_needs_the_required_parameters(vocab: Any) -> None:
    grammar = get_format("qwen-xml").grammar(TOOLS, "required", True)
    call = "<tool_call>\n<function=get_weather>\n{}</function>\n</tool_call>"
    assert _accepts(vocab, grammar, call.format("<parameter=city>\nLa <b>Paz</b>\n</parameter>\n"))
    assert not _accepts(vocab, grammar, call.format(""))  # city is required
    assert not _accepts(vocab, grammar, call.format("<parameter=town>\nX\n</parameter>\n"))


def test_generic_auto_grammar_allows_a_plain_response(vocab: Any) -> None:
    grammar = get_format("generic").grammar(TOOLS, "auto", True)
    assert _accepts(vocab, grammar, '{"response": "It is sunny \\"today\\"."}')
    assert not _accepts(vocab, grammar, "It is sunny.")


def test_a_bad_schema_or_unknown_choice_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no tool named"):
        get_format("hermes").grammar(TOOLS, "get_forecast", True)
    bad = {"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/nowhere"}}}
    with pytest.raises(ValueError):
        get_format("hermes").grammar([bad], "required", True)
