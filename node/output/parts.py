"""The typed parts an output processor yields, and the complete result it returns at the end.

A stream of parts, concatenated per kind, always equals the final `ProcessedOutput`: content
and reasoning are the joined texts, a call's arguments are its joined fragments.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ContentText:
    """Visible answer text (OpenAI `content`)."""

    text: str


@dataclass(frozen=True)
class ReasoningText:
    """Thinking text (OpenAI-compatible `reasoning_content`)."""

    text: str


@dataclass(frozen=True)
class ToolCallStart:
    """A call begins: the first streamed chunk of it carries index, id and name."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArgs:
    """A fragment of the call's arguments, JSON text; the fragments join to `ToolCall.arguments`."""

    index: int
    fragment: str


@dataclass(frozen=True)
class ToolCallEnd:
    """The call is over; `complete` False: the output ended or broke off inside it."""

    index: int
    complete: bool = True


Part = ContentText | ReasoningText | ToolCallStart | ToolCallArgs | ToolCallEnd


@dataclass(frozen=True)
class ToolCall:
    """One complete call: `arguments` is a JSON string (as OpenAI's `function.arguments`)."""

    index: int
    id: str
    name: str
    arguments: str
    complete: bool = True  # False: the output stopped inside the call (e.g. max_tokens)


@dataclass
class ProcessedOutput:
    """Everything a request's output amounted to; what `OutputProcessor.finish` returns."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    parts: list[Part] = field(default_factory=list)  # the parts `finish` flushed


def _empty(part: Part) -> bool:
    if isinstance(part, ContentText | ReasoningText):
        return not part.text
    return isinstance(part, ToolCallArgs) and not part.fragment


def merge_parts(parts: list[Part]) -> list[Part]:
    """Join adjacent parts of one kind (same call for fragments): equal streams merge equal."""
    out: list[Part] = []
    for part in parts:
        last = out[-1] if out else None
        if isinstance(part, ContentText) and isinstance(last, ContentText):
            out[-1] = ContentText(last.text + part.text)
        elif isinstance(part, ReasoningText) and isinstance(last, ReasoningText):
            out[-1] = ReasoningText(last.text + part.text)
        elif (
            isinstance(part, ToolCallArgs)
            and isinstance(last, ToolCallArgs)
            and last.index == part.index
        ):
            out[-1] = ToolCallArgs(part.index, last.fragment + part.fragment)
        elif not _empty(part):
            out.append(part)
    return out
