"""Llama 3.x JSON calls: the whole output is a call object, or calls follow `<|python_tag|>`.

    {"name": "get_weather", "parameters": {"city": "Paris"}}
    <|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}

Several calls may be separated by `;` or whitespace. (Built-in tools' `name.call(...)` Python
syntax is not parsed; it stays content.)
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

from node.output.jsonscan import json_string
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

PYTHON_TAG = "<|python_tag|>"
_SP = r"[ \t\n]{0,4}"  # the whitespace the grammar's tc-ws allows
_KEYS = ("parameters", "arguments")


def _calls(cur: Cursor) -> Generator[None, None, Outcome]:
    """One call object, then more after `;` or whitespace."""
    outcome = yield from envelope_call(cur, args_keys=_KEYS)
    while outcome == "ok":
        mark = cur.mark()
        yield from cur.expect(";", ws=True)
        yield from cur.skip_ws()
        if not (yield from cur.peek("{")):
            cur.revert(mark)
            break
        more = yield from envelope_call(cur, args_keys=_KEYS)
        if more == "fail":
            cur.revert(mark)
            break
        cur.release(mark)
        outcome = more
    return outcome


def _tagged(cur: Cursor, _marker: str) -> Generator[None, None, Outcome]:
    return (yield from _calls(cur))


def _looks_like_call(cur: Cursor) -> Generator[None, None, bool]:
    """Whether the unread text opens an object whose first key is "name" or "type" (reads
    ahead only; JSON that is not a call is content at once, not after it is complete)."""
    mark = cur.mark()
    yes = (yield from cur.expect("{", ws=True)) and (
        (yield from json_string(cur, limit=16)) in ("name", "type")
    )
    cur.revert(mark)
    return yes


def program(cur: Cursor, _ctx: ToolContext) -> Gen:
    mark = cur.mark()
    if (yield from _looks_like_call(cur)) and (yield from _calls(cur)) != "fail":
        cur.release(mark)
    else:
        cur.revert(mark)
    yield from marker_loop(cur, (PYTHON_TAG,), _tagged)


def grammar(tools: Sequence[Tool], choice: ToolChoice, parallel: bool) -> str:
    # The call header is as loose as the trigger that starts it (spaces, an optional "type").
    def body(name: str, args: str) -> str:
        return (
            '"{" tc-ws ("\\"type\\"" tc-ws ":" tc-ws "\\"function\\"" tc-ws "," tc-ws)? '
            f'"\\"name\\"" tc-ws ":" tc-ws {json_name(name)} tc-ws "," tc-ws '
            f'"\\"parameters\\"" tc-ws ":" tc-ws {args} tc-ws "}}"'
        )

    return calls_grammar(
        tools, choice, parallel, body, separator='(";" tc-ws)', prefix=f"{literal(PYTHON_TAG)}?"
    )


FORMAT = ToolFormat(
    name="llama3",
    program=program,
    grammar=grammar,
    # a call object as the whole output (anchored), or anything after <|python_tag|>
    triggers=(
        r"^\s*(\{"
        + _SP
        + r'(?:"type"'
        + _SP
        + ":"
        + _SP
        + r'"function"'
        + _SP
        + ","
        + _SP
        + r')?"name")',
        r"(<\|python_tag\|>)",
    ),
    start_markers=(PYTHON_TAG,),
)
