"""What a tool-call format is: its parser program, lazy-grammar triggers and grammar builder.

Each format module (hermes, qwen_xml, llama3, mistral, harmony, generic) defines one
`ToolFormat`; `registry` picks one from a chat template or by name. The pieces shared by the
format programs (a call whose start waits for its name, the text loop around start markers)
live here too.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from node.output.jsonscan import json_envelope
from node.output.scanner import Cursor, Gen

Tool = Mapping[str, Any]  # an OpenAI tool: {"type": "function", "function": {name, parameters}}
ToolChoice = str  # "auto" (used lazily from a trigger), "required", or one function's name
Outcome = Literal["ok", "fail", "broken"]  # fail: nothing emitted, the caller may revert

_ALNUM = string.ascii_letters + string.digits


def openai_call_id(_index: int) -> str:
    """An id like OpenAI's (`call_` and 24 random letters and digits)."""
    return "call_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def mistral_call_id(_index: int) -> str:
    """Mistral templates require 9 letters and digits."""
    return "".join(secrets.choice(_ALNUM) for _ in range(9))


@dataclass(frozen=True)
class ToolContext:
    """Per-request facts a format program may use: the tools (for argument types)."""

    tools: Sequence[Tool] = ()
    reasoning_raw: bool = False  # for formats that split reasoning themselves

    def names(self) -> set[str]:
        return {str((t.get("function") or {}).get("name")) for t in self.tools}

    def parameter_types(self, function: str) -> dict[str, set[str]]:
        """JSON-schema types of each parameter of `function` ({} if unknown)."""
        for tool in self.tools:
            fn = tool.get("function") or {}
            if fn.get("name") == function:
                props = (fn.get("parameters") or {}).get("properties") or {}
                return {k: schema_types(v) for k, v in props.items() if isinstance(v, dict)}
        return {}


def schema_types(schema: Mapping[str, Any]) -> set[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {k for k in kind if isinstance(k, str)}
    if "enum" in schema and all(isinstance(v, str) for v in schema["enum"]):
        return {"string"}
    out: set[str] = set()
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            if isinstance(sub, dict):
                out |= schema_types(sub)
    return out


Program = Callable[[Cursor, ToolContext], Gen]
GrammarBuilder = Callable[[Sequence[Tool], ToolChoice, bool], str]


@dataclass(frozen=True)
class ToolFormat:
    """One tool-call syntax.

    `program` parses output text into parts. `triggers` are regexes for a lazy grammar
    (llama.cpp semantics: searched in the generated text; the grammar starts at group 1, or at
    the match when there is no group), and `grammar(tools, choice, parallel)` returns GBNF
    whose root matches the call syntax from that point (for `tool_choice` "required" or a
    function name, used unlazily it matches the whole output). `start_markers` are the
    literal strings that open a call (special tokens the detokenizer must keep).
    """

    name: str
    program: Program
    grammar: GrammarBuilder
    triggers: tuple[str, ...]
    start_markers: tuple[str, ...]
    make_id: Callable[[int], str] = openai_call_id
    handles_reasoning: bool = False  # the format separates reasoning itself (harmony channels)
    aliases: tuple[str, ...] = field(default=())


class PendingCall:
    """A call whose start is emitted once its name is known; earlier argument text waits."""

    def __init__(self, cur: Cursor) -> None:
        self.cur = cur
        self.started = False
        self.got_args = False
        self._pending: list[str] = []

    def on_name(self, name: str) -> None:
        if self.started:
            return
        self.started = True
        self.cur.start_call(name)
        for piece in self._pending:
            self.cur.args(piece)
        self._pending.clear()

    def on_args(self, piece: str) -> None:
        if not piece:
            return
        self.got_args = True
        if self.started:
            self.cur.args(piece)
        else:
            self._pending.append(piece)

    def close(self, complete: bool) -> None:
        if self.started:
            if not self.got_args:
                self.cur.args("{}")
            self.cur.end_call(complete)


def envelope_call(
    cur: Cursor,
    name_keys: tuple[str, ...] = ("name",),
    args_keys: tuple[str, ...] = ("arguments", "parameters"),
) -> Generator[None, None, Outcome]:
    """One `{"name": ..., "arguments": ...}` call; "fail" leaves nothing emitted."""
    call = PendingCall(cur)
    result = yield from json_envelope(cur, name_keys, args_keys, call.on_name, call.on_args)
    if not call.started:
        return "fail"
    call.close(result == "ok")
    return "ok" if result == "ok" else "broken"


MarkerHandler = Callable[[Cursor, str], Generator[None, None, Outcome]]


def marker_loop(cur: Cursor, markers: Sequence[str], handler: MarkerHandler) -> Gen:
    """Content until a start marker, then `handler` reads the call; a failed call is text."""
    while True:
        marker = yield from cur.until(markers, cur.content, consume=False, trim=True)
        if marker is None:
            return None
        space = cur.trimmed
        mark = cur.mark()
        cur.pos += len(marker)
        outcome = yield from handler(cur, marker)
        if outcome == "fail":
            cur.revert(mark)
            cur.content(space + cur.take(len(marker)))
        else:
            cur.release(mark)
