"""The per-request output processor: detokenized text in, typed parts out.

    proc = OutputProcessor(tool_format=get_format("hermes"), tools=request_tools)
    for delta in deltas:            # engine text, special marker tokens included
        send(proc.feed(delta))      # parts, possibly none while a marker is undecided
    result = proc.finish()          # flushed parts in result.parts; content, reasoning, calls

Reasoning is split first (think tags), then the content goes through the tool-call format;
a harmony format does both itself. The final result is built from the very parts that were
streamed, so a stream and a one-shot run of the same text always agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from node.output.parts import (
    ContentText,
    Part,
    ProcessedOutput,
    ReasoningText,
    ToolCall,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
)
from node.output.reasoning import ThinkTags, think_program
from node.output.scanner import Cursor, Gen, Machine
from node.output.tools.spec import Tool, ToolContext, ToolFormat


def _plain(cur: Cursor) -> Gen:
    yield from cur.until((), cur.content)
    return None


class OutputProcessor:
    """Turns one request's output text into parts, incrementally.

    `tool_format`: the call syntax to parse (None: no tools in this request, text stays text).
    `think`: reasoning tags of the model (None: no tag reasoning). `starts_in_reasoning`: the
    prompt left the tag open (see `ThinkTags.prompt_opens`). `reasoning_raw`: keep reasoning
    inside the content, verbatim. `make_id`: call ids (default: the format's).
    """

    def __init__(
        self,
        tool_format: ToolFormat | None = None,
        *,
        tools: Sequence[Tool] = (),
        think: ThinkTags | None = None,
        starts_in_reasoning: bool = False,
        reasoning_raw: bool = False,
        make_id: Callable[[int], str] | None = None,
    ) -> None:
        self.reasoning_raw = reasoning_raw
        ctx = ToolContext(tools=tuple(tools), reasoning_raw=reasoning_raw)
        ids = make_id or (tool_format.make_id if tool_format else None)
        self._think: Machine | None = None
        if tool_format is not None and tool_format.handles_reasoning:
            self._tools = Machine(lambda cur: tool_format.program(cur, ctx), ids)
        else:
            if think is not None:
                self._think = Machine(think_program(think, starts_in_reasoning, reasoning_raw))
            if tool_format is None:
                self._tools = Machine(_plain, ids)
            else:
                self._tools = Machine(lambda cur: tool_format.program(cur, ctx), ids)
        self._all: list[Part] = []

    @property
    def in_reasoning(self) -> bool:
        """True while the text fed so far ends inside a reasoning block (raw mode included):
        the service counts the tokens fed in that state as reasoning tokens."""
        machine = self._think or self._tools
        return machine.cursor.in_reasoning

    def feed(self, text: str) -> list[Part]:
        """Parts for a new delta of output text."""
        if self._think is None:
            return self._keep(self._tools.feed(text))
        return self._keep(self._route(self._think.feed(text)))

    def finish(self) -> ProcessedOutput:
        """Flush at the end of output; the result holds the flushed parts and the totals."""
        parts: list[Part] = []
        if self._think is not None:
            parts += self._route(self._think.finish())
        parts += self._tools.finish()
        parts = self._keep(parts)
        return _result(self._all, parts)

    def _route(self, parts: list[Part]) -> list[Part]:
        out: list[Part] = []
        for part in parts:
            if isinstance(part, ContentText):
                out += self._tools.feed(part.text)
            elif self.reasoning_raw and isinstance(part, ReasoningText):
                out.append(ContentText(part.text))
            else:
                out.append(part)
        return out

    def _keep(self, parts: list[Part]) -> list[Part]:
        if self.reasoning_raw:
            parts = [ContentText(p.text) if isinstance(p, ReasoningText) else p for p in parts]
        self._all += parts
        return parts


def _result(parts: list[Part], flushed: list[Part]) -> ProcessedOutput:
    content: list[str] = []
    reasoning: list[str] = []
    starts: dict[int, ToolCallStart] = {}
    args: dict[int, list[str]] = {}
    complete: set[int] = set()
    for part in parts:
        if isinstance(part, ContentText):
            content.append(part.text)
        elif isinstance(part, ReasoningText):
            reasoning.append(part.text)
        elif isinstance(part, ToolCallStart):
            starts[part.index] = part
            args[part.index] = []
        elif isinstance(part, ToolCallArgs):
            args[part.index].append(part.fragment)
        elif isinstance(part, ToolCallEnd) and part.complete:
            complete.add(part.index)
    calls = [
        ToolCall(i, s.id, s.name, "".join(args[i]), complete=i in complete)
        for i, s in sorted(starts.items())
    ]
    return ProcessedOutput("".join(content), "".join(reasoning), calls, flushed)


def process_text(text: str, **kwargs: object) -> ProcessedOutput:
    """One-shot processing of a complete output (the non-streaming path)."""
    proc = OutputProcessor(**kwargs)  # type: ignore[arg-type]
    proc.feed(text)
    return proc.finish()
