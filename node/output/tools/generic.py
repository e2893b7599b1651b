"""The fallback for templates without tool support: a JSON envelope, tools in the prompt.

The whole output is one JSON object (a grammar forces it whenever tools are offered):

    {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
    {"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    {"response": "plain answer"}

`system_prompt(tools)` describes the tools and the envelope for a system message.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence

from node.output.jsonscan import json_string, json_string_stream
from node.output.scanner import Cursor, Gen
from node.output.tools.grammar import calls_grammar, chosen, json_name, literal
from node.output.tools.spec import Outcome, Tool, ToolChoice, ToolContext, ToolFormat, envelope_call

_RESPONSE_RULES = r"""tc-response ::= "{\"response\": " tc-string "}"
tc-string ::= "\"" ([^"\\] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}))* "\""
"""


def _calls(cur: Cursor) -> Generator[None, None, Outcome]:
    if not (yield from cur.expect("[", ws=True)):
        return "fail"
    count = 0
    while True:
        outcome = yield from envelope_call(cur)
        if outcome == "fail" and count == 0:
            return "fail"
        count += 1
        if outcome != "ok":
            return "broken"
        if not (yield from cur.expect(",", ws=True)):
            return "ok" if (yield from cur.expect("]", ws=True)) else "broken"


def _envelope(cur: Cursor) -> Generator[None, None, Outcome]:
    if not (yield from cur.expect("{", ws=True)):
        return "fail"
    key = yield from json_string(cur, limit=64)
    if key not in ("tool_calls", "tool_call", "response"):
        return "fail"
    if not (yield from cur.expect(":", ws=True)):
        return "fail"
    if key == "tool_calls":
        outcome = yield from _calls(cur)
    elif key == "tool_call":
        outcome = yield from envelope_call(cur)
    else:
        yield from cur.skip_ws()
        if not (yield from cur.peek('"')):
            return "fail"
        outcome = "ok" if (yield from json_string_stream(cur, cur.content)) else "broken"
    if outcome == "ok" and not (yield from cur.expect("}", ws=True)):
        outcome = "broken"
    return outcome


def program(cur: Cursor, _ctx: ToolContext) -> Gen:
    mark = cur.mark()
    if (yield from _envelope(cur)) == "fail":
        cur.revert(mark)
    else:
        cur.release(mark)
    yield from cur.until((), cur.content)


def grammar(tools: Sequence[Tool], choice: ToolChoice, parallel: bool) -> str:
    def body(name: str, args: str) -> str:
        return " ".join(
            (literal('{"name": '), json_name(name), literal(', "arguments": '), args, '"}"')
        )

    if parallel:
        text = calls_grammar(
            tools,
            choice,
            True,
            body,
            separator='("," tc-ws)',
            prefix=literal('{"tool_calls": ['),
            suffix=literal("]}"),
        )
    else:
        text = calls_grammar(
            tools, choice, False, body, prefix=literal('{"tool_call": '), suffix='"}"'
        )
    if choice != "auto":
        return text
    # auto: a plain answer is the other alternative of the root
    text = text.replace("root ::= ", "root ::= tc-response | ", 1)
    return text + _RESPONSE_RULES


def system_prompt(tools: Sequence[Tool], parallel: bool = True) -> str:
    """A system message that offers `tools` and explains the reply envelope."""
    functions = [t.get("function") or {} for t in chosen(tools, "required")]
    listing = json.dumps(functions, indent=2, ensure_ascii=False)
    calls = (
        '{"tool_calls": [{"name": "<function name>", "arguments": {<arguments>}}]}'
        if parallel
        else '{"tool_call": {"name": "<function name>", "arguments": {<arguments>}}}'
    )
    return (
        "You can call these functions:\n"
        f"{listing}\n\n"
        "Reply with one JSON object only. To call functions, reply\n"
        f"{calls}\n"
        'To answer directly, reply {"response": "<your answer>"}.'
    )


FORMAT = ToolFormat(
    name="generic",
    program=program,
    grammar=grammar,
    triggers=(),  # the envelope is the whole output: its grammar applies from the start
    start_markers=(),
)
