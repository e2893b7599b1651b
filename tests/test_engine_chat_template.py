"""The chat template gets structured messages and tools as Hugging Face templates expect them
(a Hermes-style ChatML template with tool support, as the tools tests use on SmolLM2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.engine.chat_template import ChatTemplate
from node.engine.interface import ChatMessage, Tool, ToolCall

HERMES = (Path(__file__).parent / "templates" / "hermes-chatml.jinja").read_text()
WEATHER = Tool(
    "get_weather",
    "Current weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def test_tools_and_a_full_round_trip_reach_the_template() -> None:
    template = ChatTemplate(HERMES, "", "<|im_end|>")
    prompt = template.render(
        [
            ChatMessage("system", "Be brief."),
            ChatMessage("user", "Weather in Paris?"),
            ChatMessage(
                "assistant", None, tool_calls=(ToolCall("c1", "get_weather", '{"city": "Paris"}'),)
            ),
            ChatMessage("tool", "18 C and sunny", tool_call_id="c1"),
        ],
        tools=[WEATHER],
    )
    tools_block = prompt.split("<tools>\n", 1)[1].split("</tools>", 1)[0]
    shown = json.loads(tools_block)
    assert shown == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": WEATHER.parameters,
            "description": "Current weather in a city.",
        },
    }
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    # The arguments reach the template as an object (its `tojson` prints them back).
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in (
        prompt
    )
    assert "<tool_response>\n18 C and sunny\n</tool_response>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_without_tools_the_template_renders_plain_chat() -> None:
    prompt = ChatTemplate(HERMES, "", "<|im_end|>").render([ChatMessage("user", "Hi")])
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_template_kwargs_pass_through_and_reserved_names_are_refused() -> None:
    template = ChatTemplate(HERMES, "", "<|im_end|>")
    off = template.render([ChatMessage("user", "Hi")], template_kwargs={"enable_thinking": False})
    assert "Hi /no_think<|im_end|>" in off
    on = template.render([ChatMessage("user", "Hi")], template_kwargs={"enable_thinking": True})
    assert "/no_think" not in on
    with pytest.raises(ValueError, match="'messages' cannot be set"):
        template.render([ChatMessage("user", "Hi")], template_kwargs={"messages": []})


def test_arguments_that_are_no_json_object_stay_text() -> None:
    template = ChatTemplate("{{ messages[0].tool_calls[0].function.arguments }}", "", "")
    call = ToolCall("c1", "f", "[1, 2]")
    assert template.render([ChatMessage("assistant", None, tool_calls=(call,))]) == "[1, 2]"


def test_a_broken_template_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        ChatTemplate("{% for %}", "", "")
    failing = ChatTemplate("{{ messages[0].nope.deeper }}", "", "")
    with pytest.raises(ValueError, match="chat template failed"):
        failing.render([ChatMessage("user", "x")])


REAL = sorted((Path(__file__).parent / "fixtures" / "output").glob("*.jinja"))


@pytest.mark.parametrize("path", REAL, ids=[p.stem for p in REAL])
def test_real_templates_render_an_agent_round_trip(path: Path) -> None:
    """The chat templates of Qwen2.5/3/3.5/3-Coder, Llama 3.1/3.2, Mistral, DeepSeek-R1 and
    gpt-oss get the tools, the assistant's call (arguments as an object) and the tool result."""
    template = ChatTemplate(path.read_text(), "<s>", "</s>")
    call = ToolCall("abcdefghi", "get_weather", '{"city": "Paris"}')  # Mistral wants 9 chars
    prompt = template.render(
        [
            ChatMessage("system", "Be brief."),
            ChatMessage("user", "Weather in Paris?"),
            ChatMessage("assistant", None, tool_calls=(call,)),
            ChatMessage("tool", "18 C and sunny", tool_call_id="abcdefghi", name="get_weather"),
        ],
        tools=[WEATHER],
    )
    offered = "DeepSeek-R1" not in path.name  # its template never lists the tools
    assert prompt.count("get_weather") >= (2 if offered else 1)  # offered, then called
    assert ("Current weather in a city." in prompt) == offered
    assert "Paris" in prompt.split("Weather in Paris?", 1)[1]  # the call's argument
    assert "18 C and sunny" in prompt
    assert "None" not in prompt  # no missing content printed as Python's None
