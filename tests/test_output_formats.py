"""Golden outputs per format: real templates pick the format, sample outputs parse to the
expected calls, and a stream split anywhere gives exactly the one-shot result."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from node.output import (
    OutputProcessor,
    Part,
    ProcessedOutput,
    ThinkTags,
    ToolCallStart,
    ToolFormat,
    detect_format,
    detect_think_tags,
    get_format,
    merge_parts,
)

FIXTURES = Path(__file__).parent / "fixtures" / "output"
DATA = json.loads((FIXTURES / "samples.json").read_text())
TOOLS: list[dict[str, Any]] = DATA["tools"]
SAMPLES: list[dict[str, Any]] = DATA["samples"]


def _render(template: str, tools: bool, **kwargs: Any) -> str:
    fmt = Jinja2ChatFormatter(template, eos_token="</s>", bos_token="<s>")
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    return fmt(messages=messages, tools=TOOLS if tools else None, **kwargs).prompt


@functools.cache
def _setup(sample_id: str) -> tuple[ToolFormat, ThinkTags | None, bool]:
    sample = next(s for s in SAMPLES if s["id"] == sample_id)
    template = (FIXTURES / sample["template"]).read_text() if sample["template"] else None
    fmt = detect_format(template) if template else get_format("generic")
    think = detect_think_tags(template, fmt) if sample["think"] else None
    opens = bool(
        think
        and template
        and think.prompt_opens(_render(template, sample["tools"], **sample["template_kwargs"]))
    )
    return fmt, think, opens


def _processor(sample: dict[str, Any]) -> OutputProcessor:
    fmt, think, opens = _setup(sample["id"])
    return OutputProcessor(
        fmt, tools=TOOLS, think=think, starts_in_reasoning=opens, make_id=lambda i: f"call_{i}"
    )


def _run(sample: dict[str, Any], chunks: list[str]) -> tuple[list[Part], ProcessedOutput]:
    proc = _processor(sample)
    parts: list[Part] = []
    for chunk in chunks:
        parts += proc.feed(chunk)
    result = proc.finish()
    return merge_parts(parts + result.parts), result


@pytest.mark.parametrize("sample", SAMPLES, ids=[s["id"] for s in SAMPLES])
def test_template_picks_the_format(sample: dict[str, Any]) -> None:
    if sample["template"] is None:
        assert detect_format(None).name == "generic"
        return
    template = (FIXTURES / sample["template"]).read_text()
    assert detect_format(template).name == sample["format"]


@pytest.mark.parametrize("sample", SAMPLES, ids=[s["id"] for s in SAMPLES])
def test_sample_parses_to_the_expected_calls(sample: dict[str, Any]) -> None:
    _, result = _run(sample, [sample["output"]])
    assert result.content == sample["content"]
    assert result.reasoning == sample["reasoning"]
    got = [(c.name, json.loads(c.arguments)) for c in result.tool_calls]
    assert got == [tuple(c) for c in sample["calls"]]
    assert all(c.complete for c in result.tool_calls)
    assert [c.id for c in result.tool_calls] == [f"call_{i}" for i in range(len(got))]


@pytest.mark.parametrize("sample", SAMPLES, ids=[s["id"] for s in SAMPLES])
def test_stream_split_anywhere_equals_one_shot(sample: dict[str, Any]) -> None:
    text = sample["output"]
    whole, result = _run(sample, [text])
    assert _run(sample, list(text))[0] == whole  # one character per delta
    for cut in range(1, len(text)):  # and every two-piece split
        parts, split = _run(sample, [text[:cut], text[cut:]])
        assert parts == whole, f"split at {cut}: {text[:cut]!r}"
        assert split.tool_calls == result.tool_calls
    # a call's start comes before any of its argument text
    seen: set[int] = set()
    for part in whole:
        if isinstance(part, ToolCallStart):
            seen.add(part.index)
        elif hasattr(part, "index"):
            assert part.index in seen


@pytest.mark.parametrize("sample", [s for s in SAMPLES if s["template"]], ids=lambda s: s["id"])
def test_template_renders_the_tools(sample: dict[str, Any]) -> None:
    prompt = _render((FIXTURES / sample["template"]).read_text(), tools=True)
    if sample["tools"]:
        assert "get_weather" in prompt and "Weather for a city" in prompt
