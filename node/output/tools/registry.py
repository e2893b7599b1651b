"""The tool-call formats by name, and which one a chat template speaks.

Detection looks for each syntax's markers in the template source, most specific first, as
llama.cpp's common/chat.cpp does; a registry `tool_format` setting overrides it by name.
"""

from __future__ import annotations

from node.output.reasoning import MISTRAL_THINK, QWEN35_THINK, THINK, ThinkTags
from node.output.tools import generic, harmony, hermes, llama3, mistral, qwen_xml
from node.output.tools.spec import ToolFormat

FORMATS: dict[str, ToolFormat] = {
    f.name: f
    for f in (
        hermes.FORMAT,
        qwen_xml.FORMAT,
        llama3.FORMAT,
        mistral.FORMAT,
        mistral.LIST_FORMAT,
        harmony.FORMAT,
        generic.FORMAT,
    )
}
_ALIASES = {alias: f for f in FORMATS.values() for alias in f.aliases}


def get_format(name: str) -> ToolFormat:
    """The format called `name` (or an alias); ValueError naming the known ones."""
    found = FORMATS.get(name) or _ALIASES.get(name)
    if found is None:
        known = ", ".join(sorted(FORMATS))
        raise ValueError(f"unknown tool format {name!r}; known: {known}")
    return found


def detect_format(template: str | None) -> ToolFormat:
    """The format a chat template's source uses; `generic` when it shows no tool syntax."""
    src = template or ""
    if "<|channel|>" in src:
        return harmony.FORMAT
    if "[TOOL_CALLS]" in src:
        return mistral.FORMAT if "[ARGS]" in src else mistral.LIST_FORMAT
    if "<tool_call>" in src and "<function=" in src and "<parameter=" in src:
        return qwen_xml.FORMAT
    if "<tool_call>" in src:
        return hermes.FORMAT
    if "<|python_tag|>" in src or "<|start_header_id|>ipython" in src:
        return llama3.FORMAT
    return generic.FORMAT


def detect_think_tags(
    template: str | None, tool_format: ToolFormat | None = None
) -> ThinkTags | None:
    """The reasoning tags a template's model thinks in (None: none, or the format splits it)."""
    src = template or ""
    if tool_format is not None and tool_format.handles_reasoning:
        return None
    if "[THINK]" in src:
        return MISTRAL_THINK
    if "<think>" in src:
        return QWEN35_THINK if tool_format is qwen_xml.FORMAT else THINK
    return None
