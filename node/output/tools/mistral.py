"""Mistral `[TOOL_CALLS]`: the list form (Mistral Nemo) and the name form (Small 3.2, Devstral,
Ministral 3).

    [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1b2c3d4e"}]
    [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{}
    [TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Paris"}

One program reads both forms; the two formats differ in the syntax their grammars force.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Sequence

from node.output.jsonscan import json_value
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
    mistral_call_id,
)

TOOL_CALLS, ARGS, CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
_NAME = re.compile(r"[A-Za-z0-9_.:-]+")


def _list(cur: Cursor) -> Generator[None, None, Outcome]:
    count = 0
    while True:
        outcome = yield from envelope_call(cur)
        if outcome == "fail":
            return "broken" if count else "fail"
        count += 1
        if outcome == "broken":
            return outcome
        if not (yield from cur.expect(",", ws=True)):
            yield from cur.expect("]", ws=True)
            return "ok"


def _call(cur: Cursor, _marker: str) -> Generator[None, None, Outcome]:
    mark = cur.mark()
    if (yield from cur.expect("[", ws=True)):
        cur.release(mark)
        return (yield from _list(cur))
    cur.revert(mark)
    got = yield from cur.read_until((ARGS, CALL_ID), limit=128)
    if got is None or not _NAME.fullmatch(got[0].strip()):
        return "fail"
    if got[1] == CALL_ID and (yield from cur.read_until((ARGS,), limit=64)) is None:
        return "fail"
    cur.start_call(got[0].strip())
    ok = yield from json_value(cur, cur.args)
    cur.end_call(ok)
    return "ok" if ok else "broken"


def program(cur: Cursor, _ctx: ToolContext) -> Gen:
    yield from marker_loop(cur, (TOOL_CALLS,), _call)


def grammar(tools: Sequence[Tool], choice: ToolChoice, parallel: bool) -> str:
    def body(name: str, args: str) -> str:
        return " ".join((literal(TOOL_CALLS + name + ARGS), args))

    return calls_grammar(tools, choice, parallel, body, separator="")


def list_grammar(tools: Sequence[Tool], choice: ToolChoice, parallel: bool) -> str:
    def body(name: str, args: str) -> str:
        return " ".join(
            (
                literal('{"name": '),
                json_name(name),
                literal(', "arguments": '),
                args,
                literal(', "id": "'),
                "[a-zA-Z0-9]{9}",
                literal('"}'),
            )
        )

    return calls_grammar(
        tools,
        choice,
        parallel,
        body,
        separator='("," tc-ws)',
        prefix=literal(TOOL_CALLS + "["),
        suffix='"]"',
    )


FORMAT = ToolFormat(
    name="mistral",
    program=program,
    grammar=grammar,
    triggers=(r"\[TOOL_CALLS\]",),
    start_markers=(TOOL_CALLS, ARGS, CALL_ID),
    make_id=mistral_call_id,
)

LIST_FORMAT = ToolFormat(
    name="mistral-list",
    program=program,
    grammar=list_grammar,
    triggers=(r"\[TOOL_CALLS\]",),
    start_markers=(TOOL_CALLS,),
    make_id=mistral_call_id,
    aliases=("mistral-nemo",),
)
