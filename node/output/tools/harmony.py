"""gpt-oss harmony messages: channels split reasoning, content and calls.

    <|channel|>analysis<|message|>thinking<|end|>
    <|start|>assistant<|channel|>final<|message|>the answer<|return|>
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>
    {"city": "Paris"}<|call|>

The output starts after the prompt's `<|start|>assistant`. Each message is a header up to
`<|message|>` and a body up to `<|end|>`, `<|call|>` or `<|return|>` (the last two end the
generation and may be absent from the text). `analysis` bodies are reasoning; a recipient
`functions.NAME` (in the channel or the role header) makes the body a call's arguments; other
bodies (`final`, a `commentary` preamble) are content. Raw mode keeps non-call messages
verbatim, headers included, as content.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from node.output.jsonscan import json_value
from node.output.scanner import Cursor, Gen
from node.output.tools.grammar import calls_grammar, literal
from node.output.tools.spec import Tool, ToolChoice, ToolContext, ToolFormat

MESSAGE, END, CALL, RETURN = "<|message|>", "<|end|>", "<|call|>", "<|return|>"
_ENDS = (END, CALL, RETURN)
_CHANNEL = re.compile(r"<\|channel\|>\s*([A-Za-z0-9_-]+)")
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")


def program(cur: Cursor, ctx: ToolContext) -> Gen:
    raw = ctx.reasoning_raw
    while True:
        got = yield from cur.read_until((MESSAGE,), limit=512)
        if got is None:  # not a harmony header: the rest is plain text
            yield from cur.until((), cur.content)
            return None
        header = got[0]
        channel = _CHANNEL.search(header)
        recipient = _RECIPIENT.search(header)
        end: str | None
        if recipient and recipient.group(1).startswith("functions."):
            cur.start_call(recipient.group(1)[len("functions.") :])
            ok = yield from json_value(cur, cur.args)
            cur.end_call(ok)
            end = yield from cur.until(_ENDS, lambda _t: None)  # anything after the JSON
        elif channel and channel.group(1) == "analysis":
            cur.in_reasoning = True
            if raw:
                cur.content(header + MESSAGE)
                end = yield from cur.until(_ENDS, cur.content)
                cur.content(end or "")
            else:
                end = yield from cur.until(_ENDS, cur.reasoning, strip=True)
            cur.in_reasoning = False
        elif raw:
            cur.content(header + MESSAGE)
            end = yield from cur.until(_ENDS, cur.content)
            cur.content(end or "")
        else:
            end = yield from cur.until(_ENDS, cur.content)
        if end is None:
            return None


def grammar(tools: Sequence[Tool], choice: ToolChoice, parallel: bool) -> str:
    # From the message that calls: optionally one analysis message first (when used as the
    # whole output), then the call, whose <|call|> ends the generation.
    def body(name: str, args: str) -> str:
        head = literal("<|channel|>commentary to=functions." + name + " <|constrain|>json")
        return f"{head} {literal(MESSAGE)} {args}"

    opening = literal("<|channel|>analysis" + MESSAGE)
    analysis = f"({opening} tc-text {literal(END + '<|start|>assistant')})?"
    text = calls_grammar(tools, choice, False, body, prefix=analysis)
    return text + 'tc-text ::= ([^<] | "<" [^|])*\n'


FORMAT = ToolFormat(
    name="harmony",
    program=program,
    grammar=grammar,
    triggers=(r"(<\|channel\|>commentary to=functions\.)",),
    start_markers=("<|start|>", "<|channel|>", "<|constrain|>", MESSAGE, END, CALL, RETURN),
    handles_reasoning=True,
    aliases=("gpt-oss",),
)
