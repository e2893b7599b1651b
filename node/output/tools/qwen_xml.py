"""Qwen3.5 / Qwen3-Coder XML calls: parameters as tagged raw text.

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    </function>
    </tool_call>

Arguments stream as JSON: a parameter the tool's schema types as a string streams as an
escaped JSON string while it is written; any other value is read whole and becomes its JSON
(a value that is not JSON stays a string), as llama.cpp's parser types them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Sequence

from node.output.scanner import Cursor, Gen
from node.output.tools.grammar import (
    calls_grammar,
    function_parameters,
    literal,
    schema_rules,
    tool_name,
)
from node.output.tools.hermes import optional_close
from node.output.tools.spec import (
    Outcome,
    Tool,
    ToolChoice,
    ToolContext,
    ToolFormat,
    marker_loop,
    schema_types,
)

OPEN, CLOSE = "<tool_call>", "</tool_call>"
FUNC, FUNC_END = "<function=", "</function>"
PARAM, PARAM_END = "<parameter=", "</parameter>"
_NAME = re.compile(r"[A-Za-z0-9_.:-]+")


def _value(raw: str, types: set[str]) -> str:
    if "string" in types and len(types) == 1:
        return json.dumps(raw, ensure_ascii=False)
    try:
        return json.dumps(json.loads(raw), ensure_ascii=False)
    except ValueError:
        return json.dumps(raw, ensure_ascii=False)


def _parameter(cur: Cursor, typed: dict[str, set[str]]) -> Generator[None, None, bool]:
    """After `<parameter=`: emit `"name": value`; False when malformed."""
    got = yield from cur.read_until((">",), limit=128)
    if got is None:
        return False
    name = got[0].strip()
    types = typed.get(name, set())
    cur.args(json.dumps(name, ensure_ascii=False) + ": ")
    if (yield from cur.peek("\n")):  # the template puts the value on its own lines
        cur.pos += 1
    if types == {"string"}:
        cur.args('"')
        # a newline right before the closing tag belongs to the markup: hold it back
        pending = ""

        def emit(text: str) -> None:
            nonlocal pending
            text = pending + text
            pending = "\n" if text.endswith("\n") else ""
            piece = text[:-1] if pending else text
            cur.args(json.dumps(piece, ensure_ascii=False)[1:-1])

        end = yield from cur.until((PARAM_END,), emit)
        cur.args('"')
        return end is not None
    chunks: list[str] = []
    end = yield from cur.until((PARAM_END,), chunks.append)
    raw = "".join(chunks)
    cur.args(_value(raw[:-1] if raw.endswith("\n") else raw, types))
    return end is not None


def _call(cur: Cursor, marker: str, ctx: ToolContext) -> Generator[None, None, Outcome]:
    if marker == OPEN and not (yield from cur.expect(FUNC, ws=True)):
        return "fail"
    got = yield from cur.read_until((">",), limit=128)
    if got is None or not _NAME.fullmatch(got[0].strip()):
        return "fail"
    name = got[0].strip()
    if marker == FUNC and ctx.tools and name not in ctx.names():
        return "fail"  # a bare <function=...> opens a call only for a tool on offer
    cur.start_call(name)
    types = ctx.parameter_types(name)
    cur.args("{")
    first, ok = True, True
    while True:
        yield from cur.skip_ws()
        tag = yield from cur.peek_any((PARAM, FUNC_END))
        if tag is None:
            ok = False
            break
        cur.pos += len(tag)
        if tag == FUNC_END:
            break
        if not first:
            cur.args(", ")
        first = False
        if not (yield from _parameter(cur, types)):
            ok = False
            break
    cur.args("}")
    cur.end_call(ok)
    if ok:  # also after a bare <function=...>: the model may still close the block
        yield from optional_close(cur, CLOSE)
    return "ok" if ok else "broken"


def program(cur: Cursor, ctx: ToolContext) -> Gen:
    def handler(c: Cursor, marker: str) -> Generator[None, None, Outcome]:
        return _call(c, marker, ctx)

    # Qwen3-Coder sometimes omits <tool_call>; a bare <function=name> opens a call as well
    yield from marker_loop(cur, (OPEN, FUNC), handler)


def _call_rules(prefix: str, tool: Tool) -> tuple[str, str]:
    """The call markup with each declared parameter in order (the required ones present): a
    string parameter is free text without a closing tag, any other value JSON under its schema.
    """
    params = function_parameters(tool)
    props = params.get("properties") or {}
    required = set(params.get("required") or [])
    parts: list[str] = []
    rules: list[str] = []
    for k, (pname, schema) in enumerate(props.items()):
        schema = schema if isinstance(schema, dict) else {}
        if schema_types(schema) == {"string"}:
            value = "tc-value"
        else:
            value, text = schema_rules(schema, f"{prefix}p{k}-")
            rules.append(text)
        rule = f"{prefix}param{k}"
        head = literal(f"{PARAM}{pname}>\n")
        rules.append(f"{rule} ::= {head} {value} {literal(chr(10) + PARAM_END + chr(10))}\n")
        parts.append(rule if pname in required else f"{rule}?")
    opening = literal(f"{OPEN}\n{FUNC}{tool_name(tool)}>\n")
    body = " ".join((opening, *parts, literal(f"{FUNC_END}\n{CLOSE}")))
    return body, "".join(rules)


def grammar(tools: Sequence[Tool], choice: ToolChoice, parallel: bool) -> str:
    text = calls_grammar(tools, choice, parallel, call_rules=_call_rules)
    # free text that cannot close the parameter: no "</p" (so "</b>" is fine)
    return text + 'tc-value ::= ([^<] | "<" ([^/] | "/" [^p]))*\n'


FORMAT = ToolFormat(
    name="qwen-xml",
    program=program,
    grammar=grammar,
    triggers=(r"<tool_call>",),
    start_markers=(OPEN, CLOSE),
    aliases=("qwen3-coder", "qwen3.5"),
)
