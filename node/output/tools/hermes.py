"""Hermes JSON calls (Qwen2.5, Qwen3, Hermes fine-tunes).

text <tool_call>
{"name": "get_weather", "arguments": {"city": "Paris"}}
</tool_call> text
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

from node.output.scanner import Cursor, Gen
from node.output.tools.grammar import calls_grammar, json_name, literal
from node.output.tools.spec import (
    Outcome,
    Tool,
    ToolChoice,
    ToolContext,
    ToolFormat,
    envelope_call,
    marker_loop,
)

OPEN, CLOSE = "<tool_call>", "</tool_call>"


def optional_close(cur: Cursor, close: str) -> Generator[None, None, None]:
    """Consume whitespace and `close` if they come next; otherwise leave the text unread."""
    mark = cur.mark()
    yield from cur.skip_ws()
    if (yield from cur.expect(close)):
        cur.release(mark)
    else:
        cur.revert(mark)


def _call(cur: Cursor, _marker: str) -> Generator[None, None, Outcome]:
    outcome = yield from envelope_call(cur)
    if outcome != "fail":
        yield from optional_close(cur, CLOSE)
    return outcome


def program(cur: Cursor, _ctx: ToolContext) -> Gen:
    yield from marker_loop(cur, (OPEN,), _call)


def grammar(tools: Sequence[Tool], choice: ToolChoice, parallel: bool) -> str:
    def body(name: str, args: str) -> str:
        head = literal(OPEN + '\n{"name": ') + " " + json_name(name)
        return " ".join((head, literal(', "arguments": '), args, literal("}\n" + CLOSE)))

    return calls_grammar(tools, choice, parallel, body)


FORMAT = ToolFormat(
    name="hermes",
    program=program,
    grammar=grammar,
    triggers=(r"<tool_call>",),
    start_markers=(OPEN, CLOSE),
)
