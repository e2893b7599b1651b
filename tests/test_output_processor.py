"""The output processor's behaviour around the happy path: no tools, raw reasoning, calls cut
off or malformed, argument typing, real streaming of argument fragments, ids."""

from __future__ import annotations

import json
import re
from pathlib import Path

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from node.output import (
    MISTRAL_THINK,
    QWEN35_THINK,
    THINK,
    ContentText,
    OutputProcessor,
    Part,
    ProcessedOutput,
    ReasoningText,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    get_format,
    merge_parts,
    process_text,
)
from node.output.tools.spec import ToolFormat

FIXTURES = Path(__file__).parent / "fixtures" / "output"
HERMES, XML, HARMONY = get_format("hermes"), get_format("qwen-xml"), get_format("harmony")
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {
                "type": "object",
                "properties": {"s": {"type": "string"}, "n": {"type": "integer"}},
            },
        },
    }
]


def stream(text: str, step: int = 1, **kwargs: object) -> tuple[list[Part], ProcessedOutput]:
    proc = OutputProcessor(**kwargs)  # type: ignore[arg-type]
    parts: list[Part] = []
    for i in range(0, len(text), step):
        parts += proc.feed(text[i : i + step])
    result = proc.finish()
    return parts + result.parts, result


def test_without_a_tool_format_markup_stays_content() -> None:
    text = 'ok <tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    result = process_text(text)
    assert result.content == text and result.tool_calls == []


def test_plain_text_is_held_back_only_while_it_could_be_a_marker() -> None:
    proc = OutputProcessor(HERMES)
    assert proc.feed("a < b") == [ContentText("a < b")]
    assert proc.feed(" and <tool") == [ContentText(" and")]  # " <tool" may open a call
    assert proc.feed("box>") == [ContentText(" <toolbox>")]


def test_argument_fragments_stream_before_the_call_ends() -> None:
    proc = OutputProcessor(HERMES, make_id=lambda i: "id")
    assert proc.feed('<tool_call>\n{"name": "f", "arguments": {"s": "hel') == [
        ToolCallStart(0, "id", "f"),
        ToolCallArgs(0, '{"s": "hel'),
    ]
    assert proc.feed('lo"}}\n</tool_call>') == [ToolCallArgs(0, 'lo"}'), ToolCallEnd(0)]
    assert proc.finish().tool_calls[0].arguments == '{"s": "hello"}'


def test_a_call_cut_off_by_max_tokens_is_reported_incomplete() -> None:
    result = process_text('<tool_call>\n{"name": "f", "arguments": {"n": 1', tool_format=HERMES)
    (call,) = result.tool_calls
    assert (call.name, call.arguments, call.complete) == ("f", '{"n": 1', False)


def test_a_malformed_call_start_becomes_content() -> None:
    text = "<tool_call>\nnot json at all\n</tool_call> and more"
    result = process_text(text, tool_format=HERMES)
    assert result.content == text and result.tool_calls == []


def test_a_call_broken_after_its_start_ends_and_the_rest_is_content() -> None:
    text = '<tool_call>{"name": "f", "arguments": {"n": 1]} tail'
    result = process_text(text, tool_format=HERMES)
    (call,) = result.tool_calls
    assert not call.complete and call.arguments == '{"n": 1'
    assert result.content == "]} tail"


def test_arguments_given_as_a_json_string_are_decoded() -> None:
    text = '<tool_call>{"name": "f", "arguments": "{\\"n\\": 2}"}</tool_call>'
    (call,) = process_text(text, tool_format=HERMES).tool_calls
    assert call.arguments == '{"n": 2}' and call.complete


def test_xml_parameters_are_typed_by_the_schema_or_as_json() -> None:
    text = (
        "<tool_call>\n<function=f>\n<parameter=s>\n42\n</parameter>\n<parameter=n>\n7\n"
        '</parameter>\n<parameter=extra>\n{"k": [1, 2]}\n</parameter>\n<parameter=word>\n'
        "plain words\n</parameter>\n</function>\n</tool_call>"
    )
    _, result = stream(text, tool_format=XML, tools=TOOLS)
    args = json.loads(result.tool_calls[0].arguments)
    assert args == {"s": "42", "n": 7, "extra": {"k": [1, 2]}, "word": "plain words"}
    # a string parameter streams while it is written, before its closing tag arrives
    proc = OutputProcessor(XML, tools=TOOLS)
    proc.feed("<tool_call>\n<function=f>\n<parameter=s>\nline one\nline")
    assert proc.feed(" two") == [ToolCallArgs(0, " two")]


def test_a_bare_xml_function_tag_opens_a_call_only_for_an_offered_tool() -> None:
    text = "Write <function=g> in the docs."
    assert process_text(text, tool_format=XML, tools=TOOLS).content == text
    text = "<function=f>\n</function>"
    assert [c.name for c in process_text(text, tool_format=XML, tools=TOOLS).tool_calls] == ["f"]


def test_xml_call_without_parameters_has_empty_arguments() -> None:
    text = "<tool_call>\n<function=f>\n</function>\n</tool_call>"
    (call,) = process_text(text, tool_format=XML).tool_calls
    assert call.arguments == "{}"


def test_reasoning_is_stripped_and_content_after_it_too() -> None:
    _, result = stream("  <think>\n\n a  b \n</think>\n\n answer ", think=THINK)
    assert (result.reasoning, result.content) == ("a  b", "answer ")


def test_output_without_a_think_block_is_all_content() -> None:
    assert process_text("  hello <think>x</think>", think=THINK).content == (
        "  hello <think>x</think>"
    )


def test_raw_reasoning_stays_verbatim_and_hides_nothing_from_content() -> None:
    text = '<think>\nmaybe <tool_call>{"name": "f"}</tool_call>\n</think>\n\n'
    text += '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    result = process_text(text, tool_format=HERMES, think=THINK, reasoning_raw=True)
    assert result.reasoning == ""
    assert result.content == text[: text.index("</think>") + len("</think>\n\n")].rstrip()
    assert [c.name for c in result.tool_calls] == ["f"]  # only the call after the block


def test_qwen35_reasoning_may_end_at_a_call_without_closing() -> None:
    text = "thinking\n<tool_call>\n<function=f>\n</function>\n</tool_call>"
    result = process_text(text, tool_format=XML, think=QWEN35_THINK, starts_in_reasoning=True)
    assert result.reasoning == "thinking" and [c.name for c in result.tool_calls] == ["f"]


def test_magistral_think_tags() -> None:
    text = "[THINK]step[/THINK]Done.[TOOL_CALLS]f[ARGS]{}"
    result = process_text(text, tool_format=get_format("mistral"), think=MISTRAL_THINK)
    assert (result.reasoning, result.content) == ("step", "Done.")
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("f", "{}")]


def test_enable_thinking_false_closes_the_block_in_the_prompt() -> None:
    template = (FIXTURES / "Qwen3.5-4B.jinja").read_text()
    fmt = Jinja2ChatFormatter(template, eos_token="<|im_end|>", bos_token="")
    messages = [{"role": "user", "content": "hi"}]
    assert QWEN35_THINK.prompt_opens(fmt(messages=messages).prompt)
    assert not QWEN35_THINK.prompt_opens(fmt(messages=messages, enable_thinking=False).prompt)


def test_harmony_raw_keeps_channels_in_content_and_still_parses_calls() -> None:
    text = (
        "<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>commentary "
        'to=functions.f <|constrain|>json<|message|>{"n": 1}<|call|>'
    )
    result = process_text(text, tool_format=HARMONY, reasoning_raw=True)
    assert result.content == "<|channel|>analysis<|message|>think<|end|>"
    assert result.reasoning == ""
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("f", '{"n": 1}')]


def test_harmony_output_that_is_not_harmony_is_content() -> None:
    assert process_text("just text", tool_format=HARMONY).content == "just text"


def test_generic_response_streams_decoded_text() -> None:
    proc = OutputProcessor(get_format("generic"))
    assert proc.feed('{"response": "caf\\u00') == [ContentText("caf")]
    assert proc.feed('e9 ok"}') == [ContentText("é ok")]
    assert proc.finish().content == "café ok"
    assert process_text("not json", tool_format=get_format("generic")).content == "not json"


def test_merged_parts_of_a_stream_equal_the_one_shot_parts() -> None:
    text = "<think>r</think>Hi <tool_call>\n" + '{"name": "f", "arguments": {"s": "ü"}}</tool_call>'
    kwargs = {"tool_format": HERMES, "think": THINK, "make_id": str}
    whole = merge_parts(stream(text, step=len(text), **kwargs)[0])
    for step in (1, 2, 3, 7):
        assert merge_parts(stream(text, step=step, **kwargs)[0]) == whole
    assert [type(p) for p in whole] == [
        ReasoningText,
        ContentText,
        ToolCallStart,
        ToolCallArgs,
        ToolCallEnd,
    ]


def test_default_ids_look_like_openai_and_mistral_ones() -> None:
    def ids(fmt: ToolFormat, text: str) -> list[str]:
        return [c.id for c in process_text(text, tool_format=fmt).tool_calls]

    hermes = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    (a, b) = ids(HERMES, hermes + hermes)
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", a) and a != b
    (m,) = ids(get_format("mistral"), "[TOOL_CALLS]f[ARGS]{}")
    assert re.fullmatch(r"[A-Za-z0-9]{9}", m)


def test_llama3_json_that_is_not_a_call_is_content_at_once() -> None:
    proc = OutputProcessor(get_format("llama3"))
    assert proc.feed('{"answer": ') == [ContentText('{"answer":')]  # a space waits
    proc = OutputProcessor(get_format("llama3"))
    assert proc.feed('{"name": "f", "parameters": {"n": ') == [
        ToolCallStart(0, proc.finish().tool_calls[0].id, "f"),
        ToolCallArgs(0, '{"n": '),
    ]


def test_in_reasoning_follows_the_think_block_and_the_analysis_channel() -> None:
    def states(pieces: list[str], **kwargs: object) -> list[bool]:
        proc = OutputProcessor(**kwargs)  # type: ignore[arg-type]
        out = []
        for piece in pieces:
            proc.feed(piece)
            out.append(proc.in_reasoning)
        return out

    think = ["<think>", "a", "b", "</think>", "c"]
    assert states(think, think=THINK) == [True, True, True, False, False]
    assert states(["a", "</think>", "c"], think=THINK, starts_in_reasoning=True) == [
        True,
        False,
        False,
    ]
    harmony = [
        "<|channel|>analysis<|message|>",
        "a",
        "<|end|><|start|>assistant<|channel|>final<|message|>",
        "c",
    ]
    assert states(harmony, tool_format=HARMONY) == [True, True, False, False]
    assert states(harmony, tool_format=HARMONY, reasoning_raw=True) == [True, True, False, False]
