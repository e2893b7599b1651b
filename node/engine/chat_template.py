"""A model's Jinja chat template: structured messages and tools in, the prompt text out.

Rendered by llama-cpp-python's `Jinja2ChatFormatter` (a sandboxed Jinja environment with
Transformers' `tojson`), fed the shapes Hugging Face templates expect.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from node.engine.interface import ChatMessage, Tool

# Variables the formatter sets itself; `template_kwargs` may not replace them.
RESERVED_TEMPLATE_VARS = frozenset(
    {
        "messages",
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "add_generation_prompt",
        "bos_token",
        "eos_token",
        "raise_exception",
        "strftime_now",
    }
)


class ChatTemplate:
    """Raises ValueError for a template that does not compile."""

    def __init__(self, template: str, bos_token: str, eos_token: str) -> None:
        self.source = template
        try:
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=eos_token,
                bos_token=bos_token,
                add_generation_prompt=True,
            )
        except Exception as exc:  # jinja2's TemplateSyntaxError and friends
            raise ValueError(str(exc)) from None

    def render(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[Tool] = (),
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        """The prompt ending with the assistant's turn; ValueError when the template fails."""
        extra = dict(template_kwargs or {})
        clash = sorted(RESERVED_TEMPLATE_VARS & extra.keys())
        if clash:
            raise ValueError(f"template variable {clash[0]!r} cannot be set")
        try:
            return self._formatter(
                messages=[template_message(m) for m in messages],
                tools=[template_tool(t) for t in tools] or None,
                **extra,
            ).prompt
        except ValueError:
            raise
        except Exception as exc:  # jinja2 errors, template bugs on odd input
            raise ValueError(f"chat template failed: {exc}") from None


def _arguments(text: str) -> Any:
    """Templates index and `tojson` the arguments, so they get the parsed object (as in
    llama.cpp's server); text that is no JSON object stays text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def template_message(message: ChatMessage) -> dict[str, Any]:
    """A message in the shape Hugging Face chat templates expect."""
    item: dict[str, Any] = {"role": message.role, "content": message.content or ""}
    if message.name:
        item["name"] = message.name
    if message.tool_calls:
        item["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _arguments(call.arguments)},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        item["tool_call_id"] = message.tool_call_id
    if message.reasoning_content is not None:
        item["reasoning_content"] = message.reasoning_content
    return item


def template_tool(tool: Tool) -> dict[str, Any]:
    """OpenAI's tool object, as templates iterate it (`tool.function.name`, ...)."""
    function: dict[str, Any] = {"name": tool.name, "parameters": dict(tool.parameters)}
    if tool.description is not None:
        function["description"] = tool.description
    return {"type": "function", "function": function}
