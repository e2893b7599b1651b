"""GBNF building blocks for tool calls: literals, and argument rules from the tools' schemas.

The argument rules come from `node.engine.grammar.json_schema_grammar` (imported when a grammar
is built, so parsing never loads llama-cpp-python); its rules are renamed per tool so several
schemas share one grammar.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from node.output.tools.spec import Tool, ToolChoice

_RULE = re.compile(r"^([A-Za-z0-9_-]+)\s*::=\s*(.*)$")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def literal(text: str) -> str:
    """`text` as a GBNF string literal."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def rule_name(text: str) -> str:
    """A GBNF-safe rule name for a function name."""
    return re.sub(r"[^A-Za-z0-9-]", "-", text) or "x"


def _rename(body: str, names: set[str], prefix: str) -> str:
    """Prefix every reference to one of `names` in a rule body (not inside literals/classes)."""
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch in '"[':
            close = '"' if ch == '"' else "]"
            j = i + 1
            while j < len(body) and body[j] != close:
                j += 2 if body[j] == "\\" else 1
            out.append(body[i : j + 1])
            i = j + 1
        elif ch == "{":  # a repetition count such as {0,15}
            j = body.index("}", i)
            out.append(body[i : j + 1])
            i = j + 1
        else:
            m = _IDENT.match(body, i)
            if m:
                word = m.group(0)
                out.append(prefix + word if word in names else word)
                i = m.end()
            else:
                out.append(ch)
                i += 1
    return "".join(out)


def schema_rules(schema: Any, prefix: str) -> tuple[str, str]:
    """(root rule name, rules) for JSON matching `schema`, every rule named `prefix`-something.

    Raises ValueError (from `json_schema_grammar`) when the schema cannot become a grammar.
    """
    from node.engine.grammar import json_schema_grammar  # loads llama-cpp-python

    text = json_schema_grammar(schema if isinstance(schema, dict) else {})
    rules: list[tuple[str, str]] = []
    for line in text.splitlines():
        m = _RULE.match(line.strip())
        if m:
            rules.append((m.group(1), m.group(2)))
        elif line.strip() and rules:  # a rule continued on the next line
            name, body = rules[-1]
            rules[-1] = (name, body + " " + line.strip())
    names = {name for name, _ in rules}
    lines = [f"{prefix}{name} ::= {_rename(body, names, prefix)}" for name, body in rules]
    return prefix + "root", "\n".join(lines) + "\n"


def function_parameters(tool: Tool) -> dict[str, Any]:
    fn = tool.get("function") or {}
    params = fn.get("parameters")
    return params if isinstance(params, dict) and params else {"type": "object"}


def chosen(tools: Sequence[Tool], choice: ToolChoice) -> list[Tool]:
    """The tools a grammar may call: all for "required"/"auto", else the named one."""
    if choice in ("required", "auto"):
        picked = list(tools)
    else:
        picked = [t for t in tools if (t.get("function") or {}).get("name") == choice]
    if not picked:
        named = choice not in ("required", "auto")
        raise ValueError(f"no tool named {choice!r}" if named else "no tools")
    return picked


CallRule = Callable[[str, str], str]  # (function name, its args rule) -> call rule body
# (rule prefix, tool) -> (call rule body, the rules it uses), for syntaxes whose arguments are
# not one JSON object
CallRules = Callable[[str, Tool], tuple[str, str]]


def tool_name(tool: Tool) -> str:
    return str((tool.get("function") or {}).get("name"))


def calls_grammar(
    tools: Sequence[Tool],
    choice: ToolChoice,
    parallel: bool,
    call_body: CallRule | None = None,
    separator: str = "tc-ws",
    prefix: str = "",
    suffix: str = "",
    call_rules: CallRules | None = None,
) -> str:
    """`root ::= prefix call (separator call)* suffix`, one call alternative per chosen tool.

    Each call is `call_body(name, rule of the arguments object)`, or what `call_rules` builds.
    """
    alternatives: list[str] = []
    rules: list[str] = []
    for n, tool in enumerate(chosen(tools, choice)):
        name = tool_name(tool)
        pre = f"t{n}-{rule_name(name)}-"
        if call_rules is not None:
            body, text = call_rules(pre, tool)
        else:
            assert call_body is not None
            root, text = schema_rules(function_parameters(tool), pre)
            body = call_body(name, root)
        rules.append(text)
        rules.append(f"t{n}-call ::= {body}\n")
        alternatives.append(f"t{n}-call")
    call = "tc-call"
    more = f" ({separator} {call})*" if parallel else ""
    head = f"{prefix} " if prefix else ""
    tail = f" {suffix}" if suffix else ""
    root = f"root ::= {head}{call}{more}{tail}\n{call} ::= {' | '.join(alternatives)}\n"
    # whitespace between calls, bounded so a model cannot loop on it
    return root + "".join(rules) + "tc-ws ::= [ \\t\\n]{0,4}\n"


def json_name(name: str) -> str:
    """The JSON text of a function name, as a GBNF literal."""
    return literal(json.dumps(name))
